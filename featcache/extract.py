"""`featcache extract`: one encoder pass over every spectrum into a fingerprinted, resumable feature cache.

The plan (encoder, data, mask, noise, layers x poolings) is built and validated before any work starts.
Work is split into row blocks aligned with the Zarr chunks; a background thread reads HDF5 and draws the
noise ahead of the encoder, another writes finished blocks, and a block is marked done only after every
array of it is written -- so a run killed at any moment resumes to a bitwise-identical result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .cache import (
    FORMAT_VERSION,
    META_KEY,
    CacheLock,
    FeatureCache,
    feature_path,
    map_path,
    marker_path,
    open_root,
    quiet_zarr_warnings,
)
from .checkpoint import LoadedEncoder, load_encoder, random_encoder
from .data import PfsDataset, SplitSpec, file_identity, parse_split_specs
from .encoder import DIRECTIONS, EncoderConfig
from .errors import FeatcacheError, choices_message
from .mask import MaskSpec, load_mask_file, parse_mask_spec, quantile_mask
from .noise import add_noise
from .pooling import get_pooling, parse_poolings
from .progress import progress, status

# Bump when a change to the encoder or pooling code changes the numbers it computes.
ENCODER_CODE_VERSION = 1
PSEUDO_LAYERS = ("input_flux", "input_error")
STORE_DTYPES = ("float32", "float16")
COMPUTE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_MAP_SIZE = 4096


@dataclass
class ExtractOptions:
    """Everything `featcache extract` takes (the CLI options, by name)."""

    data: list[str]
    out: Path
    ckpt: Path | None = None
    layers: list[str] = field(default_factory=lambda: ["enc_pre_latent", "enc_last"])
    pools: list[str] = field(default_factory=lambda: ["global_mean", "mean_max", "seg_mean_K8"])
    mask: str = "quantile:0.85"
    noise: str = "generated"
    noise_level: float = 1.0
    noise_seed: int = 42
    noise_draws: list[str] = field(default_factory=list)
    direction: str = "forward"
    dilation: int | None = None
    batch_size: int = 256
    block_rows: int = 1024
    device: str = "auto"
    dtype: str = "float32"
    store_dtype: str = "float32"
    keep_maps: bool = False
    random_init: bool = False
    init_seed: int = 0
    arch: str | None = None
    hash: str = "sampled"
    overwrite: bool = False
    shard: tuple[int, int] | None = None
    prepare_only: bool = False
    wait_seconds: float = 3600.0
    command: str = "featcache extract"


@dataclass
class LayerPlan:
    name: str
    channels: int
    length: int
    pseudo: bool


@dataclass
class SplitPlan:
    spec: SplitSpec
    start: int
    stop: int
    draws: int
    labels: list[str]
    identity: dict[str, Any]

    @property
    def n_source(self) -> int:
        return self.stop - self.start

    @property
    def n_rows(self) -> int:
        return self.n_source * self.draws


@dataclass
class ArraySpec:
    """One output array of a generation."""

    split: str
    kind: str  # 'features' | 'maps'
    layer: str
    pool: str | None
    shape: tuple[int, ...]
    attrs: dict[str, Any]

    @property
    def path(self) -> str:
        return feature_path(self.split, self.layer, self.pool or "") if self.kind == "features" \
            else map_path(self.split, self.layer)

    def as_meta(self) -> dict[str, Any]:
        return {"path": self.path, "split": self.split, "kind": self.kind, "layer": self.layer, "pool": self.pool,
                "definition": self.attrs.get("definition")}


@dataclass
class ExtractPlan:
    options: ExtractOptions
    encoder: LoadedEncoder
    splits: list[SplitPlan]
    mask: np.ndarray
    mask_spec: MaskSpec
    wave: np.ndarray
    layers: list[LayerPlan]
    pools: list[str]
    arrays: list[ArraySpec]
    parts: dict[str, Any]
    fingerprint: str
    device: torch.device


@dataclass
class ExtractReport:
    path: Path
    fingerprint: str
    rows_done: int
    seconds: float
    up_to_date: bool
    arrays_added: list[str]
    complete: bool
    compute_seconds: float = 0.0  # the block pipeline alone (read, noise, encoder, pooling, write)

    @property
    def spectra_per_second(self) -> float:
        return self.rows_done / self.seconds if self.seconds > 0 else 0.0


# -- planning ---------------------------------------------------------------------------------------------
def resolve_device(device: str) -> torch.device:
    """auto -> cuda if available else cpu; cuda[:i] must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise FeatcacheError(f"--device {device}: expected auto, cpu or cuda[:i]")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatcacheError(f"--device {device}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}); use --device cpu")
    return torch.device(device)


