"""`featcache finetune`: train the encoder and a head together, end to end from the HDF5 files.

The cache assumes a frozen encoder and fixed noise; this mode drops both assumptions. The model is
encoder (BlindspotModel1D.encode up to the tap) -> pooling -> feature standardisation -> head, and the
choices below make `--freeze-encoder --noise fixed` compute what `extract` + `fit` compute:

- Standardisation: mean and population std of the *initial* encoder's train features under the extract
  noise (draw 0), in one streamed pass before training (fit's standardisation of the same cache); kept
  fixed afterwards (buffers of the model). With --init-head the fit run's own standardisation is used.
  Targets are standardised on the train labels. When encoder blocks train, each column's scale is floored
  at --scale-floor (default 0.1) times the median column scale (or a tenth of the median RMS feature value,
  if larger: features that barely vary at all, as a random-init encoder's): a pretrained encoder has near-constant
  channels (std 1e-6 next to a median of 0.06 in the demo encoder), and dividing by such a std turns the
  smallest encoder update (Adam moves every weight by about the learning rate) into a feature jump of
  thousands of standard deviations, which wrecks the head. A --init-head's first layer is rescaled to
  match, so the starting function is unchanged. A frozen encoder keeps fit's standardisation exactly.
- BatchNorm: --batchnorm eval (default) keeps every block's BatchNorm on its pretrained running statistics
  while the weights train (fine-tuning practice for small batches: training and evaluation compute the same
  function); --batchnorm train normalises the unfrozen blocks with batch statistics and updates theirs.
- Noise: train rows get fresh noise every epoch (stream fresh_stream(epoch index), keyed by seed and file
  row) with --noise fresh, the extract noise (stream 0) with fixed; validation and test always use the
  extract noise, so their numbers compare with the cache path.
- Shuffle: each rank owns a contiguous shard of the train rows (rank r: rows [r*N//W, (r+1)*N//W)), read in
  row blocks; blocks and the rows within each block are permuted by a torch.Generator seeded with
  seed (+ rank), replayed from epoch 1, so the order is a function of (seed, rank, epoch) and a resumed run
  sees the same batches. With one block and one process this is exactly fit's shuffle.
- Steps: every rank takes ceil((N // W) / batch_size) optimiser steps per epoch (DDP needs equal counts);
  the last batch takes the rest (a rank with one row more puts it there).
- Unfreezing: "last K encoder blocks" counts back from the deepest block the tap uses (enc_pre_latent
  with num_layers 5 uses encoders.0..4, so last:2 is encoders.3 and .4). Frozen blocks have
  requires_grad False and stay in eval mode (BatchNorm running statistics unchanged); unfrozen blocks
  train in train mode (their BatchNorm too only with --batchnorm train). Blocks deeper than the tap and
  the decoders never run and are never changed, so no parameter that requires grad goes unused and DDP
  needs no find_unused_parameters.
- Distributed: WORLD_SIZE > 1 (torchrun) or SLURM_STEP_NUM_TASKS > 1 (srun; then MASTER_ADDR and
  MASTER_PORT must be exported) starts a process group (gloo on CPU, nccl on GPU) and wraps the model in
  DistributedDataParallel. BatchNorm running statistics follow rank 0's (broadcast after each epoch, as
  DDP's broadcast_buffers does before each step). Validation sums (SSE, sum y, sum y^2, n) are all-reduced
  for an exact global R2; only rank 0 writes.
- Checkpoints: OUT/last.pt after every epoch (model, best weights, optimizer, scheduler, per-rank RNG,
  history; torch.load(weights_only=True) reads it), so --resume continues to the same result.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .checkpoint import _torch_load, load_encoder, save_checkpoint, state_dict_digest
from .data import PfsDataset, parse_split_specs
from .encoder import DIRECTIONS, BlindspotModel1D
from .errors import FeatcacheError, choices_message
from .extract import PSEUDO_LAYERS, _background, resolve_device
from .fit import FitResult, FitSpec, load_head, save_run
from .heads import create_head, head_info, list_heads
from .mask import load_mask_file, parse_mask_spec, quantile_mask
from .metrics import bootstrap_r2_ci, regression_metrics
from .noise import add_noise, fresh_stream
from .pooling import Pooling, get_pooling
from .progress import progress, status
from .ridge import is_constant
from .training import TrainRecipe, TrainResult, clip_grad_norm, make_optimizer

CHECKPOINT_FORMAT = 1
NOISE_MODES = ("fresh", "fixed")
EXTRACT_STREAM = 0  # draw 0: the noise `featcache extract` uses (validation, test, standardisation)
RANK_SEED_STRIDE = 1_000_003  # rank r shuffles and drops out with seed + r * stride (rank 0: fit's seed)
# options that may change on --resume; every other setting must match the checkpoint's
RESUME_FREE = ("max_epochs", "patience")


# -- distributed ------------------------------------------------------------------------------------------
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


# -- options and result -----------------------------------------------------------------------------------
@dataclass
class FinetuneOptions:
    """Everything `featcache finetune` takes (the CLI options, by name)."""

    ckpt: Path
    data: list[str]
    targets: list[str]
    out: Path
    layer: str = "enc_pre_latent"
    pool: str = "seg_mean_K8"
    head: str | None = None  # None: mlp_1, or the --init-head run's head
    hidden: int = 256
    dropout: float = 0.1
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    unfreeze: str = "all"  # none (--freeze-encoder) | all | last:K
    encoder_lr: float = 1e-4
    batchnorm: str = "eval"  # eval: pretrained running statistics throughout | train: batch statistics
    scale_floor: float = 0.1  # trained encoder: feature scale >= this x the median column scale
    noise: str = "fresh"
    noise_level: float = 1.0
    noise_seed: int = 42
    mask: str = "quantile:0.85"
    direction: str = "forward"
    dilation: int | None = None
    init_head: Path | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    block_rows: int = 1024
    eval_batch_size: int = 256
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    check_sync: bool = False
    n_boot: int = 1000
    progress: bool = True
    command: str = "featcache finetune"
    config: dict[str, Any] | None = None  # what config.yaml records (the CLI's resolved options)


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


def describe_unfreeze(blocks: list[int]) -> str:
    if not blocks:
        return "encoder frozen"
    span = f"encoders.{blocks[0]}" if len(blocks) == 1 else f"encoders.{blocks[0]}-{blocks[-1]}"
    return f"training {span}"


def parse_unfreeze(text: str, depth: int, layer: str = "") -> list[int]:
    """none -> [], all -> [0..depth], last:K -> the K deepest blocks the tap uses (depth-K+1..depth)."""
    value = str(text).strip().lower()
    n_blocks = depth + 1
    if value in ("none", "frozen"):
        return []
    if value == "all":
        return list(range(n_blocks))
    if value.startswith("last:"):
        count = value[5:]
        if not count.isdigit() or not 1 <= int(count) <= n_blocks:
            raise FeatcacheError(f"--unfreeze {text}: layer {layer or 'the tap'} uses {n_blocks} encoder blocks "
                                 f"(encoders.0..{depth}); K must be 1..{n_blocks}")
        return list(range(n_blocks - int(count), n_blocks))
    raise FeatcacheError(f"--unfreeze {text}: expected all or last:K (or --freeze-encoder)")


# -- the model ---------------------------------------------------------------------------------------------
class FinetuneModel(nn.Module):
    """encoder (up to the tap) -> pooling -> (f - x_mean) / x_scale -> head, standardised targets out."""

    def __init__(self, encoder: BlindspotModel1D, tap: str, pooling: Pooling, direction: str, head: nn.Module,
                 x_mean: np.ndarray, x_scale: np.ndarray, unfrozen: list[int], batchnorm: str = "eval"):
        super().__init__()
        self.batchnorm = batchnorm
        self.encoder = encoder
        self.head = head
        self.tap, self.pooling, self.direction = tap, pooling, direction
        self.unfrozen = list(unfrozen)
        self.register_buffer("x_mean", torch.as_tensor(np.asarray(x_mean, dtype=np.float32)))
        self.register_buffer("x_scale", torch.as_tensor(np.asarray(x_scale, dtype=np.float32)))
        encoder.requires_grad_(False)
        for i in self.unfrozen:
            encoder.encoders[i].requires_grad_(True)
        head.requires_grad_(True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled tap, what the cache stores (no graph is built through frozen blocks)."""
        return self.pooling(self.encoder.encode(x, [self.tap], self.direction)[self.tap])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.features(x) - self.x_mean) / self.x_scale)

    def train(self, mode: bool = True) -> FinetuneModel:
        """Frozen blocks stay in eval mode even while the rest trains (their BatchNorm statistics are kept);
        with batchnorm='eval' so does every BatchNorm layer."""
        super().train(mode)
        if mode:
            self.encoder.eval()
            for i in self.unfrozen:
                self.encoder.encoders[i].train()
            if self.batchnorm == "eval":
                for module in self.encoder.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def parameter_groups(self, lr: float, encoder_lr: float) -> list[dict[str, Any]]:
        """AdamW groups: the head at lr, the unfrozen encoder blocks at encoder_lr (omitted when frozen)."""
        groups: list[dict[str, Any]] = [{"params": list(self.head.parameters()), "lr": lr}]
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        if encoder:
            groups.append({"params": encoder, "lr": encoder_lr})
        return groups


