"""`featcache finetune`: train the encoder and a head together, end to end from the HDF5 files.

The cache assumes a frozen encoder and fixed noise; this mode drops both assumptions. The model is
encoder (BlindspotModel1D.encode up to the tap) -> pooling -> feature standardisation -> head (model.py),
and the choices that make `--freeze-encoder --train-noise fixed` compute what `extract` + `fit` compute
are spelled out where they are made: the standardisation (model.py), the shuffle and the noise (data.py),
the loop (loop.py).

Unfreezing: "last K encoder blocks" counts back from the deepest block the tap uses (enc_pre_latent with
num_layers 5 uses encoders.0..4, so last:2 is encoders.3 and .4). Frozen blocks have requires_grad False and
stay in eval mode; blocks deeper than the tap and the decoders never run and are never changed, so no
parameter that requires grad goes unused and DDP needs no find_unused_parameters.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..cache.fingerprint import describe_changes
from ..common.device import configure_threads
from ..common.errors import FeatcacheError
from ..common.overlap import SplitRows, check_disjoint, check_rows_disjoint
from ..common.progress import status
from ..common.resume import load_resume_checkpoint
from ..common.serialise import plain
from ..common.settings import changes
from ..heads.fit import FitResult
from ..heads.registry import create_head, head_info, list_heads
from ..heads.runs import LoadedHead, check_run_dir, clear_run_dir, load_head
from ..heads.training import TrainResult
from ..model.checkpoint import load_encoder, random_encoder, state_dict_digest
from ..model.pooling import get_pooling, pooled_width
from ..model.taps import tap_shape
from ..spectra.mask import make_mask
from ..spectra.pfsspec import PfsDataset, scan_file
from .data import RunContext, SplitData, load_splits
from .distributed import Dist, init_distributed
from .loop import CHECKPOINT_FORMAT, debug_line, train
from .model import FinetuneModel, floored_scale, head_shape, rescale_first_layer
from .options import (
    FinetuneOptions,
    describe_unfreeze,
    parse_unfreeze,
    resume_settings,
    resumed_options,
    upgrade_settings,
    validate_options,
)
from .outputs import write_outputs
from .passes import calibrate_batchnorm, feature_moments, predict_rows


@dataclass
class FinetuneResult:
    """What a run did; `fit` (the fit-shaped result written to OUT) is on rank 0 only."""

    out: Path
    fit: FitResult | None
    history: list[dict[str, float]]
    best_epoch: int
    stopped: str  # 'max-epochs' | 'early-stop' | 'already-done'
    seconds: float
    unfreeze: list[int]
    world_size: int
    rank: int
    weights_sha256: str

    @property
    def metrics(self) -> dict[str, Any]:
        return self.fit.metrics if self.fit is not None else {}

    def summary(self) -> str:
        """The one-line summary `featcache finetune` prints (fit's, with the encoder's part first)."""
        what = describe_unfreeze(self.unfreeze)
        text = self.fit.summary() if self.fit is not None else f"rank {self.rank}"
        ranks = f", {self.world_size} processes" if self.world_size > 1 else ""
        return f"finetune ({what}{ranks}) {text}; stopped: {self.stopped}"


def finetune(opts: FinetuneOptions) -> FinetuneResult:
    """Train encoder and head end to end on one process or many (torchrun / srun); rank 0 writes OUT. On
    --resume the options not given (FinetuneOptions.given) are those last.pt recorded (common.resume)."""
    if opts.resume and opts.given is not None:
        state = load_resume_checkpoint(opts.out / "last.pt", "finetune", _is_finetune_checkpoint)
        opts = resumed_options(opts, state.get("options"))
    validate_options(opts)
    dist = init_distributed(opts.device)
    configure_threads(dist.device, opts.threads, "encoder")
    try:
        result = _finetune(opts, dist)
        dist.barrier()  # rank 0 has written OUT before anyone reports success
        return result
    finally:
        dist.close()


def _prepare_out(opts: FinetuneOptions) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None; refuses to train over an earlier run without a flag."""
    last = opts.out / "last.pt"
    if opts.out.exists() and not opts.out.is_dir():
        raise FeatcacheError(f"--out {opts.out}: is a file, expected a run directory")
    if opts.resume:
        return load_resume_checkpoint(last, "finetune", _is_finetune_checkpoint)
    check_run_dir(opts.out, overwrite=opts.overwrite)
    return None


def _is_finetune_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and state.get("kind") == "finetune" and state.get("format") == CHECKPOINT_FORMAT