def parse_arch(tag: str) -> EncoderConfig:
    """'l9e48k25s1bn1d1' -> EncoderConfig (the original naming scheme)."""
    match = re.fullmatch(r"l(\d+)e(\d+)k(\d+)s([01])bn([01])d(\d+)", tag)
    if not match:
        raise FeatcacheError(f"--arch {tag}: expected the original naming scheme, e.g. l9e48k25s1bn1d1")
    n, e, k, s, bn, d = match.groups()
    return EncoderConfig(num_layers=int(n), embed_dim=int(e), kernel_size=int(k), input_sigma=s == "1",
                         use_bn=bn == "1", dilation=int(d))


def parse_draws(values: list[str], split_names: list[str]) -> dict[str, int]:
    """--noise-draws K (every split) or NAME=K (one split)."""
    draws = dict.fromkeys(split_names, 1)
    for value in values:
        for part in str(value).split(","):
            name, _, count = part.strip().rpartition("=")
            if not count.isdigit() or int(count) < 1:
                raise FeatcacheError(f"--noise-draws {value}: expected a positive count K or NAME=K")
            if name and name not in draws:
                raise FeatcacheError(f"--noise-draws {value}: " + choices_message("split", name, split_names))
            for target in [name] if name else split_names:
                draws[target] = int(count)
    return draws