def floored_scale(scale: np.ndarray, relative_floor: float, mean: np.ndarray | None = None) -> np.ndarray:
    """Column scales no smaller than relative_floor x a typical scale: the median column std, or a tenth of
    the features' median RMS value where that is larger (an encoder whose features barely vary across
    spectra, such as a random-init one, would otherwise get a floor far below what one update moves them).
    See the module docstring for why a trained encoder needs it."""
    scale = np.asarray(scale, dtype=np.float64)
    positive = scale[scale > 0]
    if relative_floor <= 0 or positive.size == 0:
        return scale
    typical = float(np.median(positive))
    if mean is not None:
        rms = np.sqrt(np.asarray(mean, dtype=np.float64) ** 2 + scale ** 2)
        typical = max(typical, 0.1 * float(np.median(rms[rms > 0])))
    return np.maximum(scale, relative_floor * typical)


def rescale_first_layer(head: nn.Module, old_scale: np.ndarray, new_scale: np.ndarray) -> None:
    """Multiply the first Linear layer's input columns by new/old, so that head((f - m) / new) equals the
    original head((f - m) / old) exactly in real arithmetic."""
    first = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise FeatcacheError("the head has no Linear layer to rescale")
    factor = torch.as_tensor(np.asarray(new_scale) / np.asarray(old_scale), dtype=first.weight.dtype)
    with torch.no_grad():
        first.weight.mul_(factor.to(first.weight.device)[None, :])


def params_digest(module: nn.Module) -> str:
    """sha256 over every parameter's bytes: equal on all ranks iff their weights are bitwise equal."""
    digest = hashlib.sha256()
    for _, p in module.named_parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# -- data ----------------------------------------------------------------------------------------------------
@dataclass
class SplitData:
    """One split's rows of a file and its labels (small: held in memory on every rank)."""

    name: str
    path: Path
    start: int
    stop: int
    y: np.ndarray  # (n, T) float64

    @property
    def n(self) -> int:
        return self.stop - self.start


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank r's contiguous share [r*n//W, (r+1)*n//W) of n rows (sizes differ by at most one)."""
    return rank * n // world, (rank + 1) * n // world


def epoch_order(n_rows: int, block_rows: int, seed: int, epoch: int) -> list[tuple[int, int, np.ndarray]]:
    """(start, stop, within-block permutation) per row block in the epoch's (1-based) block order.

    Drawn from a torch.Generator seeded with `seed`, replaying epochs 1..epoch, so the order depends only
    on (seed, epoch); with a single block, epoch e's permutation is fit's e-th torch.randperm.
    """
    gen = torch.Generator().manual_seed(int(seed))
    starts = list(range(0, n_rows, block_rows))
    blocks: list[tuple[int, int, np.ndarray]] = []
    for _ in range(max(int(epoch), 1)):
        order = torch.randperm(len(starts), generator=gen).tolist() if len(starts) > 1 else [0]
        blocks = []
        for b in order:
            start, stop = starts[b], min(starts[b] + block_rows, n_rows)
            blocks.append((start, stop, torch.randperm(stop - start, generator=gen).numpy()))
    return blocks


