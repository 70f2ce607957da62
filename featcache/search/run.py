"""`featcache search`: an Optuna study over encoder hyper-parameters, scored by a probe per CPU-minute of
pretraining (featcache/search/trial.py states the objective), in an RDB storage that makes it resumable and
shared: every worker (a second shell, a Slurm array task) given the same --storage and --study-name takes the
next trial until --n-trials have finished (complete or pruned), and a rerun after an interrupt repeats no
finished trial (an interrupted one is run again from its last saved epoch)."""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.errors import FeatcacheError
from ..common.progress import status
from .options import SearchOptions
from .report import write_report
from .trial import PretrainData, run_trial

HEARTBEAT_SECONDS = 60  # a worker's running trial beats this often; one silent for GRACE_SECONDS has died
GRACE_SECONDS = 300
MAX_RETRIES = 2  # an interrupted trial is run again at most this many times
STORAGE_ATTEMPTS = 6
MAX_ERRORS_IN_A_ROW = 3  # trials failing on a user error before the worker stops


def _transient(exc: Exception) -> bool:
    """A database race (two workers creating the schema, a locked SQLite file), not a wrong URL."""
    return type(exc).__name__ in ("IntegrityError", "OperationalError")


def import_optuna() -> Any:
    """Optuna, or the one-line error that names the extra that installs it."""
    try:
        import optuna
    except ImportError:
        raise FeatcacheError("featcache search needs Optuna: pip install 'featcache[search]'") from None
    return optuna


@dataclass
class SearchResult:
    """What a worker did and where the study stands."""

    out: Path
    storage: str
    study_name: str
    ran: int  # trials this worker finished (complete or pruned)
    finished: int  # in the study
    best: dict[str, Any] | None


def worker_index(opts: SearchOptions) -> int:
    if opts.worker is not None:
        return int(opts.worker)
    return int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)


def open_study(opts: SearchOptions, worker: int) -> Any:
    """The study in --storage (created by the first worker; the others load it)."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in use
    url = opts.storage_url
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(STORAGE_ATTEMPTS):  # workers started together race to create the schema: the losers retry
        try:
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                                 grace_period=GRACE_SECONDS, engine_kwargs=engine)
            break
        except Exception as exc:  # a bad URL, a missing driver, an unreachable server: one line naming --storage
            if attempt == STORAGE_ATTEMPTS - 1 or not _transient(exc):
                raise FeatcacheError(f"--storage {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
            time.sleep(0.5 + random.random() * (attempt + 1))
    if opts.sampler == "grid":
        sampler = optuna.samplers.GridSampler(opts.space, seed=opts.seed + worker)
    elif opts.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=opts.seed + worker)
    else:
        sampler = optuna.samplers.TPESampler(seed=opts.seed + worker)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=opts.prune_after, n_warmup_steps=0)
              if opts.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=opts.study_name, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    _check_same_search(study, opts)
    return study


def _check_same_search(study: Any, opts: SearchOptions) -> None:
    """A study continues the search it began: the same space, fixed settings, probe and objective."""
    from ..common.serialise import plain

    identity = plain({"space": opts.space, "pretrain": opts.pretrain, "targets": opts.targets,
                      "probe": [opts.probe_layer, opts.probe_pool, opts.probe_head], "objective": opts.objective,
                      "data": opts.data, "probe_data": opts.probe_data})
    saved = study.user_attrs.get("search")
    if saved is None:
        study.set_user_attr("search", identity)
    elif saved != identity:
        changed = [k for k in identity if saved.get(k) != identity[k]]
        raise FeatcacheError(f"--study-name {opts.study_name}: the study in {opts.storage_url} searched other "
                             f"{', '.join(changed)}; give another --study-name or the same options")


def finished_trials(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def retry_interrupted(study: Any) -> int:
    """Queue again the trials an interrupt (Ctrl-C, a killed worker, a lost node) failed: their parameters and
    folder, so each continues from its last epoch. A trial that failed on a user error is not retried."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    count = 0
    for t in trials:
        if t.state != TrialState.FAIL or "error" in t.user_attrs or t.number in retried:
            continue
        if int(t.user_attrs.get("retries", 0)) >= MAX_RETRIES:
            continue
        attrs = {"retry_of": t.number, "retries": int(t.user_attrs.get("retries", 0)) + 1}
        if t.user_attrs.get("folder"):
            attrs["folder"] = t.user_attrs["folder"]
        study.enqueue_trial(t.params, user_attrs=attrs)
        count += 1
    return count