def _load_encoder(opts: ExtractOptions, device: torch.device) -> LoadedEncoder:
    if opts.random_init:
        if opts.arch:
            config = parse_arch(opts.arch)
        elif opts.ckpt:
            config = load_encoder(opts.ckpt, dilation=opts.dilation).config
        else:
            raise FeatcacheError("--random-init needs the architecture: give --ckpt (its shape is used) or --arch")
        if opts.dilation is not None:
            config = EncoderConfig(**{**config.as_dict(), "dilation": opts.dilation})
        return random_encoder(config, seed=opts.init_seed, device=device)
    if opts.ckpt is None:
        raise FeatcacheError("--ckpt is required (or --random-init with --arch)")
    return load_encoder(opts.ckpt, dilation=opts.dilation, device=device)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def build_plan(opts: ExtractOptions) -> ExtractPlan:
    """Validate every option and input before any work starts."""
    if opts.direction not in DIRECTIONS:
        raise FeatcacheError("--direction: " + choices_message("direction", opts.direction, DIRECTIONS))
    if opts.store_dtype not in STORE_DTYPES:
        raise FeatcacheError("--store-dtype: " + choices_message("dtype", opts.store_dtype, STORE_DTYPES))
    if opts.dtype not in COMPUTE_DTYPES:
        raise FeatcacheError("--dtype: " + choices_message("dtype", opts.dtype, list(COMPUTE_DTYPES)))
    if opts.noise not in ("generated", "stored"):
        raise FeatcacheError(f"--noise {opts.noise}: expected generated or stored")
    if opts.batch_size < 1 or opts.block_rows < 1:
        raise FeatcacheError("--batch-size and --block-rows must be positive")
    if opts.hash not in ("sampled", "full"):
        raise FeatcacheError(f"--hash {opts.hash}: expected sampled or full")
    layers_requested = list(dict.fromkeys(opts.layers))
    if not layers_requested:
        raise FeatcacheError("--layer: give at least one layer")
    pools = parse_poolings(opts.pools)
    if not pools:
        raise FeatcacheError("--pool: give at least one pooling")
    specs = parse_split_specs(opts.data)
    draws = parse_draws(opts.noise_draws, [s.name for s in specs])
    if opts.noise == "stored" and any(d > 1 for d in draws.values()):
        raise FeatcacheError("--noise-draws > 1 needs --noise generated (a stored noisy array is one draw)")
    device = resolve_device(opts.device)
    encoder = _load_encoder(opts, device)
    model = encoder.model
    for name in layers_requested:
        if name not in PSEUDO_LAYERS and name not in model.tap_names:
            raise FeatcacheError("--layer: " + choices_message("layer", name, [*model.tap_names, *PSEUDO_LAYERS]))

    # data
    splits: list[SplitPlan] = []
    wave: np.ndarray | None = None
    first_ds: tuple[PfsDataset, int, int] | None = None
    opened: list[PfsDataset] = []
    try:
        for spec in specs:
            ds = PfsDataset(spec.path)
            opened.append(ds)
            start, stop = spec.resolve(ds.n_rows)
            if wave is None:
                wave = ds.wave
                first_ds = (ds, start, stop)
            elif ds.wave.shape != wave.shape or not np.allclose(ds.wave, wave, rtol=0, atol=1e-6):
                raise FeatcacheError(f"{spec.path}: wavelength grid differs from {specs[0].path} (P={ds.n_pixels} "
                                     f"vs {wave.shape[0]}); every split must share one grid")
            if opts.noise == "stored" and not ds.has_noisy:
                raise FeatcacheError(f"{spec.path}: --noise stored but the file has no 'noisy' array "
                                     "(dataset/arrays/noisy/value); use --noise generated")
            labels = ds.label_names() if ds.params_key else []
            splits.append(SplitPlan(spec, start, stop, draws[spec.name], labels, {}))
        assert wave is not None and first_ds is not None
        n_pixels = wave.shape[0]
        mask_spec = parse_mask_spec(opts.mask)
        if mask_spec.kind == "file":
            assert mask_spec.path is not None
            mask = load_mask_file(mask_spec.path, n_pixels)
        elif mask_spec.kind == "quantile":
            ds, start, stop = first_ds
            status(f"mask: quantile {mask_spec.ratio:g} of the median error over {stop - start} spectra of "
                   f"split '{specs[0].name}'")
            mask = quantile_mask(lambda s, e: ds.read_error(start + s, start + e), stop - start, n_pixels,
                                 float(mask_spec.ratio or 1.0))
        else:
            mask = np.ones(n_pixels, dtype=bool)
        for split in splits:
            split.identity = file_identity(split.spec.path, full=opts.hash == "full")
    finally:
        for ds in opened:
            ds.close()
    n_kept = int(mask.sum())

    # layers and poolings
    layers: list[LayerPlan] = []
    channels = model.config.embed_dim * (2 if opts.direction == "both" else 1)
    for name in layers_requested:
        if name in PSEUDO_LAYERS:
            layers.append(LayerPlan(name, 1, n_kept, True))
            continue
        length = model.tap_length(name, n_kept)
        if length < 1:
            raise FeatcacheError(f"--layer {name}: the mask keeps {n_kept} pixels, too few for this depth")
        layers.append(LayerPlan(name, channels, length, False))
    for layer in layers:
        for pool in pools:
            try:
                get_pooling(pool).width(layer.channels, layer.length)
            except FeatcacheError as exc:
                raise FeatcacheError(f"--pool {pool} on --layer {layer.name}: {exc}") from None

    arrays: list[ArraySpec] = []
    for split in splits:
        for layer in layers:
            for pool in pools:
                pooling = get_pooling(pool)
                width = pooling.width(layer.channels, layer.length)
                arrays.append(ArraySpec(split.spec.name, "features", layer.name, pool, (split.n_rows, width), {
                    "D": width, "C": layer.channels, "L": layer.length, "pooling": pool,
                    "definition": pooling.definition, "layer": layer.name,
                    "direction": "forward" if layer.pseudo else opts.direction}))
            if opts.keep_maps and not layer.pseudo and layer.channels * layer.length <= MAX_MAP_SIZE:
                arrays.append(ArraySpec(split.spec.name, "maps", layer.name, None,
                                        (split.n_rows, layer.channels, layer.length),
                                        {"C": layer.channels, "L": layer.length, "layer": layer.name,
                                         "definition": "the raw (C, L') map"}))

    parts = {
        "encoder": {"weights_sha256": encoder.weights_digest(), "config": encoder.config.as_dict(),
                    "code_version": ENCODER_CODE_VERSION,
                    "random_init_seed": opts.init_seed if opts.random_init else None},
        "data": {s.spec.name: {"identity": s.identity, "start": s.start, "stop": s.stop, "draws": s.draws}
                 for s in splits},
        "mask": {"sha256": hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()[:32], "n_kept": n_kept},
        "noise": {"mode": opts.noise, "seed": opts.noise_seed if opts.noise == "generated" else None,
                  "level": opts.noise_level if opts.noise == "generated" else None},
        "direction": opts.direction,
        "compute_dtype": opts.dtype,
        "store_dtype": opts.store_dtype,
        "block_rows": opts.block_rows,
    }
    return ExtractPlan(opts, encoder, splits, mask, mask_spec, wave[mask], layers, pools, arrays, parts,
                       _digest(parts), device)


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human words for what differs between two fingerprints' parts."""
    changes: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "data" and isinstance(a, dict) and isinstance(b, dict):
            for split in sorted(set(a) | set(b)):
                if split not in a:
                    changes.append(f"split '{split}' is new")
                elif split not in b:
                    changes.append(f"split '{split}' is no longer given")
                elif a[split] != b[split]:
                    what = [k for k in ("identity", "start", "stop", "draws") if a[split].get(k) != b[split].get(k)]
                    words = ", ".join("file content" if w == "identity" else w for w in what)
                    changes.append(f"split '{split}': {words} changed")
        elif key == "encoder" and isinstance(a, dict) and isinstance(b, dict):
            what = [k for k in b if a.get(k) != b.get(k)]
            changes.append("encoder " + ", ".join(what) + " changed")
        elif isinstance(a, dict) and isinstance(b, dict):
            what = [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            changes.append(f"{key}: " + ", ".join(what))
        else:
            changes.append(f"{key}: {a} -> {b}")
    return changes


# -- preparing the store ----------------------------------------------------------------------------------
def _store_dtype(opts: ExtractOptions) -> str:
    return opts.store_dtype


def _create_base(root: Any, plan: ExtractPlan) -> None:
    """mask, wave, and per split index / draw / labels (small arrays, written at once)."""
    opts = plan.options
    root.create_array("mask", data=plan.mask, chunks=plan.mask.shape, overwrite=True)
    root.create_array("wave", data=plan.wave, chunks=plan.wave.shape, overwrite=True)
    for split in plan.splits:
        group = root.require_group(split.spec.name)
        n, draws = split.n_source, split.draws
        rows = max(min(opts.block_rows, split.n_rows), 1)
        index = np.tile(np.arange(split.start, split.stop, dtype=np.int64), draws)
        draw = np.repeat(np.arange(draws, dtype=np.int32), n)
        group.create_array("index", data=index, chunks=(rows,), overwrite=True)
        group.create_array("draw", data=draw, chunks=(rows,), overwrite=True)
        labels = group.require_group("labels")
        if split.labels:
            with PfsDataset(split.spec.path) as ds:
                values = ds.labels(split.labels, split.start, split.stop)
            for name, column in values.items():
                column = np.asarray(column)
                if column.dtype == bool:
                    column = column.astype(np.int8)
                labels.create_array(name, data=np.tile(column, draws), chunks=(rows,), overwrite=True)


def _split_meta(plan: ExtractPlan) -> dict[str, Any]:
    out = {}
    for s in plan.splits:
        out[s.spec.name] = {"path": str(s.spec.path), "start": s.start, "stop": s.stop, "n_source": s.n_source,
                            "draws": s.draws, "n_rows": s.n_rows, "labels": s.labels,
                            "n_blocks": -(-s.n_rows // plan.options.block_rows), "identity": s.identity}
    return out


def _base_meta(plan: ExtractPlan) -> dict[str, Any]:
    opts, enc = plan.options, plan.encoder
    return {
        "format": FORMAT_VERSION, "version": __version__, "fingerprint": plan.fingerprint, "parts": plan.parts,
        "encoder": {**enc.config.as_dict(), "tag": enc.config.tag,
                    "source": str(enc.path) if enc.path else f"random-init (seed {opts.init_seed})",
                    "format": enc.file_format, "dilation_source": enc.dilation_source,
                    "weights_sha256": plan.parts["encoder"]["weights_sha256"]},
        "mask": {"spec": plan.mask_spec.text, "n_pixels": int(plan.mask.size), "n_kept": int(plan.mask.sum()),
                 "computed_from": plan.splits[0].spec.name if plan.mask_spec.kind == "quantile" else None},
        "noise": {"mode": opts.noise, "seed": opts.noise_seed if opts.noise == "generated" else None,
                  "level": opts.noise_level if opts.noise == "generated" else None,
                  "draws": {s.spec.name: s.draws for s in plan.splits},
                  "sigma_channel": "error * noise_level" if opts.noise == "generated" else "error",
                  "generator": "numpy Philox keyed by (seed, source row), counter stream = draw"},
        "direction": opts.direction, "compute_dtype": opts.dtype, "store_dtype": opts.store_dtype,
        "block_rows": opts.block_rows, "splits": _split_meta(plan), "generations": [], "prepared": False,
        "commands": [], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def prepare(plan: ExtractPlan) -> tuple[dict[str, Any], list[str]]:
    """Create or validate the store and add a generation for requested arrays it lacks.

    Returns the metadata and the paths of the arrays added. Only one process (rank 0) calls this.
    """
    opts = plan.options
    out = opts.out
    meta: dict[str, Any] | None = None
    if out.exists():
        if (out / "zarr.json").exists():
            existing = open_root(out, "r").attrs.get(META_KEY)
            if not isinstance(existing, dict):
                raise FeatcacheError(f"--out {out}: a Zarr store that is not a featcache cache; choose another path")
            if existing.get("fingerprint") != plan.fingerprint:
                if not opts.overwrite:
                    changes = describe_changes(existing.get("parts", {}), plan.parts)
                    raise FeatcacheError(f"--out {out}: the cache was made from other inputs ({'; '.join(changes)}); "
                                         "use --overwrite to replace it or choose another --out")
                shutil.rmtree(out)
            else:
                meta = existing
        elif any(out.iterdir()):
            raise FeatcacheError(f"--out {out}: exists and is not a featcache cache; refusing to write into it")
    root = open_root(out, "a")
    if meta is None or not meta.get("prepared"):
        meta = _base_meta(plan)
        root.attrs[META_KEY] = meta
        _create_base(root, plan)
        meta["prepared"] = True
        root.attrs[META_KEY] = meta
    existing_paths = {a["path"]: a for g in meta["generations"] for a in g["arrays"]}
    for spec in plan.arrays:
        old = existing_paths.get(spec.path)
        if old and old.get("definition") != spec.attrs.get("definition"):
            raise FeatcacheError(f"{out}: '{spec.path}' was computed with another definition "
                                 f"({old.get('definition')!r}); use --overwrite")
    new = [spec for spec in plan.arrays if spec.path not in existing_paths]
    added: list[str] = []
    if new:
        gen_id = len(meta["generations"])
        dtype = _store_dtype(opts)
        splits_in_gen = sorted({s.split for s in new}, key=[p.spec.name for p in plan.splits].index)
        for spec in new:
            rows = min(opts.block_rows, spec.shape[0])
            array = root.create_array(spec.path, shape=spec.shape, chunks=(rows, *spec.shape[1:]), dtype=dtype,
                                      fill_value=np.nan, overwrite=True,
                                      dimension_names=["row", *(["feature"] if spec.kind == "features"
                                                                else ["channel", "position"])])
            array.attrs.update({**spec.attrs, "generation": gen_id})
            added.append(spec.path)
        for split in splits_in_gen:
            n_blocks = meta["splits"][split]["n_blocks"]
            root.create_array(marker_path(gen_id, split), shape=(n_blocks,), chunks=(1,), dtype="bool",
                              fill_value=False, overwrite=True)
        meta["generations"].append({"id": gen_id, "arrays": [s.as_meta() for s in new], "splits": splits_in_gen,
                                    "command": opts.command, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    meta["commands"] = [*meta.get("commands", []), opts.command][-20:]
    root.attrs[META_KEY] = meta
    return meta, added


# -- the work ---------------------------------------------------------------------------------------------
@dataclass
class BlockTask:
    split: SplitPlan
    block: int
    row_start: int
    row_stop: int
    arrays: list[ArraySpec]
    generations: list[int]


def pending_tasks(plan: ExtractPlan, meta: dict[str, Any], shard: tuple[int, int] | None = None) -> list[BlockTask]:
    """Blocks not yet done, with the arrays each needs; a shard I/N keeps its contiguous share of all blocks."""
    root = open_root(plan.options.out, "r")
    by_path = {a.path: a for a in plan.arrays}
    tasks: list[BlockTask] = []
    block_rows = plan.options.block_rows
    all_blocks: list[tuple[SplitPlan, int]] = []
    for split in plan.splits:
        n_blocks = meta["splits"][split.spec.name]["n_blocks"]
        all_blocks.extend((split, b) for b in range(n_blocks))
    if shard is not None:
        index, count = shard
        lo, hi = index * len(all_blocks) // count, (index + 1) * len(all_blocks) // count
        all_blocks = all_blocks[lo:hi]
    done_cache: dict[tuple[int, str], np.ndarray] = {}
    for split, block in all_blocks:
        name = split.spec.name
        arrays: list[ArraySpec] = []
        gens: list[int] = []
        for gen in meta["generations"]:
            if name not in gen["splits"]:
                continue
            key = (gen["id"], name)
            if key not in done_cache:
                done_cache[key] = np.asarray(root[marker_path(gen["id"], name)][:], dtype=bool)
            if done_cache[key][block]:
                continue
            gens.append(gen["id"])
            for item in gen["arrays"]:
                if item["split"] != name:
                    continue
                if item["path"] not in by_path:
                    raise FeatcacheError(f"{plan.options.out}: an earlier unfinished run also asked for "
                                         f"'{item['path']}'; re-run that command (see featcache inspect) or "
                                         "include that layer and pooling")
                arrays.append(by_path[item["path"]])
        if gens:
            start = block * block_rows
            tasks.append(BlockTask(split, block, start, min(start + block_rows, split.n_rows), arrays, gens))
    return tasks


def read_block_inputs(plan: ExtractPlan, ds: PfsDataset, task: BlockTask) -> tuple[np.ndarray, np.ndarray]:
    """Masked noisy flux and sigma (rows, P_kept) for the block's output rows (draw-major)."""
    opts, split = plan.options, task.split
    noisy_parts, sigma_parts = [], []
    r = task.row_start
    while r < task.row_stop:
        draw, offset = divmod(r, split.n_source)
        take = min(task.row_stop - r, split.n_source - offset)
        src0 = split.start + offset
        error = ds.read_error(src0, src0 + take)
        if opts.noise == "stored":
            noisy, sigma = ds.read_noisy(src0, src0 + take), error
        else:
            flux = ds.read_flux(src0, src0 + take)
            noisy, sigma = add_noise(flux, error, np.arange(src0, src0 + take), seed=opts.noise_seed,
                                     noise_level=opts.noise_level, stream=draw)
        noisy_parts.append(noisy[:, plan.mask])
        sigma_parts.append(sigma[:, plan.mask])
        r += take
    return np.concatenate(noisy_parts), np.concatenate(sigma_parts)


def _background(produce: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run a generator in a thread, `depth` items ahead; exceptions re-raise in the consumer."""
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    sentinel = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in produce:
                if stop.is_set():
                    return
                items.put(("item", item))
            items.put(("end", sentinel))
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer
            items.put(("error", exc))

    thread = threading.Thread(target=worker, daemon=True, name="featcache-reader")
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue so it can see `stop`
            with contextlib.suppress(queue.Empty):
                items.get(timeout=0.1)


class BlockWriter:
    """Writes finished blocks in a thread; marks a block done only after all its arrays are written."""

    def __init__(self, root: Any, depth: int = 2):
        self.root = root
        self.jobs: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="featcache-writer")
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue
            try:
                task, outputs = job
                for path, values in outputs.items():
                    self.root[path][task.row_start:task.row_stop] = values
                for gen in task.generations:
                    self.root[marker_path(gen, task.split.spec.name)][task.block] = True
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the main thread
                self.error = exc

    def submit(self, task: BlockTask, outputs: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put((task, outputs))

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def compute_block(plan: ExtractPlan, task: BlockTask, noisy: np.ndarray, sigma: np.ndarray) -> dict[str, np.ndarray]:
    """Every requested array of one block: one encoder forward per batch for all taps and poolings."""
    opts = plan.options
    model = plan.encoder.model
    store = np.float16 if opts.store_dtype == "float16" else np.float32
    taps = sorted({a.layer for a in task.arrays if a.layer not in PSEUDO_LAYERS})
    n = noisy.shape[0]
    outputs = {a.path: np.empty(a.shape[:0] + (n, *a.shape[1:]), dtype=store) for a in task.arrays}
    autocast = COMPUTE_DTYPES[opts.dtype]
    pools = {a.pool: get_pooling(a.pool) for a in task.arrays if a.pool}
    with torch.inference_mode():
        for b0 in range(0, n, opts.batch_size):
            b1 = min(b0 + opts.batch_size, n)
            maps: dict[str, torch.Tensor] = {}
            if taps:
                channels = [noisy[b0:b1], sigma[b0:b1]] if model.config.input_sigma else [noisy[b0:b1]]
                x = torch.from_numpy(np.stack(channels, axis=1))
                if plan.device.type == "cuda":  # pinned host memory makes the copy asynchronous
                    x = x.pin_memory()
                x = x.to(plan.device, non_blocking=True)
                if autocast is not None:
                    with torch.autocast(device_type=plan.device.type, dtype=autocast):
                        maps.update(model.encode(x, taps, opts.direction))
                else:
                    maps.update(model.encode(x, taps, opts.direction))
            for pseudo, source in (("input_flux", noisy), ("input_error", sigma)):
                if any(a.layer == pseudo for a in task.arrays):
                    maps[pseudo] = torch.from_numpy(source[b0:b1, None, :])
            for array in task.arrays:
                h = maps[array.layer].float()
                values = pools[array.pool](h) if array.kind == "features" else h
                outputs[array.path][b0:b1] = values.cpu().numpy()
    return outputs


def execute(plan: ExtractPlan, tasks: list[BlockTask], on_block: Callable[[BlockTask], None] | None = None) -> int:
    """Run the pending blocks: reader thread -> encoder -> writer thread. Returns rows computed."""
    if not tasks:
        return 0
    root = open_root(plan.options.out, "r+")
    datasets: dict[str, PfsDataset] = {}

    def produce() -> Iterator[tuple[BlockTask, np.ndarray, np.ndarray]]:
        for task in tasks:
            key = str(task.split.spec.path)
            if key not in datasets:
                datasets[key] = PfsDataset(task.split.spec.path)
            noisy, sigma = read_block_inputs(plan, datasets[key], task)
            yield task, noisy, sigma

    total = sum(t.row_stop - t.row_start for t in tasks)
    writer = BlockWriter(root)
    rows_done = 0
    try:
        with progress(total=total, desc="extract", unit="spectra") as bar:
            for task, noisy, sigma in _background(produce(), depth=2):
                outputs = compute_block(plan, task, noisy, sigma)
                writer.submit(task, outputs)
                rows_done += task.row_stop - task.row_start
                bar.update(task.row_stop - task.row_start)
                if on_block is not None:
                    on_block(task)
    finally:
        writer.close()
        for ds in datasets.values():
            ds.close()
    return rows_done


def consolidate(path: Path) -> None:
    import zarr

    with quiet_zarr_warnings():
        zarr.consolidate_metadata(str(path))


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


def local_rank() -> tuple[int, int]:
    """(local rank, processes on this node) under torchrun or srun, else (0, 1)."""
    env = os.environ
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"]), int(env.get("LOCAL_WORLD_SIZE", "1"))
    if "SLURM_LOCALID" in env and "SLURM_STEP_ID" in env:
        return int(env["SLURM_LOCALID"]), int(env.get("SLURM_NTASKS_PER_NODE", env.get("SLURM_NTASKS", "1"))
                                                .split("(")[0])
    return 0, 1


def configure_threads(device: torch.device) -> None:
    """Give the encoder this process's share of the cores (torchrun does not bind processes to cores)."""
    if device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _, per_node = local_rank()
        if "LOCAL_RANK" in os.environ:  # Slurm binds each task to its own cores; torchrun does not
            cores = max(1, cores // max(per_node, 1))
        torch.set_num_threads(max(1, cores))


def wait_until_prepared(plan: ExtractPlan, shard: tuple[int, int]) -> dict[str, Any]:
    """Ranks other than 0 wait for rank 0 (or `extract --prepare`) to create every array."""
    out = plan.options.out
    wanted = {a.path for a in plan.arrays}
    deadline = time.monotonic() + plan.options.wait_seconds
    announced = False
    last_seen = None
    while True:
        if (out / "zarr.json").exists():
            meta = open_root(out, "r").attrs.get(META_KEY)
            if isinstance(meta, dict):
                last_seen = meta.get("fingerprint")
                have = {a["path"] for g in meta.get("generations", []) for a in g["arrays"]}
                if last_seen == plan.fingerprint and meta.get("prepared") and wanted <= have:
                    return meta
        if time.monotonic() > deadline:
            why = "a cache made from other inputs" if last_seen else "no cache"
            raise FeatcacheError(f"shard {shard[0]}/{shard[1]}: waited {plan.options.wait_seconds:.0f} s for {out} "
                                 f"to be prepared but found {why}; run `featcache extract ... --prepare` (or "
                                 "shard 0) with the same options first")
        if not announced:
            status(f"shard {shard[0]}/{shard[1]}: waiting for shard 0 (or --prepare) to create {out}")
            announced = True
        time.sleep(0.5)


def _finish(plan: ExtractPlan, rows: int, added: list[str]) -> bool:
    """Consolidate metadata once the cache is complete (one rank does it; others skip)."""
    complete = FeatureCache(plan.options.out).is_complete()
    if complete and (rows or added):
        try:
            with CacheLock(plan.options.out, "consolidate.lock").acquire("consolidating metadata"):
                consolidate(plan.options.out)
        except FeatcacheError:
            pass  # another rank is consolidating the same metadata
    return complete


def run_extract(opts: ExtractOptions) -> ExtractReport:
    """Plan, prepare, compute what is missing, consolidate. Safe to re-run; resumes after a kill.

    Sharded (--shard I/N, torchrun or srun): rank 0 prepares the store, every rank computes its own
    contiguous, chunk-aligned share of the blocks, and the last to finish consolidates the metadata.
    """
    shard, shard_source = detect_shard(opts.shard)
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise FeatcacheError(f"shard {shard[0]}/{shard[1]} from {shard_source}: expected 0 <= I < N")
    if opts.device == "auto" and shard is not None and torch.cuda.is_available():
        opts.device = f"cuda:{local_rank()[0] % torch.cuda.device_count()}"
    plan = build_plan(opts)
    configure_threads(plan.device)
    started = time.perf_counter()
    if opts.prepare_only or shard is None:
        with CacheLock(opts.out).acquire(opts.command):
            meta, added = prepare(plan)
            if opts.prepare_only:
                return ExtractReport(opts.out, plan.fingerprint, 0, time.perf_counter() - started, False, added,
                                     FeatureCache(opts.out).is_complete())
            tasks = pending_tasks(plan, meta)
            compute_start = time.perf_counter()
            rows = execute(plan, tasks)
            compute = time.perf_counter() - compute_start
            complete = _finish(plan, rows, added)
        return ExtractReport(opts.out, plan.fingerprint, rows, time.perf_counter() - started, not tasks, added,
                             complete, compute)
    added = []
    if shard[0] == 0:
        with CacheLock(opts.out).acquire(f"{opts.command} [preparing for {shard[1]} shards]"):
            meta, added = prepare(plan)
    else:
        meta = wait_until_prepared(plan, shard)
    status(f"shard {shard[0]}/{shard[1]} (from {shard_source}) on {plan.device}")
    with CacheLock(opts.out).acquire(opts.command, shared=True), \
            CacheLock(opts.out, f"shard-{shard[0]}-of-{shard[1]}.lock").acquire(opts.command):
        tasks = pending_tasks(plan, meta, shard)
        compute_start = time.perf_counter()
        rows = execute(plan, tasks)
        compute = time.perf_counter() - compute_start
    complete = _finish(plan, rows, added)
    return ExtractReport(opts.out, plan.fingerprint, rows, time.perf_counter() - started, not tasks, added, complete,
                         compute)
