"""One trial of a search: pretrain the trial's encoder epoch by epoch (each epoch a `pretrain --resume` of the
last, so an interrupted trial continues where it stopped), probe it, and report the objective to the pruner.

Cost: the CPU time (user + system, every thread of this process: time.process_time) spent inside `pretrain`,
in minutes, summed over the trial's epochs; the probes (extraction and fits) are timed apart and not counted.
Score: the probe's validation R2, the mean over the targets. Objective 'ratio': max(score, 0) / cost, the
score per CPU-minute of pretraining (a negative R2 counts as 0: no encoder is better for being slower at
being useless); 'score': the score alone. The intermediate values the pruner sees are the same quantity after
the epochs so far.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.device import torch_threads
from ..common.errors import FeatcacheError
from ..common.files import write_json
from ..common.progress import is_quiet, set_quiet, status
from ..pretrain.files import mask_path_for, read_log
from .options import SearchOptions
from .space import suggest, trial_settings

TRIAL_FILE = "trial.json"
ENCODER = "encoder.ckpt"


def objective_value(score: float, cpu_minutes: float, objective: str) -> float:
    """The number the search maximises (see the module docstring)."""
    if objective == "score":
        return float(score)
    return max(float(score), 0.0) / max(float(cpu_minutes), 1e-9)


@contextmanager
def quietly():
    """The commands a trial runs keep their progress lines to themselves; the search prints one line a probe."""
    before = is_quiet()
    set_quiet(True)
    try:
        yield
    finally:
        set_quiet(before)


@dataclass
class PretrainData:
    """The pretraining files: train, and val (the reconstruction S/N) or None."""

    train: str
    val: str | None


def probe_encoder(ckpt: Path, opts: SearchOptions, folder: Path) -> dict[str, float]:
    """Extract the probe tap of the probe's train and val splits with the encoder's own mask, fit the probe head
    (hyper-parameters chosen on validation), and return the validation R2 per target."""
    from ..extraction.options import ExtractOptions
    from ..extraction.run import run_extract
    from ..heads.fit import FitSpec, fit_head

    cache = folder / "probe.zarr"
    run_extract(ExtractOptions(data=list(opts.probe_data), out=cache, ckpt=ckpt, layers=[opts.probe_layer],
                               pools=[opts.probe_pool], mask=str(mask_path_for(ckpt)), device="cpu",
                               overwrite=cache.exists()))
    spec = FitSpec(features=[(opts.probe_layer, opts.probe_pool)], targets=list(opts.targets), head=opts.probe_head,
                   test_split=None, device="cpu", n_boot=0)
    result = fit_head(cache, spec, progress=False)
    return {t: float(result.metrics["splits"]["val"]["targets"][t]["r2"]) for t in opts.targets}


def _load_progress(folder: Path) -> dict[str, Any]:
    import json

    path = folder / TRIAL_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def run_trial(trial: Any, opts: SearchOptions, data: PretrainData, worker: str) -> float:
    """Optuna's objective for one trial (see the module docstring); raises optuna.TrialPruned when the pruner
    stops it."""
    import optuna

    from ..pretrain.run import pretrain

    params = suggest(trial, opts.space)
    earlier = _same_settings(trial, params)
    if earlier is not None:  # pretraining is deterministic: the same settings give the same encoder
        for key in ("val_r2", "val_r2_by_target", "cpu_minutes", "probe_cpu_minutes", "epochs_done", "folder"):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        trial.set_user_attr("duplicate_of", earlier.number)
        trial.set_user_attr("worker", worker)
        status(f"trial {trial.number} ({_describe(params)}): the settings of trial {earlier.number}, its result reused")
        if earlier.state.name == "PRUNED":
            raise optuna.TrialPruned(f"the settings of pruned trial {earlier.number}")
        return float(earlier.value)
    config, recipe = trial_settings(params, opts.pretrain)
    folder = Path(trial.user_attrs.get("folder") or opts.out / "trials" / f"{trial.number:04d}")
    folder.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("folder", str(folder))
    trial.set_user_attr("worker", worker)
    ckpt = folder / ENCODER
    record = _load_progress(folder)
    cpu = float(record.get("cpu_minutes", 0.0))
    probe_cpu = float(record.get("probe_cpu_minutes", 0.0))
    probes: list[dict[str, Any]] = list(record.get("probes", []))
    done = 0
    if ckpt.exists():  # a retried trial continues its encoder
        log = read_log(ckpt.with_name(ckpt.stem + ".log.csv"))
        done = len(log)
        for row in log[int(record.get("epochs_done", 0)):]:  # epochs whose cost was never recorded
            cpu += float(row["seconds"]) / 60.0  # one thread: wall ~ CPU; marked as estimated
            record["cpu_estimated"] = True
        record.update(params=params, cpu_minutes=cpu, epochs_done=done)
    for row in probes:  # the pruner sees the probes a retried trial already made
        trial.report(objective_value(row["score"], row["cpu_minutes"], opts.objective), int(row["epoch"]))
    probed = {int(row["epoch"]) for row in probes}
    for epoch in range(1, recipe.max_epochs + 1):
        if epoch > done:
            started = time.process_time()
            with quietly(), torch_threads(opts.threads):  # (the probe's extract sets its own thread count)
                pretrain(data.train, data.val, ckpt, config, _with_epochs(recipe, epoch), resume=ckpt.exists())
            cpu += (time.process_time() - started) / 60.0
            record.update(params=params, cpu_minutes=cpu, epochs_done=epoch, probes=probes,
                          probe_cpu_minutes=probe_cpu)
            write_json(folder / TRIAL_FILE, record)
        due = epoch % opts.probe_every == 0 or epoch == recipe.max_epochs
        if not due or epoch in probed or epoch < done:  # (an earlier epoch's encoder is not kept)
            continue
        started = time.process_time()
        with quietly(), torch_threads(opts.threads):
            scores = probe_encoder(ckpt, opts, folder)
        probe_cpu += (time.process_time() - started) / 60.0
        score = sum(scores.values()) / len(scores)
        value = objective_value(score, cpu, opts.objective)
        probes.append({"epoch": epoch, "score": score, "val_r2": scores, "cpu_minutes": cpu, "value": value})
        record.update(probes=probes, probe_cpu_minutes=probe_cpu)
        write_json(folder / TRIAL_FILE, record)
        status(f"trial {trial.number} ({_describe(params)}) epoch {epoch}/{recipe.max_epochs}: val R2 "
               f"{score:.4f}, {cpu:.2f} CPU-min of pretraining, objective {value:.4g}")
        trial.report(value, epoch)
        if epoch < recipe.max_epochs and trial.should_prune():
            _finish(trial, probes, cpu, probe_cpu, epoch)
            raise optuna.TrialPruned(f"epoch {epoch}: objective {value:.4g} below the median")
    if not probes:
        raise FeatcacheError(f"trial {trial.number}: no probe was made")
    _finish(trial, probes, cpu, probe_cpu, recipe.max_epochs)
    return probes[-1]["value"]


def _same_settings(trial: Any, params: dict[str, Any]) -> Any:
    """An earlier finished trial (complete or pruned) with these parameters, or None (a retry of an interrupted
    trial is not one: it has its own folder to continue)."""
    if "retry_of" in trial.user_attrs:
        return None
    for other in trial.study.get_trials(deepcopy=False):
        if other.number != trial.number and other.params == params and other.state.name in ("COMPLETE", "PRUNED") \
                and "duplicate_of" not in other.user_attrs:
            return other
    return None


def _with_epochs(recipe: Any, epochs: int) -> Any:
    from dataclasses import replace

    return replace(recipe, max_epochs=epochs)


def _finish(trial: Any, probes: list[dict[str, Any]], cpu: float, probe_cpu: float, epochs: int) -> None:
    last = probes[-1]
    trial.set_user_attr("val_r2", last["score"])
    trial.set_user_attr("val_r2_by_target", last["val_r2"])
    trial.set_user_attr("cpu_minutes", cpu)
    trial.set_user_attr("probe_cpu_minutes", probe_cpu)
    trial.set_user_attr("epochs_done", epochs)


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items())
