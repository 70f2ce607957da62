"""One extraction across processes or nodes, without a home-made scheduler: torchrun ranks, an srun step's
tasks, or a Slurm job array of `--shard I/N` runs. Each shard owns a contiguous, chunk-aligned share of the
blocks; shard 0 (or `extract --prepare`) creates the store and the others wait for it."""

from __future__ import annotations

import os
import time
from typing import Any

from ..cache.fingerprint import describe_changes
from ..cache.reader import read_metadata
from ..common.errors import FeatcacheError
from ..common.progress import status
from .plan import ExtractPlan


def detect_shard(explicit: tuple[int, int] | None) -> tuple[tuple[int, int] | None, str]:
    """This process's shard: --shard I/N, else torchrun's RANK/WORLD_SIZE, else an srun step's
    SLURM_PROCID/SLURM_NTASKS (only inside a step, not in the batch script itself)."""
    if explicit is not None:
        return explicit, "--shard"
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
        return (int(env["RANK"]), int(env["WORLD_SIZE"])), "torchrun (RANK/WORLD_SIZE)"
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return (int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])), "srun (SLURM_PROCID/SLURM_NTASKS)"
    return None, "single process"


def shard_blocks(blocks: list[Any], shard: tuple[int, int] | None) -> list[Any]:
    """Shard I/N's contiguous share of all blocks (every split's, in order)."""
    if shard is None:
        return blocks
    index, count = shard
    return blocks[index * len(blocks) // count:(index + 1) * len(blocks) // count]


def wait_until_prepared(plan: ExtractPlan, shard: tuple[int, int]) -> dict[str, Any]:
    """Ranks other than 0 wait for rank 0 (or `extract --prepare`) to create every array."""
    out = plan.options.out
    wanted = {a.path for a in plan.arrays}
    deadline = time.monotonic() + plan.options.wait_seconds
    announced = False
    last_seen = None
    while True:
        meta = read_metadata(out)
        if meta is not None:
            last_seen = meta.fingerprint
            if last_seen != plan.fingerprint and not plan.options.overwrite:  # shard 0 refuses it too
                changes = describe_changes(dict(meta.parts), plan.parts)
                raise FeatcacheError(f"shard {shard[0]}/{shard[1]}: {out} was made from other inputs "
                                     f"({'; '.join(changes)}); run every shard with the options that made it, "
                                     "or --overwrite it from shard 0 (or --prepare)")
            have = {a["path"] for g in meta.generations for a in g.arrays}
            if meta.prepared and wanted <= have:
                return meta.to_dict()
        if time.monotonic() > deadline:
            why = ("a cache made from other inputs" if last_seen and last_seen != plan.fingerprint
                   else "a cache not yet prepared" if last_seen else "no cache")
            raise FeatcacheError(f"shard {shard[0]}/{shard[1]}: waited {plan.options.wait_seconds:.0f} s for {out} "
                                 f"to be prepared but found {why}; run `featcache extract ... --prepare` (or "
                                 "shard 0) with the same options first")
        if not announced:
            status(f"shard {shard[0]}/{shard[1]}: waiting for shard 0 (or --prepare) to create {out}")
            announced = True
        time.sleep(0.5)
