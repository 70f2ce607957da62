"""Pretrain the full BlindspotModel1D with the original losses, so users can make their own encoders.

The data are streamed from HDF5 in row blocks (shuffled at block level, then within each block,
deterministically from the seed and the epoch), each epoch gets fresh noise keyed by (noise seed, epoch,
row), and every epoch ends with a checkpoint in the original Lightning layout (weights under `model.`) plus
the optimizer, scheduler and featcache metadata needed to resume to the same result.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..common.device import resolve_device, to_cpu
from ..common.errors import FeatcacheError
from ..common.progress import progress, status
from ..common.serialise import plain
from ..model.checkpoint import save_checkpoint
from ..model.encoder import BlindspotModel1D, EncoderConfig
from ..spectra.mask import make_mask, parse_mask_spec
from ..spectra.noise import fresh_stream
from ..spectra.pfsspec import PfsDataset, file_identity
from .auxiliary import AuxObjective, aux_path_for, labelled_rows, read_labels, saved_standardisation
from .data import flux_problem, noise_spec, read_block, training_batches
from .files import epoch_path_for, load_resume_state, log_path_for, mask_path_for, saved_settings, write_log
from .head_init import data_levels, head_parameter_groups, init_head
from .losses import training_step
from .options import SPLITS, PretrainOptions
from .recipe import PretrainRecipe, recipe_differences, validate_recipe
from .snr import evaluate


@dataclass
class PretrainResult:
    """What a pretraining run produced (the files) and how it went (per-epoch history)."""

    path: Path
    config: EncoderConfig
    recipe: PretrainRecipe
    epochs_done: int
    global_step: int
    history: list[dict[str, float]]
    stopped: str  # 'epochs' | 'time-limit' | 'already-done'
    seconds: float
    mask_path: Path
    log_path: Path
    yaml_path: Path
    n_kept: int
    aux_path: Path | None = None  # <stem>.aux.pt: the auxiliary head and its labelled rows (--aux-target)

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def new_model(config: EncoderConfig, seed: int) -> BlindspotModel1D:
    """PyTorch's default initialisation under the seed, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BlindspotModel1D(config)


def resolve_recipe(recipe: PretrainRecipe, train: PfsDataset) -> PretrainRecipe:
    """Replace 'auto' loss and noise (and an unset noise seed) by what the train file supports, and refuse
    what it cannot do."""
    n = min(recipe.max_train or train.n_rows, train.n_rows)
    problem = flux_problem(train, n)
    loss, noise = recipe.loss, recipe.noise
    if loss == "auto":
        loss = "T1" if problem is None else "E2"
    if noise == "auto":
        noise = "generated" if problem is None else "stored"
    if problem is not None and (loss == "T1" or noise == "generated"):
        what = "--loss T1 (against clean flux)" if loss == "T1" else "generated noise (flux + noise)"
        raise FeatcacheError(f"{train.path}: {what} needs clean flux, but {problem}; use --loss E1 or E2 "
                             "with --noise stored on a file with a noisy array")
    if noise == "stored":
        if not train.has_noisy:
            raise FeatcacheError(f"{train.path}: --noise stored needs a 'noisy' array, the file has "
                                 f"{', '.join(train.arrays)}" + (f" ({problem})" if problem else ""))
        if recipe.noise_level != 1.0:
            raise FeatcacheError(f"--noise-level {recipe.noise_level:g} applies to generated noise only; a stored "
                                 "noisy array comes with its error as sigma (noise level 1)")
    return replace(recipe, loss=loss, noise=noise, noise_seed=recipe.effective_noise_seed)


def _check_data(train: PfsDataset, val: PfsDataset | None, recipe: PretrainRecipe) -> None:
    if train.n_rows == 0:
        raise FeatcacheError(f"{train.path}: no spectra to train on")
    if val is None:
        return
    if val.n_pixels != train.n_pixels:
        raise FeatcacheError(f"shape mismatch: train {train.path} has {train.n_pixels} pixels per spectrum, "
                             f"val {val.path} has {val.n_pixels}")
    if not np.allclose(val.wave, train.wave, rtol=1e-6, atol=1e-6):
        raise FeatcacheError(f"{val.path}: its wavelength grid differs from the train file's")
    if val.n_rows == 0:
        raise FeatcacheError(f"{val.path}: no validation spectra")
    problem = flux_problem(val, recipe.max_val)
    if problem is not None:
        raise FeatcacheError(f"{val.path}: validation S/N needs clean flux, but {problem}")
    if recipe.noise == "stored" and not val.has_noisy:
        raise FeatcacheError(f"{val.path}: --noise stored needs a 'noisy' array in the val file too")


