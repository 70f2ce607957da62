"""What a fine-tuning run writes: fit's run directory (so compare --run reads it) plus encoder.ckpt in the
original layout (which `featcache extract --ckpt` loads), mask.npy, and the finetune facts on top of
metrics.json."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.fingerprint import feature_parts, provenance
from ..heads.fit import FitResult, FitSpec
from ..heads.metrics import split_metrics
from ..heads.runs import save_run
from ..heads.training import TrainResult
from ..model.checkpoint import save_checkpoint, state_dict_digest
from ..model.encoder import CODE_VERSION
from ..model.taps import tap_shape
from ..spectra.mask import parse_mask_spec
from .data import SplitData
from .distributed import Dist
from .loop import TrainOutcome
from .model import FinetuneModel
from .options import FinetuneOptions, describe_unfreeze


def _facts(opts: FinetuneOptions, model: FinetuneModel, source_sha: str, outcome: TrainOutcome, mask: np.ndarray,
           dist: Dist) -> dict[str, Any]:
    """The finetune facts on top of fit's metrics.json (same structure, plus kind and the encoder's part)."""
    return {"kind": "finetune", "cache": None, "cache_fingerprint": None, "stopped": outcome.stopped,
            "encoder_ckpt": str(opts.out / "encoder.ckpt"), "source_ckpt": str(opts.ckpt),
            "source_sha256": source_sha, "unfreeze": opts.unfreeze,
            "random_init_seed": opts.init_seed if opts.random_init else None,  # source_ckpt gave the shape only
            "train_subset": ({"train_size": opts.train_size, "subset_seed": opts.subset_seed,
                              "rule": "common.subsets.nested_subset"} if opts.train_size else None),
            "unfrozen_blocks": [f"encoders.{i}" for i in model.unfrozen], "encoder_lr": opts.encoder_lr,
            "batchnorm": opts.batchnorm if model.unfrozen else "eval",
            "scale_floor": opts.scale_floor if model.unfrozen else 0.0,
            "epochs_run": len(outcome.history),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "noise": {"mode": opts.train_noise, "source": opts.noise, "seed": opts.noise_seed,
                      "level": opts.noise_level, "eval": "draw 0 (the extract noise)"},
            "mask": {"spec": opts.mask, "n_pixels": int(mask.size), "n_kept": int(mask.sum()), "file": "mask.npy"},
            "direction": opts.direction, "init_head": str(opts.init_head) if opts.init_head else None,
            "world_size": dist.world, "written_by_rank": dist.rank,
            "data": list(opts.data), "steps": outcome.steps}


def _save_encoder(opts: FinetuneOptions, model: FinetuneModel, source_sha: str, outcome: TrainOutcome,
                  mask: np.ndarray) -> str:
    spec_mask = parse_mask_spec(opts.mask)
    config_extra = {
        "mask": {"mask_ratio": spec_mask.ratio} if spec_mask.kind == "quantile" else {},
        "noise": {"noise_level": opts.noise_level},
        "featcache": {"kind": "finetune", "source_ckpt": str(opts.ckpt), "source_sha256": source_sha,
                      "layer": opts.layer, "unfreeze": describe_unfreeze(model.unfrozen),
                      "best_epoch": outcome.best_epoch, "mask_file": "mask.npy", "mask": opts.mask,
                      "n_kept": int(mask.sum())}}
    save_checkpoint(model.encoder, opts.out / "encoder.ckpt", epoch=outcome.best_epoch, global_step=outcome.steps,
                    config_extra=config_extra)
    return state_dict_digest(model.encoder.state_dict())


def _labels(split: SplitData, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every numeric label of the predicted rows (binned.csv bins the residuals by them)."""
    from ..spectra.pfsspec import PfsDataset

    with PfsDataset(split.path) as ds:
        if not ds.params_key:
            return {}
        values = ds.labels(None, split.start, split.stop)
    return {name: np.asarray(column)[rows - split.start] for name, column in values.items()}


def _provenance(opts: FinetuneOptions, model: FinetuneModel, encoder_sha: str, mask: np.ndarray, in_dim: int
                ) -> dict[str, Any]:
    """The head's provenance as a cache of the fine-tuned encoder.ckpt would record it (extract with this
    run's encoder.ckpt, mask.npy and noise settings, and predict accepts the head)."""
    config = model.encoder.config
    parts = feature_parts(weights_sha256=encoder_sha, config=config.as_dict(), code_version=CODE_VERSION,
                          random_init_seed=None, mask=mask, noise_mode=opts.noise, noise_seed=opts.noise_seed,
                          noise_level=opts.noise_level, direction=opts.direction, compute_dtype="float32",
                          store_dtype="float32")
    channels, length = tap_shape(model.encoder, opts.layer, int(mask.sum()), opts.direction)
    attrs = {"D": in_dim, "C": channels, "L": length,
             "pooling": opts.pool, "definition": model.pooling.definition, "direction": opts.direction}
    return provenance(parts, {f"{opts.layer}/{opts.pool}": attrs})


def write_outputs(opts: FinetuneOptions, model: FinetuneModel, source_sha: str,
                  outputs: dict[str, tuple[str, np.ndarray, np.ndarray]], splits: dict[str, SplitData],
                  outcome: TrainOutcome, seconds: float, in_dim: int, head: tuple[str, int, float],
                  y_mean: np.ndarray, y_scale: np.ndarray, mask: np.ndarray, dist: Dist) -> FitResult:
    """fit's run directory (via heads.runs.save_run) plus encoder.ckpt, mask.npy and the finetune facts."""
    head_name, hidden, dropout = head
    metrics: dict[str, Any] = {"splits": {}}
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for role, (name, rows, pred) in outputs.items():
        split = splits[name]
        y = split.y[split.index(rows)]
        metrics["splits"][name] = split_metrics(name, role, y, pred, list(opts.targets), n_spectra=split.n,
                                                n_boot=opts.n_boot)
        if role != "train":
            predictions[role] = {"split": np.array(name), "index": rows, "true": y, "pred": pred,
                                 **{f"label_{k}": v for k, v in _labels(split, rows).items()}}
    encoder_sha = _save_encoder(opts, model, source_sha, outcome, mask)
    predictor = TrainResult(model=model.head, best_epoch=outcome.best_epoch, best_val_r2=outcome.best_val_r2,
                            history=outcome.history, x_mean=model.x_mean.double().cpu().numpy(),
                            x_scale=model.x_scale.double().cpu().numpy(), y_mean=y_mean, y_scale=y_scale,
                            y_1d=False, seconds=seconds, recipe=opts.recipe.to_dict())
    spec = FitSpec(features=[(opts.layer, opts.pool)], targets=list(opts.targets), head=head_name, hidden=hidden,
                   dropout=dropout, recipe=opts.recipe, train_split=opts.train_split, val_split=opts.val_split,
                   test_split=opts.test_split, device=opts.device, n_boot=opts.n_boot)
    result = FitResult(spec, predictor, in_dim, metrics, predictions, [dict(h) for h in outcome.history], seconds,
                       "", "", encoder_sha, _provenance(opts, model, encoder_sha, mask, in_dim))
    config = opts.config if opts.config is not None else opts.as_dict()
    save_run(result, opts.out, config=config, command=opts.command,
             extra=_facts(opts, model, source_sha, outcome, mask, dist), binning=opts.binning)
    return result