def block_inputs(ds: PfsDataset, start: int, stop: int, mask: np.ndarray, *, seed: int, noise_level: float,
                 stream: int, input_sigma: bool) -> np.ndarray:
    """(rows, C, L) encoder input of file rows [start, stop): extract's reading, noise and mask exactly."""
    flux, error = ds.read_flux(start, stop), ds.read_error(start, stop)
    noisy, sigma = add_noise(flux, error, np.arange(start, stop), seed=seed, noise_level=noise_level,
                             stream=stream)
    channels = [noisy[:, mask], sigma[:, mask]] if input_sigma else [noisy[:, mask]]
    return np.stack(channels, axis=1)


def stream_blocks(split: SplitData, blocks: list[tuple[int, int, np.ndarray | None]], mask: np.ndarray, *,
                  seed: int, noise_level: float, stream: int, input_sigma: bool
                  ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(file rows, inputs) per block (block rows relative to the split), permuted where a permutation is
    given; read and noised in a background thread at most two blocks ahead, so memory stays bounded."""

    def produce() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        with PfsDataset(split.path) as ds:
            for start, stop, perm in blocks:
                a, b = split.start + start, split.start + stop
                x = block_inputs(ds, a, b, mask, seed=seed, noise_level=noise_level, stream=stream,
                                 input_sigma=input_sigma)
                rows = np.arange(a, b)
                if perm is not None:
                    x, rows = x[perm], rows[perm]
                yield rows, torch.from_numpy(np.ascontiguousarray(x))

    return _background(produce(), depth=2)


def contiguous_blocks(lo: int, hi: int, block_rows: int) -> list[tuple[int, int, None]]:
    return [(s, min(s + block_rows, hi), None) for s in range(lo, hi, block_rows)]


# -- passes --------------------------------------------------------------------------------------------------
@dataclass
class RunContext:
    """What every pass needs: options, mask, the process's place and device."""

    opts: FinetuneOptions
    mask: np.ndarray
    dist: Dist
    input_sigma: bool

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def eval_stream(self, split: SplitData) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """This rank's contiguous shard of a split, in order, with the extract noise."""
        lo, hi = shard_range(split.n, self.dist.rank, self.dist.world)
        return stream_blocks(split, contiguous_blocks(lo, hi, self.opts.block_rows), self.mask,
                             seed=self.opts.noise_seed, noise_level=self.opts.noise_level, stream=EXTRACT_STREAM,
                             input_sigma=self.input_sigma)


def _eval_pass(model: FinetuneModel, split: SplitData, ctx: RunContext, features: bool = False
               ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(file rows, outputs) per batch of this rank's shard, in eval mode (BatchNorm running statistics)."""
    was_training = model.training
    model.eval()
    bs = ctx.opts.eval_batch_size
    try:
        for rows, x in ctx.eval_stream(split):
            for i in range(0, len(rows), bs):
                with torch.inference_mode():
                    xb = x[i:i + bs].to(ctx.device, non_blocking=True)
                    out = (model.features(xb) if features else model(xb)).float()
                yield rows[i:i + bs], out
    finally:
        model.train(was_training)


def feature_moments(model: FinetuneModel, split: SplitData, ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of the pooled train features (float64, Chan's merge across batches and
    ranks): the standardisation fit computes on the cache of the same encoder and noise."""
    n, mean, m2 = 0, None, None
    for _, out in _eval_pass(model, split, ctx, features=True):
        block = out.double().cpu().numpy()
        nb = block.shape[0]
        mb = block.mean(axis=0)
        m2b = ((block - mb) ** 2).sum(axis=0)
        if mean is None:
            n, mean, m2 = nb, mb, m2b
        else:
            total = n + nb
            delta = mb - mean
            mean = mean + delta * nb / total
            m2 = m2 + m2b + delta**2 * n * nb / total
            n = total
    parts = ctx.dist.gather((n, mean, m2))
    n, mean, m2 = 0, None, None
    for nb, mb, m2b in parts:
        if not nb:
            continue
        if mean is None:
            n, mean, m2 = nb, mb, m2b
        else:
            total = n + nb
            delta = mb - mean
            mean, m2, n = mean + delta * nb / total, m2 + m2b + delta**2 * n * nb / total, total
    assert mean is not None and m2 is not None
    return mean, np.sqrt(np.clip(m2 / n, 0.0, None))


def validation_scores(model: FinetuneModel, split: SplitData, ctx: RunContext, y_mean: np.ndarray,
                      y_scale: np.ndarray) -> tuple[float, float]:
    """(MSE on standardised targets, mean R2 over targets) on the whole split: per-rank sums all-reduced."""
    y_std = ((split.y - y_mean) / y_scale).astype(np.float32)
    t = split.y.shape[1]
    sums = torch.zeros(4, t, dtype=torch.float64)
    for rows, out in _eval_pass(model, split, ctx):
        y = torch.from_numpy(y_std[rows - split.start])
        err = (out.cpu() - y).double()
        yd = y.double()
        sums += torch.stack([(err * err).sum(0), yd.sum(0), (yd * yd).sum(0),
                             torch.full((t,), float(len(rows)), dtype=torch.float64)])
    sse, sy, syy, n = ctx.dist.all_sum(sums)
    sst = syy - sy * sy / n
    return float(sse.sum() / (n[0] * t)), float((1.0 - sse / sst).mean())


def predict_split(model: FinetuneModel, split: SplitData, ctx: RunContext, y_mean: np.ndarray,
                  y_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(file rows, predictions in target units) of the whole split, gathered in order on every rank."""
    rows_parts, pred_parts = [], []
    for rows, out in _eval_pass(model, split, ctx):
        rows_parts.append(rows)
        pred_parts.append(out.double().cpu().numpy() * y_scale + y_mean)
    t = split.y.shape[1]
    local = (np.concatenate(rows_parts) if rows_parts else np.empty(0, dtype=np.int64),
             np.concatenate(pred_parts) if pred_parts else np.empty((0, t)))
    gathered = ctx.dist.gather(local)
    return np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])


def train_batches(split: SplitData, ctx: RunContext, epoch: int, y_std: np.ndarray
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of an epoch: its shard's blocks shuffled, rows shuffled within, the tail of a
    block carried into the next; exactly `steps_per_epoch` batches, the last taking what is left."""
    opts, rank, world = ctx.opts, ctx.dist.rank, ctx.dist.world
    lo, hi = shard_range(split.n, rank, world)
    steps = steps_per_epoch(split.n, world, opts.recipe.batch_size)
    bs = opts.recipe.batch_size
    blocks = [(lo + s, lo + e, p) for s, e, p in
              epoch_order(hi - lo, opts.block_rows, opts.recipe.seed + RANK_SEED_STRIDE * rank, epoch)]
    stream = fresh_stream(epoch - 1) if opts.noise == "fresh" else EXTRACT_STREAM
    carry_x: torch.Tensor | None = None
    carry_y: torch.Tensor | None = None
    done = 0
    for rows, x in stream_blocks(split, blocks, ctx.mask, seed=opts.noise_seed, noise_level=opts.noise_level,
                                 stream=stream, input_sigma=ctx.input_sigma):
        y = torch.from_numpy(y_std[rows - split.start])
        if carry_x is not None and carry_y is not None:
            x, y = torch.cat([carry_x, x]), torch.cat([carry_y, y])
        i = 0
        while done < steps - 1 and len(x) - i >= bs:
            yield x[i:i + bs], y[i:i + bs]
            i += bs
            done += 1
        carry_x, carry_y = x[i:], y[i:]
    if carry_x is not None and carry_y is not None and len(carry_x):
        yield carry_x, carry_y


def steps_per_epoch(n_rows: int, world: int, batch_size: int) -> int:
    """Optimiser steps per epoch on every rank: ceil of the smallest shard over the batch size."""
    return max(1, math.ceil((n_rows // world) / batch_size))


# -- setup ---------------------------------------------------------------------------------------------------
def _check_options(opts: FinetuneOptions) -> None:
    opts.recipe.validate()
    checks = [
        (opts.noise in NOISE_MODES, f"--noise {opts.noise}: expected fresh or fixed"),
        (opts.direction in DIRECTIONS, "--direction: " + choices_message("direction", opts.direction, DIRECTIONS)),
        (opts.encoder_lr > 0, f"--encoder-lr must be positive, got {opts.encoder_lr}"),
        (opts.batchnorm in ("eval", "train"), f"--batchnorm {opts.batchnorm}: expected eval or train"),
        (0 <= opts.scale_floor < 1, f"--scale-floor must be in [0, 1), got {opts.scale_floor}"),
        (opts.noise_level > 0, f"--noise-level must be positive, got {opts.noise_level}"),
        (opts.block_rows >= 1, f"--block-rows must be >= 1, got {opts.block_rows}"),
        (opts.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {opts.eval_batch_size}"),
        (bool(opts.targets), "give at least one --target"),
        (len(set(opts.targets)) == len(opts.targets), "--target: a label is given twice"),
    ]
    for ok, message in checks:
        if not ok:
            raise FeatcacheError(message)
    if opts.layer in PSEUDO_LAYERS:
        raise FeatcacheError(f"--layer {opts.layer}: an input pseudo-layer has no encoder to fine-tune; fit a head "
                             "on the cache instead (featcache fit)")
    if opts.head is not None:
        info = head_info(opts.head)
        if not info.trainable:
            raise FeatcacheError(f"--head {opts.head}: finetune trains by gradient descent; choose one of "
                                 + ", ".join(h for h in list_heads() if head_info(h).trainable))
    get_pooling(opts.pool)


def _load_splits(opts: FinetuneOptions) -> tuple[dict[str, SplitData], tuple[Path, int, int], int]:
    """The split roles' rows and labels, validated; the mask is made from the first --data split."""
    specs = parse_split_specs(opts.data)
    names = [s.name for s in specs]
    for flag, role in (("--train-split", opts.train_split), ("--val-split", opts.val_split),
                       ("--test-split", opts.test_split)):
        if role is not None and role not in names:
            hint = "" if flag == "--train-split" else f" (pass {flag} '' to go without)"
            raise FeatcacheError(f"{flag} {role}: no such --data split; given: {', '.join(names)}{hint}")
    roles = [r for r in (opts.train_split, opts.val_split, opts.test_split) if r is not None]
    if len(set(roles)) != len(roles):
        raise FeatcacheError("--train-split, --val-split and --test-split must name different splits")
    splits: dict[str, SplitData] = {}
    wave: np.ndarray | None = None
    first: tuple[Path, int, int] | None = None
    for spec in specs:
        with PfsDataset(spec.path) as ds:
            start, stop = spec.resolve(ds.n_rows)
            if wave is None:
                wave, first = ds.wave, (spec.path, start, stop)
            elif ds.wave.shape != wave.shape or not np.allclose(ds.wave, wave, rtol=0, atol=1e-6):
                raise FeatcacheError(f"{spec.path}: wavelength grid differs from {specs[0].path}; every split "
                                     "must share one grid")
            if spec.name not in roles:
                continue
            labels = ds.labels(list(opts.targets), start, stop)
        y = np.stack([np.asarray(labels[t], dtype=np.float64) for t in opts.targets], axis=1)
        for j, target in enumerate(opts.targets):
            bad = int(np.count_nonzero(~np.isfinite(y[:, j])))
            if bad:
                raise FeatcacheError(f"target '{target}' has {bad} NaN or inf values on the {spec.name} split; "
                                     "drop or fill those rows")
        splits[spec.name] = SplitData(spec.name, spec.path, start, stop, y)
    assert wave is not None and first is not None
    for role, split in ((opts.train_split, "train"), (opts.val_split, "validation")):
        if role is None:
            continue
        y = splits[role].y
        std = y.std(axis=0)
        for j in np.flatnonzero(is_constant(std, y.mean(axis=0))):
            raise FeatcacheError(f"target '{opts.targets[j]}' is constant on the {split} split "
                                 f"(every value is {y[0, j]:.6g}); nothing to fit")
    return splits, first, int(wave.shape[0])


def make_mask(spec_text: str, path: Path, start: int, stop: int, n_pixels: int) -> np.ndarray:
    """extract's rule: FILE.npy, the quantile of the first split's median error, or none."""
    spec = parse_mask_spec(spec_text)
    if spec.kind == "file":
        assert spec.path is not None
        return load_mask_file(spec.path, n_pixels)
    if spec.kind == "quantile":
        status(f"mask: quantile {spec.ratio:g} of the median error over {stop - start} spectra of {path.name}")
        with PfsDataset(path) as ds:
            return quantile_mask(lambda s, e: ds.read_error(start + s, start + e), stop - start, n_pixels,
                                 float(spec.ratio or 1.0))
    return np.ones(n_pixels, dtype=bool)


def _settings(opts: FinetuneOptions, encoder_sha: str, unfrozen: list[int], head: str) -> dict[str, Any]:
    """What must match for --resume (plain data, so the checkpoint loads with weights_only=True)."""
    recipe = {k: v for k, v in opts.recipe.to_dict().items() if k not in RESUME_FREE and k != "eval_batch_size"}
    return {"encoder_sha256": encoder_sha, "data": list(opts.data), "layer": opts.layer, "pool": opts.pool,
            "head": head, "hidden": opts.hidden, "dropout": opts.dropout, "targets": list(opts.targets),
            "unfreeze": list(unfrozen), "encoder_lr": opts.encoder_lr, "noise": opts.noise,
            "batchnorm": opts.batchnorm if unfrozen else "eval", "scale_floor": opts.scale_floor if unfrozen else 0.0,
            "noise_level": opts.noise_level, "noise_seed": opts.noise_seed, "mask": opts.mask,
            "direction": opts.direction, "init_head": str(opts.init_head) if opts.init_head else None,
            "splits": [opts.train_split, opts.val_split, opts.test_split], "block_rows": opts.block_rows,
            "recipe": recipe}


def _prepare_out(opts: FinetuneOptions) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None; refuses to train over an earlier run without a flag."""
    last = opts.out / "last.pt"
    if opts.resume:
        if not last.exists():
            raise FeatcacheError(f"--resume: {last} does not exist (nothing to resume; drop --resume to start)")
        state = _torch_load(last)
        if not isinstance(state, dict) or state.get("kind") != "finetune" \
                or state.get("format") != CHECKPOINT_FORMAT:
            raise FeatcacheError(f"--resume: {last} was not written by featcache finetune")
        return state
    if (last.exists() or (opts.out / "metrics.json").exists()) and not opts.overwrite:
        raise FeatcacheError(f"--out {opts.out}: holds an earlier run; pass --resume to continue it or --overwrite "
                             "to start again")
    return None


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(key)
    return out


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# -- the run -------------------------------------------------------------------------------------------------
def finetune(opts: FinetuneOptions) -> FinetuneResult:
    """Train encoder and head end to end on one process or many (torchrun / srun); rank 0 writes OUT."""
    _check_options(opts)
    dist = init_distributed(opts.device)
    try:
        result = _finetune(opts, dist)
        dist.barrier()  # rank 0 has written OUT before anyone reports success
        return result
    finally:
        dist.close()


def _finetune(opts: FinetuneOptions, dist: Dist) -> FinetuneResult:
    started = time.perf_counter()
    device = dist.device
    loaded = load_encoder(opts.ckpt, dilation=opts.dilation, device=device)
    encoder = loaded.model
    source_sha = loaded.weights_digest()  # before training changes loaded.model in place
    try:
        depth = encoder.tap_index(opts.layer)
    except FeatcacheError as exc:
        raise FeatcacheError(f"--layer: {exc}") from None
    unfrozen = parse_unfreeze(opts.unfreeze, depth, opts.layer)
    pooling = get_pooling(opts.pool)
    splits, first, n_pixels = _load_splits(opts)
    train = splits[opts.train_split]
    if train.n // dist.world < 1:
        raise FeatcacheError(f"the train split has {train.n} rows, fewer than the {dist.world} processes")

    # the head (fresh, or a fit run's) and its standardisation
    init = load_head(opts.init_head) if opts.init_head is not None else None
    head_name = opts.head or (init.head if init is not None else "mlp_1")
    if init is not None:
        if not isinstance(init.predictor, TrainResult):
            raise FeatcacheError(f"--init-head {opts.init_head}: a {init.head} head is closed-form; fine-tuning "
                                 "starts from a torch head (linear, mlp_1, mlp_2)")
        if init.head != head_name:
            raise FeatcacheError(f"--init-head {opts.init_head}: the run's head is {init.head}, --head asks for "
                                 f"{head_name}")
        if init.features != [(opts.layer, opts.pool)]:
            raise FeatcacheError(f"--init-head {opts.init_head}: the head was fitted on "
                                 f"{'+'.join(f'{a}/{b}' for a, b in init.features)}, not {opts.layer}/{opts.pool}")
        if init.targets != list(opts.targets):
            raise FeatcacheError(f"--init-head {opts.init_head}: the head predicts {', '.join(init.targets)}, "
                                 f"--target asks for {', '.join(opts.targets)}")
        if init.encoder_sha256 != source_sha and dist.main:
            status(f"note: --init-head {opts.init_head} was fitted on features of another encoder "
                   f"({init.encoder_sha256[:12]}, this one {source_sha[:12]})")

    # the mask (rank 0 computes, everyone gets it) and the feature shape
    state = _prepare_out(opts)
    if state is not None:
        mask = state["mask"].numpy().astype(bool)
    else:
        mask = dist.from_main(lambda: make_mask(opts.mask, *first, n_pixels))
    if mask.shape != (n_pixels,):
        raise FeatcacheError(f"--resume: the checkpoint's mask has {mask.shape[0]} pixels, the data {n_pixels}")
    n_kept = int(mask.sum())
    channels = encoder.config.embed_dim * (2 if opts.direction == "both" else 1)
    length = encoder.tap_length(opts.layer, n_kept)
    if length < 1:
        raise FeatcacheError(f"--layer {opts.layer}: the mask keeps {n_kept} pixels, too few for this depth")
    try:
        in_dim = pooling.width(channels, length)
    except FeatcacheError as exc:
        raise FeatcacheError(f"--pool {opts.pool} on --layer {opts.layer}: {exc}") from None
    if init is not None and init.in_dim != in_dim:
        raise FeatcacheError(f"--init-head {opts.init_head}: the head takes {init.in_dim} features, "
                             f"{opts.layer}/{opts.pool} gives {in_dim} here (another mask or direction?)")
    settings = _settings(opts, source_sha, unfrozen, head_name)
    if state is not None:
        diffs = _differences(state["settings"], settings)
        if diffs:
            raise FeatcacheError(f"--resume: the options differ from {opts.out / 'last.pt'}'s: " + ", ".join(diffs))

    ctx = RunContext(opts, mask, dist, encoder.config.input_sigma)
    recipe = opts.recipe
    if init is not None:
        assert isinstance(init.predictor, TrainResult)
        head = init.predictor.model
        x_mean, x_scale = init.predictor.x_mean, init.predictor.x_scale
        y_mean, y_scale = init.predictor.y_mean, init.predictor.y_scale
        hidden, dropout = _head_shape(head, opts)
    else:
        head = create_head(head_name, in_dim, len(opts.targets), hidden=opts.hidden, dropout=opts.dropout,
                           seed=recipe.seed)
        hidden, dropout = opts.hidden, opts.dropout
        x_mean, x_scale = np.zeros(in_dim), np.ones(in_dim)
        y_mean, y_scale = train.y.mean(axis=0), train.y.std(axis=0)
    model = FinetuneModel(encoder, opts.layer, pooling, opts.direction, head.to(device), x_mean, x_scale,
                          unfrozen, opts.batchnorm).to(device)
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if unfrozen and opts.batchnorm == "eval" and norms and dist.main and all(
            m.num_batches_tracked is not None and int(m.num_batches_tracked) == 0 for m in norms):
        status("note: this encoder's BatchNorm running statistics were never trained (a random init?); "
               "--batchnorm eval keeps them as they are, --batchnorm train would normalise with batch statistics")
    if state is None and init is None:
        if dist.main:
            status(f"standardisation: pooled {opts.layer}/{opts.pool} of the initial encoder over "
                   f"{train.n} train spectra")
        mean, std = feature_moments(model, train, ctx)
        scale = _floor_scale(std, mean, opts, dist) if unfrozen else std
        scale = np.where(scale > 0, scale, 1.0)
        model.x_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        model.x_scale.copy_(torch.from_numpy(scale.astype(np.float32)))
    elif state is None and init is not None and unfrozen:
        old = model.x_scale.double().cpu().numpy()
        new = _floor_scale(old, model.x_mean.double().cpu().numpy(), opts, dist)
        rescale_first_layer(model.head, old, new)
        model.x_scale.copy_(torch.from_numpy(new.astype(np.float32)))
    if state is not None:
        y_mean, y_scale = state["y_mean"].numpy(), state["y_scale"].numpy()
    y_mean, y_scale = np.asarray(y_mean, dtype=np.float64), np.asarray(y_scale, dtype=np.float64)

    if dist.main:
        opts.out.mkdir(parents=True, exist_ok=True)
        if state is None:
            (opts.out / "last.pt").unlink(missing_ok=True)  # --overwrite: never resume into a stale run
        np.save(opts.out / "mask.npy", mask)
    outcome = _train(model, ctx, train, splits.get(opts.val_split or ""), y_mean, y_scale, state, settings)

    # final numbers with the best weights, on every role's split
    roles = [("train", opts.train_split), ("val", opts.val_split), ("test", opts.test_split)]
    outputs = {role: (name, *predict_split(model, splits[name], ctx, y_mean, y_scale))
               for role, name in roles if name is not None}
    weights = state_dict_digest(model.state_dict())
    if opts.check_sync:
        _debug_line(f"featcache finetune: rank {dist.rank}/{dist.world} final weights sha256 {weights}")
    seconds = time.perf_counter() - started
    fit_result = None
    if dist.main:
        fit_result = _write_outputs(opts, model, source_sha, outputs, splits, outcome, seconds, in_dim,
                                    (head_name, hidden, dropout), y_mean, y_scale, mask, dist)
    return FinetuneResult(opts.out, fit_result, outcome.history, outcome.best_epoch, outcome.stopped, seconds,
                          unfrozen, dist.world, dist.rank, weights)


def _floor_scale(scale: np.ndarray, mean: np.ndarray, opts: FinetuneOptions, dist: Dist) -> np.ndarray:
    floored = floored_scale(scale, opts.scale_floor, mean)
    raised = int(np.count_nonzero(floored > scale))
    if raised and dist.main:
        status(f"standardisation: {raised} of {scale.size} near-constant feature columns get the scale floor "
               f"(--scale-floor {opts.scale_floor:g}) while the encoder trains")
    return floored


def _head_shape(head: nn.Module, opts: FinetuneOptions) -> tuple[int, float]:
    """hidden width and dropout of a loaded head (for head.pt), falling back to the options."""
    hidden = next((m.out_features for m in head.modules() if isinstance(m, nn.Linear)), opts.hidden)
    dropout = next((m.p for m in head.modules() if isinstance(m, nn.Dropout)), opts.dropout)
    return int(hidden), float(dropout)


@dataclass
class TrainOutcome:
    history: list[dict[str, float]]
    best_epoch: int
    best_val_r2: float | None
    stopped: str
    steps: int


def _train(model: FinetuneModel, ctx: RunContext, train: SplitData, val: SplitData | None, y_mean: np.ndarray,
           y_scale: np.ndarray, state: dict[str, Any] | None, settings: dict[str, Any]) -> TrainOutcome:
    """The epoch loop (fit's recipe: AdamW, plateau schedule on val loss, early stopping on val R2, clipping);
    leaves the best weights in `model`."""
    opts, dist, device = ctx.opts, ctx.dist, ctx.device
    recipe = opts.recipe
    net: nn.Module = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model.parameter_groups(recipe.lr, opts.encoder_lr), recipe.lr, recipe.weight_decay, device)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=recipe.plateau_factor,
                                                       patience=recipe.plateau_patience)
    params = [p for group in opt.param_groups for p in group["params"]]
    clip = recipe.grad_clip if recipe.grad_clip else None
    y_std = ((train.y - y_mean) / y_scale).astype(np.float32)
    history: list[dict[str, float]] = []
    best_epoch, best_r2, best_state, bad_epochs, epochs_done, global_step = 0, -math.inf, None, 0, 0, 0
    early_stopped, seconds_before = False, 0.0
    rng: list[dict[str, torch.Tensor]] | None = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = [dict(h) for h in state["history"]]
        best_epoch, best_r2, bad_epochs = int(state["best_epoch"]), float(state["best_r2"]), int(state["bad_epochs"])
        best_state = {k: v.to(device) for k, v in state["best_model"].items()} if state["best_model"] else None
        epochs_done, global_step = int(state["epoch"]), int(state["global_step"])
        early_stopped, seconds_before = bool(state["early_stopped"]), float(state["seconds"])
        rng = state["rng"] if len(state["rng"]) == dist.world else None
        if dist.main:
            status(f"resuming {opts.out / 'last.pt'} after epoch {epochs_done}"
                   + ("" if rng is not None else f" (saved with {len(state['rng'])} processes: RNG reseeded)"))
    has_val = val is not None
    steps = steps_per_epoch(train.n, dist.world, recipe.batch_size)
    loss_fn = nn.MSELoss()
    started = time.perf_counter()
    fork_devices = [device] if device.type == "cuda" else []
    stopped = "max-epochs"
    if early_stopped or epochs_done >= recipe.max_epochs:
        stopped = "already-done"

    def save() -> None:
        rng_all = dist.gather(_rng_state(device))
        if not dist.main:
            return
        payload = {"format": CHECKPOINT_FORMAT, "kind": "finetune", "version": __version__,
                   "epoch": epochs_done, "global_step": global_step, "early_stopped": early_stopped,
                   "model": _cpu_state(model),
                   "best_model": {k: v.detach().cpu() for k, v in best_state.items()} if best_state else None,
                   "best_epoch": best_epoch, "best_r2": float(best_r2), "bad_epochs": bad_epochs,
                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_all,
                   "history": history, "mask": torch.from_numpy(ctx.mask.copy()),
                   "y_mean": torch.from_numpy(y_mean.copy()), "y_scale": torch.from_numpy(y_scale.copy()),
                   "settings": settings, "world_size": dist.world,
                   "seconds": seconds_before + time.perf_counter() - started}
        tmp = opts.out / "last.pt.tmp"
        torch.save(payload, tmp)
        os.replace(tmp, opts.out / "last.pt")

    show = opts.progress and dist.main
    first_step = global_step
    with torch.random.fork_rng(devices=fork_devices):
        if rng is not None:
            _set_rng_state(rng[dist.rank], device)
        else:
            torch.manual_seed(recipe.seed + RANK_SEED_STRIDE * dist.rank + 7919 * epochs_done)
        epoch_bar = progress(total=recipe.max_epochs, initial=min(epochs_done, recipe.max_epochs),
                             desc="finetune", unit="epoch") if show else None
        try:
            for epoch in range(epochs_done + 1, recipe.max_epochs + 1):
                if early_stopped:
                    break
                t0 = time.perf_counter()
                lr = float(opt.param_groups[0]["lr"])
                encoder_lr = float(opt.param_groups[1]["lr"]) if len(opt.param_groups) > 1 else math.nan
                model.train()
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                count = 0
                bar = progress(total=steps, desc=f"epoch {epoch}/{recipe.max_epochs}", unit="step") if show else None
                for xb, yb in train_batches(train, ctx, epoch, y_std):
                    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                    loss = loss_fn(net(xb), yb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip is not None:
                        clip_grad_norm([p.grad for p in params if p.grad is not None], clip)
                    opt.step()
                    global_step += 1
                    loss_sum += loss.detach().double() * xb.shape[0]
                    count += xb.shape[0]
                    if opts.check_sync and dist.world > 1:
                        digests = dist.gather(params_digest(model))
                        if len(set(digests)) != 1:
                            raise FeatcacheError(f"--check-sync: ranks hold different weights after step "
                                                 f"{global_step} (epoch {epoch})")
                    if bar is not None:
                        bar.update(1)
                        if global_step % 10 == 0:
                            bar.set_postfix(loss=f"{loss_sum.item() / count:.4f}", refresh=False)
                if bar is not None:
                    bar.close()
                dist.sync_buffers(model)
                totals = dist.all_sum(torch.tensor([loss_sum.item(), float(count)], dtype=torch.float64))
                train_loss = float(totals[0] / totals[1])
                train_seconds = time.perf_counter() - t0
                if has_val:
                    assert val is not None
                    val_loss, val_r2 = validation_scores(model, val, ctx, y_mean, y_scale)
                else:
                    val_loss, val_r2 = math.nan, math.nan
                if not math.isfinite(train_loss):
                    raise FeatcacheError(f"the train loss became {train_loss} at epoch {epoch}; lower --lr / "
                                         "--encoder-lr or check the data")
                sched.step(val_loss if has_val else train_loss)
                row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_r2": val_r2, "lr": lr,
                       "encoder_lr": encoder_lr, "seconds": time.perf_counter() - t0,
                       "train_seconds": train_seconds, "spectra_per_s": float(totals[1]) / max(train_seconds, 1e-9)}
                history.append(row)
                if not has_val:
                    best_epoch = epoch
                elif val_r2 > best_r2:
                    best_r2, best_epoch, bad_epochs = val_r2, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad_epochs += 1
                    if bad_epochs >= recipe.patience:
                        early_stopped = True
                        stopped = "early-stop"
                epochs_done = epoch
                save()
                if epoch_bar is not None:
                    epoch_bar.set_postfix(loss=f"{train_loss:.4f}", val_r2=f"{val_r2:.4f}", refresh=False)
                    epoch_bar.update(1)
                if dist.main:
                    status(_epoch_line(row, recipe.max_epochs))
        finally:
            if epoch_bar is not None:
                epoch_bar.close()
    if opts.check_sync and dist.world > 1 and dist.main:
        _debug_line(f"featcache finetune: --check-sync: weights identical on all {dist.world} ranks after each "
                    f"of {global_step - first_step} steps")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainOutcome(history, best_epoch, best_r2 if has_val and best_state is not None else None, stopped,
                        global_step)


def _debug_line(text: str) -> None:
    """One write per line (ranks share stderr under torchrun), shown even with --quiet."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    text = f"epoch {int(row['epoch'])}/{epochs}: train loss {row['train_loss']:.4f}"
    if math.isfinite(row["val_loss"]):
        text += f", val loss {row['val_loss']:.4f}, val R2 {row['val_r2']:.4f}"
    return text + (f", lr {row['lr']:.3g}, {row['seconds']:.1f} s "
                   f"({row['spectra_per_s']:.0f} train spectra/s)")


def _write_outputs(opts: FinetuneOptions, model: FinetuneModel, source_sha: str,
                   outputs: dict[str, tuple[str, np.ndarray, np.ndarray]], splits: dict[str, SplitData],
                   outcome: TrainOutcome, seconds: float, in_dim: int, head: tuple[str, int, float],
                   y_mean: np.ndarray, y_scale: np.ndarray, mask: np.ndarray, dist: Dist) -> FitResult:
    """fit's run directory (via fit.save_run) plus encoder.ckpt, mask.npy and the finetune facts."""
    out = opts.out
    head_name, hidden, dropout = head
    history, best_epoch, n_kept = outcome.history, outcome.best_epoch, int(mask.sum())
    metrics: dict[str, Any] = {"splits": {}}
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for role, (name, rows, pred) in outputs.items():
        split = splits[name]
        y = split.y[rows - split.start]
        entry: dict[str, Any] = {"split": name, "role": role, "n": int(len(rows)), "n_spectra": split.n,
                                 "targets": {}}
        for j, target in enumerate(opts.targets):
            m = regression_metrics(y[:, j], pred[:, j])
            if role == "test":
                m["r2_ci95"] = list(bootstrap_r2_ci(y[:, j], pred[:, j], n_boot=opts.n_boot, seed=0))
            entry["targets"][target] = m
        metrics["splits"][name] = entry
        if role != "train":
            predictions[role] = {"split": np.array(name), "index": rows, "true": y, "pred": pred}

    encoder_path = out / "encoder.ckpt"
    spec_mask = parse_mask_spec(opts.mask)
    config_extra = {
        "mask": {"mask_ratio": spec_mask.ratio} if spec_mask.kind == "quantile" else {},
        "noise": {"noise_level": opts.noise_level},
        "featcache": {"kind": "finetune", "source_ckpt": str(opts.ckpt), "source_sha256": source_sha,
                      "layer": opts.layer, "unfreeze": describe_unfreeze(model.unfrozen), "best_epoch": best_epoch,
                      "mask_file": "mask.npy", "mask": opts.mask, "n_kept": n_kept}}
    save_checkpoint(model.encoder, encoder_path, epoch=best_epoch, global_step=outcome.steps,
                    config_extra=config_extra)
    encoder_sha = state_dict_digest(model.encoder.state_dict())

    predictor = TrainResult(model=model.head, best_epoch=best_epoch, best_val_r2=outcome.best_val_r2,
                            history=history, x_mean=model.x_mean.double().cpu().numpy(),
                            x_scale=model.x_scale.double().cpu().numpy(), y_mean=y_mean, y_scale=y_scale,
                            y_1d=False, seconds=seconds, recipe=opts.recipe.to_dict())
    spec = FitSpec(features=[(opts.layer, opts.pool)], targets=list(opts.targets), head=head_name, hidden=hidden,
                   dropout=dropout, recipe=opts.recipe, train_split=opts.train_split, val_split=opts.val_split,
                   test_split=opts.test_split, device=opts.device, n_boot=opts.n_boot)
    result = FitResult(spec, predictor, in_dim, metrics, predictions, [dict(h) for h in history], seconds, "",
                       "", encoder_sha)
    config = opts.config if opts.config is not None else _options_dict(opts)
    # the finetune facts on top of fit's metrics.json (same structure, plus kind and the encoder's part)
    facts = {"kind": "finetune", "cache": None, "cache_fingerprint": None, "stopped": outcome.stopped,
             "encoder_ckpt": str(encoder_path), "source_ckpt": str(opts.ckpt),
             "source_sha256": source_sha, "unfreeze": opts.unfreeze,
             "unfrozen_blocks": [f"encoders.{i}" for i in model.unfrozen], "encoder_lr": opts.encoder_lr,
             "batchnorm": opts.batchnorm if model.unfrozen else "eval",
             "scale_floor": opts.scale_floor if model.unfrozen else 0.0,
             "epochs_run": len(outcome.history),
             "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
             "noise": {"mode": opts.noise, "seed": opts.noise_seed, "level": opts.noise_level,
                       "eval": "draw 0 (the extract noise)"},
             "mask": {"spec": opts.mask, "n_pixels": int(mask.size), "n_kept": n_kept,
                      "file": "mask.npy"},
             "direction": opts.direction, "init_head": str(opts.init_head) if opts.init_head else None,
             "world_size": dist.world, "written_by_rank": dist.rank,
             "data": list(opts.data), "steps": outcome.steps}
    save_run(result, out, config=config, command=opts.command, extra=facts)
    return result


def _options_dict(opts: FinetuneOptions) -> dict[str, Any]:
    """The options as plain data for config.yaml when called from Python."""
    out: dict[str, Any] = {}
    for f in fields(opts):
        value = getattr(opts, f.name)
        if f.name in ("config", "progress"):
            continue
        if isinstance(value, TrainRecipe):
            value = value.to_dict()
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


# -- benchmark -----------------------------------------------------------------------------------------------
def benchmark_epoch(ckpt: str | Path, data: list[str], out_dir: str | Path, *, target: str = "log_g",
                    layer: str = "enc_pre_latent", pool: str = "seg_mean_K8", head: str = "mlp_1",
                    modes: tuple[str, ...] = ("none", "all"), batch_size: int = 64, epochs: int = 2,
                    mask: str = "quantile:0.85", device: str = "cpu") -> list[dict[str, Any]]:
    """Seconds per training epoch (reading, noise, forward, backward, step; validation excluded) and
    train spectra/s for each --unfreeze mode, on `data` (train= and optionally val=). The first epoch
    is reported apart (warm-up); the rest are averaged."""
    rows = []
    for mode in modes:
        names = [d.split("=", 1)[0] for d in data]
        opts = FinetuneOptions(ckpt=Path(ckpt), data=list(data), targets=[target], out=Path(out_dir) / mode,
                               layer=layer, pool=pool, head=head, unfreeze=mode, mask=mask, device=device,
                               recipe=TrainRecipe(max_epochs=epochs, batch_size=batch_size, patience=epochs + 1),
                               val_split="val" if "val" in names else None, test_split=None, progress=False,
                               overwrite=True)
        result = finetune(opts)
        steady = result.history[1:] or result.history
        seconds = float(np.mean([h["train_seconds"] for h in steady]))
        n_train = result.metrics["splits"][opts.train_split]["n"] if result.metrics else 0
        rows.append({"unfreeze": mode, "n_train": n_train, "batch_size": batch_size,
                     "first_epoch_s": result.history[0]["train_seconds"], "seconds_per_epoch": seconds,
                     "spectra_per_s": n_train / seconds if seconds > 0 else math.nan,
                     "trainable_blocks": len(result.unfreeze), "threads": torch.get_num_threads()})
    return rows