def _check_mask(mask: np.ndarray, train: PfsDataset, config: EncoderConfig) -> None:
    if mask.shape != (train.n_pixels,):
        raise FeatcacheError(f"mask has shape {mask.shape}, the data have {train.n_pixels} pixels")
    kept = int(mask.sum())
    need = 2 ** (config.num_layers - 1)
    if kept < need:
        raise FeatcacheError(f"the mask keeps {kept} pixels, too few for num_layers {config.num_layers} "
                             f"(each of its {config.num_layers - 1} poolings halves the length: needs >= {need})")


@dataclass
class Run:
    """One pretraining run: its data, model, optimizer and schedule, and where it stands (what `out` saves)."""

    out: Path
    train_path: str
    val_path: str | None
    config: EncoderConfig
    recipe: PretrainRecipe
    mask: np.ndarray
    n_train: int
    n_val: int
    n_pixels: int
    model: BlindspotModel1D
    optimizer: Any
    scheduler: Any
    started: float
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_done: int = 0
    global_step: int = 0
    seconds_before: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)  # the data's content identity (data_identity)
    aux: AuxObjective | None = None  # the auxiliary label loss (--aux-target)

    @property
    def log_path(self) -> Path:
        return log_path_for(self.out)

    def save(self) -> None:
        """The checkpoint (original layout + resume state), its YAML and the log: every epoch; and with
        --save-every, a copy of this epoch's encoder (original layout, no optimizer state) beside it."""
        recipe, kept = self.recipe, int(self.mask.sum())
        meta = {"kind": "pretrain", "featcache_version": __version__, "torch_version": str(torch.__version__),
                "config": self.config.as_dict(), "recipe": plain(recipe.as_dict()),
                "epochs_done": self.epochs_done, "mask": torch.from_numpy(self.mask.copy()),
                "mask_spec": recipe.mask, "n_kept": kept, "n_pixels": self.n_pixels,
                "train": self.train_path, "val": self.val_path, "n_train": self.n_train, "n_val": self.n_val,
                "data": self.data,
                "history": self.history, "seconds": self.seconds_before + (time.monotonic() - self.started)}
        extra = {"optimizer_states": [to_cpu(self.optimizer.state_dict())],
                 "lr_schedulers": [self.scheduler.state_dict()], "featcache": meta}
        spec = parse_mask_spec(recipe.mask)
        config_extra = {"mask": {"mask_ratio": spec.ratio} if spec.kind == "quantile" else {},
                        "noise": {"noise_level": recipe.noise_level},
                        "featcache": {"mask_file": mask_path_for(self.out).name, "mask": recipe.mask,
                                      "n_kept": kept, "loss": recipe.loss, "noise": recipe.noise,
                                      "seed": recipe.seed, "epochs_done": self.epochs_done,
                                      "train": self.train_path, "val": self.val_path}}
        keep_epoch = bool(recipe.save_every and self.epochs_done and self.epochs_done % recipe.save_every == 0)
        if self.aux is not None:  # beside the checkpoint, written first (a resume checks the two agree)
            meta["aux"] = aux_summary(self.aux, aux_path_for(self.out).name)
            config_extra["featcache"]["aux"] = {k: v for k, v in meta["aux"].items() if k != "rows"}
            self.aux.save(aux_path_for(self.out), self.epochs_done)
            if keep_epoch:
                self.aux.save(aux_path_for(epoch_path_for(self.out, self.epochs_done)), self.epochs_done,
                              with_optimizer=False)
        save_checkpoint(self.model, self.out, epoch=self.epochs_done, global_step=self.global_step, extra=extra,
                        config_extra=config_extra)
        write_log(self.log_path, self.history)
        if keep_epoch:
            save_checkpoint(self.model, epoch_path_for(self.out, self.epochs_done), epoch=self.epochs_done,
                            global_step=self.global_step, extra={"featcache": meta}, config_extra=config_extra)

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict({k[len("model."):]: v for k, v in state["state_dict"].items()
                                    if k.startswith("model.")}, strict=True)
        self.optimizer.load_state_dict(state["optimizer_states"][0])
        self.scheduler.load_state_dict(state["lr_schedulers"][0])
        meta = state["featcache"]
        self.epochs_done, self.global_step = int(meta["epochs_done"]), int(state.get("global_step", 0))
        self.history = [dict(row) for row in meta.get("history", [])]
        self.seconds_before = float(meta.get("seconds", 0.0))
        if self.aux is not None:
            self.aux.restore(aux_path_for(self.out), self.epochs_done)
        status(f"resuming {self.out} after epoch {self.epochs_done} (step {self.global_step})")