def _initial_head(opts: FinetuneOptions, source_sha: str, dist: Dist) -> tuple[LoadedHead | None, str]:
    """The --init-head run (checked against the request) and the head's name."""
    init = load_head(opts.init_head) if opts.init_head is not None else None
    head_name = opts.head or (init.head if init is not None else "mlp_1")
    if init is None:
        return None, head_name
    where = f"--init-head {opts.init_head}"
    if not isinstance(init.predictor, TrainResult):
        raise FeatcacheError(f"{where}: a {init.head} head is closed-form; fine-tuning starts from a torch head "
                             "(linear, mlp_1, mlp_2)")
    if init.head != head_name:
        raise FeatcacheError(f"{where}: the run's head is {init.head}, --head asks for {head_name}")
    if not head_info(head_name).finetune:
        raise FeatcacheError(f"{where}: a {head_name} head cannot be fine-tuned end to end; finetune trains "
                             + ", ".join(h for h in list_heads() if head_info(h).finetune))
    if init.features != [(opts.layer, opts.pool)]:
        raise FeatcacheError(f"{where}: the head was fitted on {'+'.join(f'{a}/{b}' for a, b in init.features)}, "
                             f"not {opts.layer}/{opts.pool}")
    if init.targets != list(opts.targets):
        raise FeatcacheError(f"{where}: the head predicts {', '.join(init.targets)}, --target asks for "
                             f"{', '.join(opts.targets)}")
    if init.encoder_sha256 != source_sha and dist.main:
        status(f"note: {where} was fitted on features of another encoder ({init.encoder_sha256[:12]}, this one "
               f"{source_sha[:12]})")
    return init, head_name


def _mask(opts: FinetuneOptions, state: dict[str, Any] | None, first: tuple[Path, int, int], dist: Dist
          ) -> np.ndarray:
    """The checkpoint's mask on --resume; else extract's rule on the first split (rank 0 computes it)."""
    path, start, stop = first
    with PfsDataset(path) as ds:
        n_pixels = ds.n_pixels
        if state is not None:
            mask = state["mask"].numpy().astype(bool)
        else:
            mask = dist.from_main(lambda: make_mask(opts.mask, ds, start, stop))
    if mask.shape != (n_pixels,):
        raise FeatcacheError(f"--resume: the checkpoint's mask has {mask.shape[0]} pixels, the data {n_pixels}")
    return mask


def _map_options(opts: FinetuneOptions, encoder: Any, mask: np.ndarray, head_name: str) -> dict[str, Any]:
    """A head that pools the live map (attn) gets the tap's shape (C, L') at this mask; others nothing."""
    if not head_info(head_name).needs_map:
        return {}
    if opts.pool != "none":
        raise FeatcacheError(f"--head {head_name} pools the live map over its positions: give --pool none")
    channels, length = tap_shape(encoder, opts.layer, int(mask.sum()), opts.direction)
    return {"channels": channels, "length": length}


def _feature_width(opts: FinetuneOptions, encoder: Any, mask: np.ndarray, init: LoadedHead | None) -> int:
    channels, length = tap_shape(encoder, opts.layer, int(mask.sum()), opts.direction)
    in_dim = pooled_width(opts.pool, channels, length, opts.layer)
    if init is not None and init.in_dim != in_dim:
        raise FeatcacheError(f"--init-head {opts.init_head}: the head takes {init.in_dim} features, "
                             f"{opts.layer}/{opts.pool} gives {in_dim} here (another mask or direction?)")
    return in_dim


def _data_identity(opts: FinetuneOptions, splits: dict[str, SplitData], dist: Dist) -> dict[str, Any]:
    """Each split's file content identity and rows (rank 0 reads, every rank gets it); shared rows between
    the roles are refused, copies of one file included."""
    def identities() -> dict[str, Any]:
        by_file: dict[str, list[SplitData]] = {}
        for split in splits.values():
            by_file.setdefault(os.path.realpath(split.path), []).append(split)
        scans = {key: scan_file(group[0].path, mode=opts.hash, ranges=[(s.start, s.stop) for s in group])
                 for key, group in by_file.items()}
        found = {name: {"identity": scans[os.path.realpath(split.path)].identity, "start": split.start,
                        "stop": split.stop} for name, split in splits.items()}
        check_disjoint([(name, entry["identity"]["hash"], entry["start"], entry["stop"])
                        for name, entry in found.items()])
        check_rows_disjoint([SplitRows(name, str(split.path), split.start,
                                       scans[os.path.realpath(split.path)].rows(split.start, split.stop).hashes)
                             for name, split in splits.items()])  # copied spectra, wherever they sit
        return found

    return dist.from_main(identities)