class StopOnErrors:
    """Stops the worker after `limit` trials in a row failed on a user error (trials that cannot run are not
    counted as finished, so without it a space that cannot run would be tried for ever)."""

    def __init__(self, limit: int):
        self.limit, self.streak, self.stopped, self.last = limit, 0, False, ""

    def __call__(self, study: Any, trial: Any) -> None:
        if trial.state.name == "FAIL" and "error" in trial.user_attrs:
            self.streak, self.last = self.streak + 1, trial.user_attrs["error"]
        else:
            self.streak = 0
        if self.streak >= self.limit:
            self.stopped = True
            study.stop()


def search(opts: SearchOptions) -> SearchResult:
    """Run this worker's share of the search, then write the run folder's report (see the module docstring)."""
    opts.validate()
    optuna = import_optuna()
    from ..common.device import configure_threads
    from ..spectra.splits import open_splits

    opened, _ = open_splits(opts.data, names=("train", "val"), required=("train",), whole_files="search")
    paths = {s.name: str(s.path) for s in opened}
    probe, _ = open_splits(opts.probe_data, names=("train", "val"), required=("train", "val"))
    del probe  # checked here (names, files, rows) before any trial; extract reads them again
    opts.out.mkdir(parents=True, exist_ok=True)
    import torch

    configure_threads(torch.device("cpu"), opts.threads)
    worker = worker_index(opts)
    study = open_study(opts, worker)
    queued = retry_interrupted(study)
    if queued:
        status(f"search: {queued} interrupted trial(s) queued again (each continues from its last epoch)")
    before = len(finished_trials(study))
    name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"  # this call: host, process, a token
    if before < opts.n_trials:
        status(f"search: {before} of {opts.n_trials} trials finished in {opts.storage_url} (study "
               f"{opts.study_name}); worker {worker} ({name}) joins")
        callback = optuna.study.MaxTrialsCallback(opts.n_trials, states=(optuna.trial.TrialState.COMPLETE,
                                                                         optuna.trial.TrialState.PRUNED))
        data = PretrainData(paths["train"], paths.get("val"))
        failures = StopOnErrors(MAX_ERRORS_IN_A_ROW)
        study.optimize(lambda trial: _objective(trial, opts, data, name), callbacks=[callback, failures],
                       timeout=opts.timeout * 60 if opts.timeout else None, catch=(FeatcacheError,),
                       gc_after_trial=True)
        if failures.stopped:
            write_report(study, opts)
            raise FeatcacheError(f"search: {MAX_ERRORS_IN_A_ROW} trials in a row failed, the last with: "
                                 f"{failures.last}")
    else:
        status(f"search: all {opts.n_trials} trials have finished in {opts.storage_url}; writing the report")
    finished = finished_trials(study)
    ran = sum(1 for t in finished if t.user_attrs.get("worker") == name)
    best = write_report(study, opts)
    return SearchResult(opts.out, opts.storage_url, opts.study_name, ran, len(finished), best)


def _objective(trial: Any, opts: SearchOptions, data: PretrainData, worker: str) -> float:
    try:
        return run_trial(trial, opts, data, worker)
    except FeatcacheError as exc:  # this trial's settings cannot run: record why, do not retry it
        trial.set_user_attr("error", str(exc))
        status(f"trial {trial.number} failed: {exc}")
        raise