def _settings(state: dict[str, Any] | None, config: EncoderConfig | None, recipe: PretrainRecipe, out: Path,
              train: PfsDataset, train_path: str, n_train: int) -> tuple[EncoderConfig, np.ndarray]:
    """The architecture and mask: a resumed run's (which the options must match), else the options'."""
    if state is None:
        return config or EncoderConfig(), make_mask(recipe.mask, train, 0, n_train, source="the train file")
    saved_config, saved_recipe = saved_settings(state)
    if config is not None and config != saved_config:
        raise FeatcacheError(f"--resume: {out} is a {saved_config.tag} model, the options ask for {config.tag}")
    diffs = recipe_differences(saved_recipe, recipe)
    if diffs:
        raise FeatcacheError(f"--resume: the recipe differs from {out.name}'s: {diffs}")
    return saved_config, state["featcache"]["mask"].numpy().astype(bool)


def _auxiliary(out: Path, train: PfsDataset, recipe: PretrainRecipe, model: BlindspotModel1D, n_kept: int,
               n_train: int, state: dict[str, Any] | None, device: torch.device) -> AuxObjective:
    """The auxiliary objective: the labelled rows' labels (standardised as the run began: a resumed run takes
    the saved mean and std), and the head on the tap."""
    rows = labelled_rows(n_train, recipe)
    standardisation = saved_standardisation(aux_path_for(out)) if state is not None else None
    table = read_labels(train, rows, recipe.aux_targets, standardisation)
    return AuxObjective(recipe, model, n_kept, table, device)


def aux_summary(aux: AuxObjective, file_name: str) -> dict[str, Any]:
    """What the checkpoint's metadata records of the auxiliary loss: the labelled rows (file rows of the train
    file), the rule that drew them, the labels' standardisation and the file the head is in."""
    recipe, table = aux.recipe, aux.table
    return {"file": file_name, "targets": list(table.targets), "weight": float(recipe.aux_weight),
            "tap": recipe.aux_tap, "pool": recipe.aux_pool, "hidden": int(recipe.aux_hidden),
            "n_labelled": len(table.rows), "labels": recipe.aux_labels, "seed": int(recipe.aux_seed),
            "rule": "every train row" if recipe.aux_labels is None else
            f"nested_subset(n_train, {recipe.aux_labels}, seed {recipe.aux_seed}): compare --train-sizes "
            f"{recipe.aux_labels} --subset-seed {recipe.aux_seed} on this train file trains on the same spectra",
            "rows": [int(r) for r in table.rows], "label_mean": plain(table.mean), "label_std": plain(table.std)}


def data_identity(train_path: str, val_path: str | None, n_train: int, n_val: int) -> dict[str, Any]:
    """What a run trains and validates on, by content (every byte of each file, as finetune's --resume checks)."""
    return {"train": file_identity(train_path)["hash"], "n_train": n_train,
            "val": file_identity(val_path)["hash"] if val_path else None, "n_val": n_val}


def check_resume_data(state: dict[str, Any], data: dict[str, Any], out: Path, train_path: str,
                      val_path: str | None) -> None:
    """A resumed run continues on the data it was trained on: another file, other content at the same path, or
    other row counts are refused (finetune's --resume refuses them the same way)."""
    before = state["featcache"]
    saved = before.get("data")
    if not isinstance(saved, dict):  # written before pretrain kept content identities: paths and counts only
        if (before.get("train"), before.get("n_train")) != (train_path, data["n_train"]) or \
                before.get("val") != val_path:
            raise FeatcacheError(f"--resume: {out} was trained on {before.get('n_train')} spectra of "
                                 f"{before.get('train')} (validation: {before.get('val')}), this run gives "
                                 f"{data['n_train']} of {train_path} (validation: {val_path}); give the same data, "
                                 "or --overwrite to start again")
        status(f"note: {out.name} predates pretrain's content identities: its data is checked by path only")
        return
    words = []
    for key, path in (("train", train_path), ("val", val_path)):
        if saved.get(key) != data[key]:
            words.append(f"{key} data ({before.get(key)} -> {path}: "
                         + ("other content" if before.get(key) == path else "another file") + ")")
    for key in ("n_train", "n_val"):
        if saved.get(key) != data[key]:
            words.append(f"{key} {saved.get(key)} -> {data[key]}")
    if words:
        raise FeatcacheError(f"--resume: the data differ from {out}'s: {', '.join(words)}; give the data it was "
                             "trained on, or --overwrite to start again")