def _check_resume(opts: FinetuneOptions, state: dict[str, Any] | None, settings: dict[str, Any]) -> None:
    if state is None:
        return
    saved = upgrade_settings(state["settings"])
    found = changes(saved, settings)
    if not found:
        return
    words = [c.path for c in found if c.key != "data"]
    if any(c.key == "data" for c in found):
        old = saved.get("data")
        words += (describe_changes({"data": old}, {"data": settings["data"]}) if isinstance(old, dict)
                  else ["data (the checkpoint predates content identities; --overwrite to start again)"])
    raise FeatcacheError(f"--resume: the options differ from {opts.out / 'last.pt'}'s: "
                         + ", ".join(dict.fromkeys(words)))


def _standardise(model: FinetuneModel, ctx: RunContext, train_split: SplitData, init: LoadedHead | None,
                 state: dict[str, Any] | None) -> None:
    """A new run's feature standardisation: the initial encoder's train moments (floored while the encoder
    trains), or the --init-head's own with its first layer rescaled to any floor; a resumed run's comes
    from the checkpoint's model state."""
    opts, dist = ctx.opts, ctx.dist
    if state is not None:
        return
    if init is None:
        calibrated = calibrate_batchnorm(model, train_split, ctx)  # none with --batchnorm eval
        if dist.main:
            status(f"standardisation: pooled {opts.layer}/{opts.pool} of the initial encoder over "
                   f"{train_split.n} train spectra" + (f" (the running statistics of {calibrated} BatchNorm layers "
                                                       "that were never trained first set from them)"
                                                       if calibrated else ""))
        mean, std = feature_moments(model, train_split, ctx)
        scale = _floor_scale(std, mean, opts, dist) if model.unfrozen else std
        model.x_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        model.x_scale.copy_(torch.from_numpy(np.where(scale > 0, scale, 1.0).astype(np.float32)))
    elif model.unfrozen:
        old = model.x_scale.double().cpu().numpy()
        new = _floor_scale(old, model.x_mean.double().cpu().numpy(), opts, dist)
        rescale_first_layer(model.head, old, new)
        model.x_scale.copy_(torch.from_numpy(new.astype(np.float32)))


def _floor_scale(scale: np.ndarray, mean: np.ndarray, opts: FinetuneOptions, dist: Dist) -> np.ndarray:
    floored = floored_scale(scale, opts.scale_floor, mean)
    raised = int(np.count_nonzero(floored > scale))
    if raised and dist.main:
        status(f"standardisation: {raised} of {scale.size} near-constant feature columns get the scale floor "
               f"(--scale-floor {opts.scale_floor:g}) while the encoder trains")
    return floored


def _note_untrained_batchnorm(encoder: nn.Module, unfrozen: list[int], opts: FinetuneOptions, dist: Dist) -> None:
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if unfrozen and opts.batchnorm == "eval" and norms and dist.main and all(
            m.num_batches_tracked is not None and int(m.num_batches_tracked) == 0 for m in norms):
        status("note: this encoder's BatchNorm running statistics were never trained (a random init?); "
               "--batchnorm eval keeps them as they are, --batchnorm train would normalise with batch statistics")


def _build_model(opts: FinetuneOptions, encoder: Any, unfrozen: list[int], init: LoadedHead | None,
                 head_name: str, in_dim: int, train_split: SplitData, device: torch.device,
                 head_kwargs: dict[str, Any] | None = None
                 ) -> tuple[FinetuneModel, tuple[str, int, float], np.ndarray, np.ndarray]:
    """The model around a fresh head or the --init-head's; (model, head shape, y_mean, y_scale)."""
    if init is not None:
        assert isinstance(init.predictor, TrainResult)
        head = init.predictor.model
        x_mean, x_scale = init.predictor.x_mean, init.predictor.x_scale
        y_mean, y_scale = init.predictor.y_mean, init.predictor.y_scale
        hidden, dropout = head_shape(head, opts.hidden, opts.dropout)
    else:
        head = create_head(head_name, in_dim, len(opts.targets), hidden=opts.hidden, dropout=opts.dropout,
                           seed=opts.recipe.seed, **(head_kwargs or {}))
        hidden, dropout = opts.hidden, opts.dropout
        x_mean, x_scale = np.zeros(in_dim), np.ones(in_dim)
        y_mean, y_scale = train_split.y.mean(axis=0), train_split.y.std(axis=0)
    model = FinetuneModel(encoder, opts.layer, get_pooling(opts.pool), opts.direction, head.to(device), x_mean,
                          x_scale, unfrozen, opts.batchnorm).to(device)
    return model, (head_name, hidden, dropout), np.asarray(y_mean), np.asarray(y_scale)


