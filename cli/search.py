"""`featcache search`: an Optuna study over encoder hyper-parameters, scored by a probe per CPU-minute of
pretraining; resumable, and shared by every worker given the same --storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from featcache.search.options import DEFAULT_SPACE, OBJECTIVES, PRUNERS, SAMPLERS, SPACE_PARAMETERS, SearchOptions

from .common import UserError, command, echo_result
from .options import data_option, defaults

D = defaults(SearchOptions)


def space_option(name: str) -> Any:
    default = DEFAULT_SPACE.get(name)
    text = ",".join(str(v) for v in default) if default else None
    return click.option(f"--{name.replace('_', '-')}", name, default=text, show_default=text is not None,
                        metavar="A,B,..", help=f"Choices of {name} (one value fixes it)"
                        + ("" if default else "; not searched unless given") + ".")


def parse_setting(text: str) -> tuple[str, Any]:
    """--set NAME=VALUE: a fixed pretrain setting (the value as an int, float, true/false or text)."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected NAME=VALUE, e.g. --set batch_size=16")
    name, value = (part.strip() for part in text.split("=", 1))
    name = name.replace("-", "_")
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    lowered = value.lower()
    return name, {"true": True, "false": False, "none": None}.get(lowered, value)


def space_options(func: Any) -> Any:
    """--num-layers, --embed-dim, ... : the choices of every parameter the space takes."""
    for name in reversed(list(SPACE_PARAMETERS)):
        func = space_option(name)(func)
    return func


@command("search", short_help="Search encoder settings by probe score per CPU-minute (Optuna).")
@data_option("Pretraining data: train=FILE.h5 (required), val=FILE.h5 (reconstruction S/N).")
@click.option("--probe-data", multiple=True, required=True, metavar="NAME=FILE[:START:STOP]",
              help="The probe's splits: train= and val= (the score is the validation R2; no test split is read).")
@click.option("--target", "targets", multiple=True, default=tuple(D["targets"]), show_default=True,
              help="Label(s) the probe predicts (the score is the mean validation R2).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Run folder: trials/, trials.csv, trials.md, best.json, score_vs_cost.png (and search.db).")
@space_options
@click.option("--aux-target", "aux_targets", multiple=True, metavar="LABEL",
              help="Fixed for every trial: pretrain's auxiliary loss on this label (needed to search --aux-weight).")
@click.option("--aux-labels", type=int, default=None, metavar="N", help="Fixed: pretrain --aux-labels.")
@click.option("--max-train", type=int, default=None, help="Fixed: pretrain on the first N train spectra.")
@click.option("--max-val", type=int, default=None, help="Fixed: reconstruction S/N on the first N val spectra.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="Any other fixed pretrain setting (repeatable), e.g. --set block_rows=2048.")
@click.option("--n-trials", type=int, default=D["n_trials"], show_default=True,
              help="Trials to finish (complete or pruned) in the study, over all its workers.")
@click.option("--storage", default=None, metavar="URL",
              help="Optuna RDB storage shared by the workers (default sqlite:///OUT/search.db; many nodes: "
                   "postgresql://...).")
@click.option("--study-name", default=D["study_name"], show_default=True)
@click.option("--sampler", type=click.Choice(SAMPLERS), default=D["sampler"], show_default=True,
              help="tpe (Bayesian), random, or grid (every combination once).")
@click.option("--seed", type=int, default=D["seed"], show_default=True, help="Sampler seed (plus the worker index).")
@click.option("--worker", type=int, default=None,
              help="This worker's index (default: SLURM_ARRAY_TASK_ID, else 0): its sampler seed is --seed + it.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=D["objective"], show_default=True,
              help="ratio: max(val R2, 0) / CPU-minutes of pretraining; score: val R2.")
@click.option("--pruner", type=click.Choice(PRUNERS), default=D["pruner"], show_default=True,
              help="median: stop a trial whose intermediate objective is below the median of the others' at the "
                   "same epoch.")
@click.option("--prune-after", type=int, default=D["prune_after"], show_default=True,
              help="Finished trials before the pruner judges.")
@click.option("--probe-every", type=int, default=D["probe_every"], show_default=True,
              help="Epochs between intermediate probes (the last epoch is always probed).")
@click.option("--probe-layer", default=D["probe_layer"], show_default=True)
@click.option("--probe-pool", default=D["probe_pool"], show_default=True)
@click.option("--probe-head", default=D["probe_head"], show_default=True, help="ridge | mlp_1 | ...")
@click.option("--threads", type=int, default=D["threads"], show_default=True,
              help="Torch threads of each trial (the CPU time the objective divides by is this process's).")
@click.option("--timeout", type=float, default=None, metavar="MINUTES",
              help="Start no new trial after this many minutes (this worker).")
def command(data: tuple[str, ...], probe_data: tuple[str, ...], targets: tuple[str, ...], out: Path,
            aux_targets: tuple[str, ...], aux_labels: int | None, max_train: int | None, max_val: int | None,
            settings: tuple[str, ...], n_trials: int, storage: str | None, study_name: str, sampler: str, seed: int,
            worker: int | None, objective: str, pruner: str, prune_after: int, probe_every: int, probe_layer: str,
            probe_pool: str, probe_head: str, threads: int, timeout: float | None, **space_text: str | None) -> None:
    """Search encoder hyper-parameters: each trial pretrains an encoder (one thread), a probe scores it on
    validation after each epoch, and the study keeps the one with the best score per CPU-minute.

    \b
    Example (two workers share the trials; a rerun resumes):
      featcache search --data train=pre.h5 --data val=preval.h5 \\
          --probe-data train=train.h5 --probe-data val=val.h5 --out reports/search \\
          --embed-dim 16,32 --kernel-size 9,15 --max-epochs 1,2 --n-trials 8 &
      featcache search ... (same options) --worker 1
    """
    from featcache.search.run import search
    from featcache.search.space import parse_choices

    space = {name: parse_choices(name, text) for name, text in space_text.items() if text}
    fixed: dict[str, Any] = dict(parse_setting(s) for s in settings)
    for name, value in (("aux_targets", tuple(aux_targets)), ("aux_labels", aux_labels), ("max_train", max_train),
                        ("max_val", max_val)):
        if value:
            fixed[name] = value
    result = search(SearchOptions(
        data=list(data), probe_data=list(probe_data), out=out, targets=list(targets), space=space, pretrain=fixed,
        n_trials=n_trials, storage=storage, study_name=study_name, sampler=sampler, seed=seed, worker=worker,
        objective=objective, pruner=pruner, prune_after=prune_after, probe_every=probe_every,
        probe_layer=probe_layer, probe_pool=probe_pool, probe_head=probe_head, threads=threads, timeout=timeout))
    line = f"search {result.study_name}: {result.finished} trials finished ({result.ran} by this worker) -> {out}"
    if result.best:
        best = result.best
        line += (f"; best trial {best['trial']}: val R2 {best['val_r2']:.4f} after {best['cpu_minutes']:.2f} "
                 f"CPU-min ({best['encoder']})")
    echo_result(line)