def _new_run(out: Path, train: PfsDataset, val: PfsDataset | None, train_path: str, val_path: str | None,
             config: EncoderConfig, recipe: PretrainRecipe, mask: np.ndarray, n_train: int,
             state: dict[str, Any] | None, device: torch.device, started: float) -> Run:
    """Model, optimizer and schedule (and the auxiliary head); a new run's head starts at the data's levels, a
    resumed one continues."""
    model = new_model(config, recipe.seed).to(device)
    aux = _auxiliary(out, train, recipe, model, int(mask.sum()), n_train, state, device) if recipe.auxiliary else None
    optimizer = torch.optim.Adam(head_parameter_groups(model, recipe.lr, recipe.head_lr_mult), lr=recipe.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=recipe.plateau_factor,
                                                           patience=recipe.plateau_patience, min_lr=recipe.min_lr)
    n_val = min(recipe.max_val or val.n_rows, val.n_rows) if val is not None else 0
    run = Run(out, train_path, val_path, config, recipe, mask, n_train, n_val, int(train.n_pixels), model,
              optimizer, scheduler, started, aux=aux)
    if state is not None:
        run.restore(state)
    elif recipe.head_init:
        probe = read_block(train, 0, min(n_train, 256), mask, noise_spec(recipe), stream=fresh_stream(0),
                           need_flux=recipe.loss == "T1")
        levels = data_levels(probe)
        init_head(model, *levels)
        status("head init: mu_x ~ {:.3g} +- {:.2g}, sigma_x ~ {:.3g} +- {:.2g}".format(*levels))
    return run


def pretrain(train_path: str | os.PathLike[str], val_path: str | os.PathLike[str] | None,
             out: str | os.PathLike[str], config: EncoderConfig | None = None,
             recipe: PretrainRecipe | None = None, *, resume: bool = False,
             overwrite: bool = False) -> PretrainResult:
    """Train BlindspotModel1D on train_path (validating on val_path each epoch) and write `out`.

    Every epoch rewrites `out` (original layout + optimizer/scheduler/metadata for --resume), its YAML,
    <stem>.mask.npy and <stem>.log.csv. The plateau schedule follows the validation loss (the train loss
    without val_path). With resume=True the run continues from `out` up to recipe.max_epochs in total; the
    architecture and the recipe (bar max_epochs, time_limit, device) must match.
    """
    recipe = recipe or PretrainRecipe()
    validate_recipe(recipe)
    out = Path(out)
    if out.suffix != ".ckpt":
        raise FeatcacheError(f"--out {out}: expected a .ckpt file name")
    state = load_resume_state(out) if resume else None
    if state is None and out.exists() and not overwrite:
        raise FeatcacheError(f"--out {out} exists: pass --resume to continue it or --overwrite to start again")
    device = resolve_device(recipe.device)
    started = time.monotonic()
    with PfsDataset(train_path) as train, (PfsDataset(val_path) if val_path else nullcontext()) as val:
        recipe = resolve_recipe(recipe, train)
        _check_data(train, val, recipe)
        n_train = min(recipe.max_train or train.n_rows, train.n_rows)
        config, mask = _settings(state, config, recipe, out, train, str(train_path), n_train)
        n_val = min(recipe.max_val or val.n_rows, val.n_rows) if val is not None else 0
        data = data_identity(str(train_path), str(val_path) if val_path else None, n_train, n_val)
        if state is not None:
            check_resume_data(state, data, out, str(train_path), str(val_path) if val_path else None)
        _check_mask(mask, train, config)
        run = _new_run(out, train, val, str(train_path), str(val_path) if val_path else None, config, recipe,
                       mask, n_train, state, device, started)
        run.data = data
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(mask_path_for(out), mask)
        status(f"pretrain {config.tag} on {n_train} spectra of {train.path.name} ({int(mask.sum())} of "
               f"{train.n_pixels} pixels kept), loss {recipe.loss}, {recipe.noise} noise, device {device.type}")
        stopped = _train(run, train, val, device)
    return PretrainResult(path=out, config=config, recipe=recipe, epochs_done=run.epochs_done,
                          global_step=run.global_step, history=run.history, stopped=stopped,
                          seconds=run.seconds_before + time.monotonic() - started, mask_path=mask_path_for(out),
                          log_path=run.log_path, yaml_path=out.with_suffix(".yaml"), n_kept=int(mask.sum()),
                          aux_path=aux_path_for(out) if run.aux is not None else None)