def _finetune(opts: FinetuneOptions, dist: Dist) -> FinetuneResult:
    started = time.perf_counter()
    # the encoder, which blocks train, the splits and the head to start from
    loaded = load_encoder(opts.ckpt, dilation=opts.dilation, device=dist.device)
    if opts.random_init:  # the supervised baseline: --ckpt gives the architecture only
        loaded = random_encoder(loaded.config, seed=opts.init_seed, device=dist.device)
        if dist.main:
            status(f"--random-init: a {loaded.config.tag} encoder freshly initialised (seed {opts.init_seed}); "
                   f"{opts.ckpt.name} gives its architecture only")
    encoder, source_sha = loaded.model, loaded.weights_digest()  # the digest before training changes the model
    try:
        depth = encoder.tap_index(opts.layer)
    except FeatcacheError as exc:
        raise FeatcacheError(f"--layer: {exc}") from None
    unfrozen = parse_unfreeze(opts.unfreeze, depth, opts.layer)
    splits, first = load_splits(opts)
    if opts.test_split:
        opts.binning.check_axes([*_label_names(splits[opts.test_split].path), *opts.targets])
    train_split = splits[opts.train_split]
    if train_split.n // dist.world < 1:
        raise FeatcacheError(f"the train split has {train_split.n} rows, fewer than the {dist.world} processes")
    init, head_name = _initial_head(opts, source_sha, dist)
    # the run directory (or the checkpoint to resume), the mask and the feature width
    state = _prepare_out(opts)
    mask = _mask(opts, state, first, dist)
    in_dim = _feature_width(opts, encoder, mask, init)
    settings = resume_settings(opts, source_sha, unfrozen, head_name, _data_identity(opts, splits, dist))
    _check_resume(opts, state, settings)
    # the model and its standardisation
    ctx = RunContext(opts, mask, dist, encoder.config.input_sigma)
    model, head, y_mean, y_scale = _build_model(opts, encoder, unfrozen, init, head_name, in_dim, train_split,
                                                dist.device, _map_options(opts, encoder, mask, head_name))
    _note_untrained_batchnorm(encoder, unfrozen, opts, dist)
    _standardise(model, ctx, train_split, init, state)
    if state is not None:
        y_mean, y_scale = state["y_mean"].numpy(), state["y_scale"].numpy()
    y_mean, y_scale = np.asarray(y_mean, dtype=np.float64), np.asarray(y_scale, dtype=np.float64)
    if dist.main:
        opts.out.mkdir(parents=True, exist_ok=True)
        if state is None:
            clear_run_dir(opts.out)  # --overwrite: no file of the earlier run survives (nor resumes)
        np.save(opts.out / "mask.npy", mask)
    # train, then score every role's split with the best weights
    extra = {"mask": torch.from_numpy(mask.copy()), "y_mean": torch.from_numpy(y_mean.copy()),
             "y_scale": torch.from_numpy(y_scale.copy()), "settings": settings, "options": plain(opts.as_dict())}
    outcome = train(model, ctx, train_split, splits.get(opts.val_split or ""), y_mean, y_scale, state, extra)
    roles = [("train", opts.train_split), ("val", opts.val_split), ("test", opts.test_split)]
    outputs = {role: (name, *predict_rows(model, splits[name], ctx, y_mean, y_scale))
               for role, name in roles if name is not None}
    weights = state_dict_digest(model.state_dict())
    if opts.check_sync:
        debug_line(f"featcache finetune: rank {dist.rank}/{dist.world} final weights sha256 {weights}")
    seconds = time.perf_counter() - started
    fit_result = write_outputs(opts, model, source_sha, outputs, splits, outcome, seconds, in_dim, head, y_mean,
                               y_scale, mask, dist) if dist.main else None
    return FinetuneResult(opts.out, fit_result, outcome.history, outcome.best_epoch, outcome.stopped, seconds,
                          unfrozen, dist.world, dist.rank, weights)


def _label_names(path: Path) -> list[str]:
    from ..spectra.pfsspec import PfsDataset

    with PfsDataset(path) as ds:
        return ds.label_names() if ds.params_key else []
