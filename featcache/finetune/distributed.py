"""Fine-tuning on several processes: torchrun (WORLD_SIZE > 1) or an srun step (SLURM_STEP_NUM_TASKS > 1)
starts a process group (gloo on CPU, nccl on GPU); with one process every collective is the identity."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..common.device import resolve_device
from ..common.errors import FeatcacheError


@dataclass
class Dist:
    """This process's place in the run; with world 1 every collective is the identity."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owned: bool = False  # we started the process group, so we end it

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (float64 on the CPU in and out)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        work = values.to(self.device)
        dist.all_reduce(work)
        return work.cpu()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """Run fn on rank 0 only and hand its result (or its FeatcacheError) to every rank."""
        if self.world == 1:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = ("ok", fn())
            except FeatcacheError as exc:
                box[0] = ("error", str(exc))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise FeatcacheError(value)
        return value

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """End the process group we started (no barrier: after an error the other ranks may be gone)."""
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False


def init_distributed(device: str) -> Dist:
    """A process group when launched by torchrun (WORLD_SIZE > 1) or srun (SLURM_STEP_NUM_TASKS > 1)."""
    env = os.environ
    init_method = "env://"
    if int(env.get("WORLD_SIZE", "1")) > 1:
        world, rank, local = int(env["WORLD_SIZE"]), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    elif int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
        if not env.get("MASTER_ADDR") or not env.get("MASTER_PORT"):
            raise FeatcacheError("under srun with several tasks, export MASTER_ADDR and MASTER_PORT (e.g. "
                                 "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) "
                                 "MASTER_PORT=29500), or launch with torchrun")
        world, rank = int(env["SLURM_STEP_NUM_TASKS"]), int(env["SLURM_PROCID"])
        local = int(env.get("SLURM_LOCALID", "0"))
        init_method = f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    else:
        return Dist(device=resolve_device(device))
    import torch.distributed as dist

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local)
        torch.cuda.set_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    owned = False
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
        owned = True
    return Dist(rank=rank, world=world, local_rank=local, device=resolved, owned=owned)