def _train(run: Run, train: PfsDataset, val: PfsDataset | None, device: torch.device) -> str:
    """The epoch loop (one flat loop, a comment per phase); returns why it stopped."""
    recipe, model = run.recipe, run.model
    if run.epochs_done >= recipe.max_epochs:
        status(f"{run.out} already has {run.epochs_done} epochs (asked for {recipe.max_epochs}): nothing to do")
        run.save()  # refresh the side files (mask, YAML, log) from the checkpoint
        return "already-done"
    n_batches = math.ceil(run.n_train / recipe.batch_size)
    epoch_bar = progress(total=recipe.max_epochs, initial=run.epochs_done, desc="pretrain", unit="epoch")
    try:
        while run.epochs_done < recipe.max_epochs:
            epoch, t0 = run.epochs_done, time.monotonic()  # 0-based index of the epoch being trained
            lr = float(run.optimizer.param_groups[0]["lr"])
            # train: shuffled blocks of the train rows, this epoch's noise, one Adam step per batch
            model.train()
            total, count = 0.0, 0
            if run.aux is not None:
                run.aux.reset()
            with progress(total=n_batches, desc=f"epoch {epoch + 1}/{recipe.max_epochs}", unit="batch") as bar:
                for batch in training_batches(train, run.n_train, run.mask, recipe, epoch, recipe.loss == "T1"):
                    loss = training_step(model, run.optimizer, batch.to(device), recipe.loss, recipe.grad_clip,
                                         run.aux)
                    if not math.isfinite(loss):
                        raise FeatcacheError(f"the loss became {loss} at epoch {epoch + 1}, step "
                                             f"{run.global_step + 1}; lower --lr or check the data")
                    total, count, run.global_step = total + loss * len(batch), count + len(batch), run.global_step + 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{total / count:.4f}")
            row: dict[str, float] = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_loss": math.nan,
                                     "val_snr_noisy": math.nan, "val_snr_denoised": math.nan, "lr": lr}
            if run.aux is not None:  # the labelled train rows' MSE (standardised labels), before each step
                row.update(train_aux_mse=run.aux.epoch_mse, aux_rows=run.aux.n_seen)
            # validate (the same noise draw every epoch), then the plateau schedule
            if val is not None:
                ev = evaluate(model, val, run.n_val, run.mask, seed=recipe.effective_noise_seed,
                              noise_level=recipe.noise_level, noise=recipe.noise, loss=recipe.loss,
                              batch_size=max(recipe.batch_size, 64), device=device)
                row.update(val_loss=ev.loss, val_snr_noisy=ev.median_noisy, val_snr_denoised=ev.median_denoised)
            run.scheduler.step(row["val_loss"] if val is not None else row["train_loss"])
            row["seconds"] = time.monotonic() - t0
            # checkpoint every epoch; stop after the epoch that passes the time limit
            run.history.append(row)
            run.epochs_done += 1
            run.save()
            epoch_bar.update(1)
            epoch_bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_snr=f"{row['val_snr_denoised']:.1f}")
            status(_epoch_line(row, recipe.max_epochs))
            elapsed_min = (time.monotonic() - run.started) / 60
            if recipe.time_limit is not None and elapsed_min >= recipe.time_limit \
                    and run.epochs_done < recipe.max_epochs:
                status(f"time limit {recipe.time_limit:g} min passed ({elapsed_min:.1f} min): stopping after "
                       f"epoch {run.epochs_done}; continue with --resume")
                return "time-limit"
    finally:
        epoch_bar.close()
    return "epochs"


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    text = f"epoch {int(row['epoch'])}/{epochs}: train loss {row['train_loss']:.4f}"
    if math.isfinite(row["val_loss"]):
        text += (f", val loss {row['val_loss']:.4f}, val S/N {row['val_snr_noisy']:.2f} -> "
                 f"{row['val_snr_denoised']:.2f} ({row['val_snr_denoised'] / row['val_snr_noisy']:.2f}x)")
    if "train_aux_mse" in row:
        text += f", aux MSE {row['train_aux_mse']:.4f} ({int(row['aux_rows'])} labelled spectra)"
    return text + f", lr {row['lr']:.3g}, {row['seconds']:.1f} s"


def run_pretrain(opts: PretrainOptions) -> PretrainResult:
    """`featcache pretrain` in Python: the --data splits opened (spectra.splits), then `pretrain`."""
    from ..common.device import configure_threads
    from ..spectra.splits import open_splits

    opts.validate()
    configure_threads(torch.device("cpu"), opts.threads, "encoder")  # None: this process's share of the cores
    opened, _ = open_splits(opts.data, names=SPLITS, required=("train",), whole_files="pretrain")
    paths = {s.name: str(s.path) for s in opened}
    return pretrain(paths["train"], paths.get("val"), opts.out, opts.config, opts.recipe, resume=opts.resume,
                    overwrite=opts.overwrite)
