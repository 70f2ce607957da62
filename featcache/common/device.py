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


def configure_threads(device: torch.device, threads: int | None = None) -> None:
    """Set torch's CPU threads for the work on `device`: `threads` if given, else this process's share."""
    import torch

    if threads is not None:
        if int(threads) < 1:
            raise FeatcacheError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    elif device.type == "cpu":
        torch.set_num_threads(process_cpus())


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
