"""Devices and CPU threads: `--device` means the same in every command, and each process takes its share
of the cores (torchrun does not bind processes to cores; Slurm does)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import FeatcacheError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto | cpu | cuda[:i] (auto: cuda when available)"


def to_cpu(obj: Any) -> Any:
    """A structure (an optimizer's state) with every tensor moved to the CPU, so a GPU run resumes anywhere."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """auto -> cuda if available, else cpu; cpu, cuda and cuda:i (which must exist), mps where torch has it."""
    import torch

    text = "auto" if device is None else str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise FeatcacheError(f"--device {text}: expected {DEVICE_HELP}")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FeatcacheError(f"--device {text}: CUDA is not available on this machine (torch "
                                 f"{torch.__version__}); use --device cpu")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise FeatcacheError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA devices")
    if text == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise FeatcacheError("--device mps: Apple's MPS backend is not available here; use --device cpu")
    return torch.device(text)


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, e.g. a Slurm allocation), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_rank() -> tuple[int, int]:
    """(local rank, processes on this node) under torchrun or srun, else (0, 1)."""
    env = os.environ
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", "1"))
    if "SLURM_LOCALID" in env and "SLURM_STEP_ID" in env:
        tasks = env.get("SLURM_NTASKS_PER_NODE", env.get("SLURM_NTASKS", "1")).split("(")[0]
        return int(env["SLURM_LOCALID"]), int(tasks)
    return 0, 1


def process_cpus() -> int:
    """This process's share of the cores: all of its affinity, divided among torchrun's local ranks."""
    cores = available_cpus()
    _, per_node = local_rank()
    if "LOCAL_RANK" in os.environ:  # Slurm binds each task to its own cores; torchrun does not
        cores = max(1, cores // max(per_node, 1))
    return max(1, cores)


# CPU threads per process when --threads is not given, by workload (docs/guides/threads.md has the measurement,
# benchmarks/threads.py makes it): a head's small matrix products gain little from a second thread on a quiet
# machine and lose ~10x on a busy one (two OpenMP threads spinning against other work: fit mlp_1 took 40-56 s
# on two threads and 3.8-4.8 s on one, with the same metrics); the encoder's convolutions use every core they
# get (extraction at 384 spectra/s on two threads against 122 on one). None: this process's share of the cores.
WORKLOAD_THREADS: dict[str, int | None] = {"heads": 1, "encoder": None}
THREADS_HELP = {"heads": "CPU threads of this process's head fits (default 1: small heads are fastest on one "
                         "thread per process, by far on a busy machine; use --jobs for more cores)",
                "encoder": "CPU threads of the encoder's work (default: every core this process may use)"}


def default_threads(workload: str) -> int:
    """The threads a process of this workload ('heads' or 'encoder') takes when none are asked for."""
    if workload not in WORKLOAD_THREADS:
        raise FeatcacheError(f"unknown workload '{workload}': choose from {', '.join(WORKLOAD_THREADS)}")
    fixed = WORKLOAD_THREADS[workload]
    return process_cpus() if fixed is None else fixed


def use_threads(threads: int | None = None, workload: str = "heads") -> int:
    """Set this process's CPU threads, torch's and NumPy's BLAS alike, to `threads` (None: the workload's
    default) and return the number. The command line's --threads; call it first in a script or notebook."""
    import torch

    count = default_threads(workload) if threads is None else int(threads)
    if count < 1:
        raise FeatcacheError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(count)
    try:  # NumPy's BLAS (ridge's Gram, kNN's distances) to the same count
        from threadpoolctl import threadpool_limits

        _BLAS_LIMITS[:] = [threadpool_limits(count, user_api="blas")]
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass
    return count


_BLAS_LIMITS: list[object] = []  # the limit in force (a threadpool_limits object lasts as long as it is held)


def configure_threads(device: torch.device, threads: int | None = None, workload: str = "encoder") -> None:
    """Set the CPU threads for the work on `device`: `threads` if given, else (on the CPU) the workload's
    default; on a GPU an unasked count leaves torch's setting alone."""
    if threads is not None or device.type == "cpu":
        use_threads(threads, workload)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to `threads` inside the block (None: unchanged), restored afterwards."""
    import torch

    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
