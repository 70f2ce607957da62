"""The extraction plan: every option and input validated, and the fingerprint computed, before any work.

A plan is what a run will compute: the encoder (loaded or random-init), the splits (file rows x noise draws),
the mask, the layers x poolings and the arrays they fill. Building one opens every input, so a mistake is
reported (one line, naming the option or file) before a cache is created or touched.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..cache.fingerprint import digest, feature_parts
from ..cache.layout import ArraySpec
from ..cache.writer import SplitLayout, StoreSpec
from ..common.constraints import validate
from ..common.device import resolve_device
from ..common.errors import FeatcacheError, choices_message
from ..common.overlap import SplitRows, check_rows_disjoint
from ..common.progress import status
from ..model.checkpoint import LoadedEncoder, load_encoder, random_encoder
from ..model.encoder import CODE_VERSION, EncoderConfig
from ..model.lean import LeanEncoder, conv_plan
from ..model.pooling import get_pooling, parse_poolings, pooled_width
from ..model.taps import PSEUDO_LAYERS, expand_layers, tap_shape
from ..spectra.inputs import NoiseSpec
from ..spectra.mask import MaskSpec, make_mask, parse_mask_spec
from ..spectra.pfsspec import PfsDataset, scan_file
from ..spectra.splits import check_disjoint, open_splits, parse_split_specs
from .options import (
    DEFAULT_BATCH,
    MAX_MAP_SIZE,
    ExtractOptions,
)

MAX_CACHE_ROWS = 2**31 - 1  # rows x draws of all splits: past this, the row coordinates alone are 24 GiB


@dataclass
class LayerPlan:
    """A tap (or pseudo-layer) to read out: its channels and map length at this mask."""

    name: str
    channels: int
    length: int
    pseudo: bool


@dataclass
class ExtractPlan:
    options: ExtractOptions
    encoder: LoadedEncoder
    splits: list[SplitLayout]
    mask: np.ndarray
    mask_spec: MaskSpec
    noise: NoiseSpec
    wave: np.ndarray
    layers: list[LayerPlan]
    pools: list[str]
    arrays: list[ArraySpec]
    parts: dict[str, Any]
    fingerprint: str
    device: torch.device
    lean: LeanEncoder | None  # None when only the input pseudo-layers are asked for
    batch_size: int

    def store_spec(self) -> StoreSpec:
        """What the cache writer needs: the layout's facts plus extraction's own metadata."""
        return StoreSpec(path=self.options.out, fingerprint=self.fingerprint, parts=self.parts,
                         attrs=self._attrs(), mask=self.mask, wave=self.wave, splits=self.splits,
                         arrays=self.arrays, block_rows=self.options.block_rows,
                         store_dtype=self.options.store_dtype, command=self.options.command,
                         overwrite=self.options.overwrite)

    def _attrs(self) -> dict[str, Any]:
        opts, enc, noise = self.options, self.encoder, self.noise
        return {
            "encoder": {**enc.config.as_dict(), "tag": enc.config.tag,
                        "source": str(enc.path) if enc.path else f"random-init (seed {opts.init_seed})",
                        "format": enc.file_format, "dilation_source": enc.dilation_source,
                        "weights_sha256": self.parts["encoder"]["weights_sha256"]},
            "mask": {"spec": self.mask_spec.text, "n_pixels": int(self.mask.size), "n_kept": int(self.mask.sum()),
                     "computed_from": self.splits[0].name if self.mask_spec.kind == "quantile" else None},
            "noise": {"mode": noise.mode, "seed": noise.seed if noise.generated else None,
                      "level": noise.level if noise.generated else None,
                      "draws": {s.name: s.draws for s in self.splits},
                      "sigma_channel": "error * noise_level" if noise.generated else "error",
                      "generator": "numpy Philox keyed by (seed, source row), counter stream = draw"},
            "direction": opts.direction, "compute_dtype": opts.dtype, "store_dtype": opts.store_dtype,
        }


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


def _check_options(opts: ExtractOptions) -> NoiseSpec:
    """The options' declared constraints (ExtractOptions.constraints), then what one option asks of another."""
    validate(opts)
    if opts.conv == "fft" and opts.dtype != "float32":
        raise FeatcacheError(f"--conv fft computes in float32; use --conv direct (or auto) with --dtype {opts.dtype}")
    return NoiseSpec(opts.noise, opts.noise_seed, opts.noise_level).validate()


def load_plan_encoder(opts: ExtractOptions, device: torch.device) -> LoadedEncoder:
    """The checkpoint, or with --random-init the same architecture (from --ckpt or --arch) freshly initialised."""
    if opts.random_init:
        if opts.arch:
            config = EncoderConfig.from_tag(opts.arch)
        elif opts.ckpt:
            config = load_encoder(opts.ckpt, dilation=opts.dilation).config
        else:
            raise FeatcacheError("--random-init needs the architecture: give --ckpt (its shape is used) or --arch")
        if opts.dilation is not None:
            if opts.dilation < 1:
                raise FeatcacheError(f"--dilation {opts.dilation}: must be an integer >= 1")
            config = EncoderConfig(**{**config.as_dict(), "dilation": opts.dilation})
        return random_encoder(config, seed=opts.init_seed, device=device)
    if opts.ckpt is None:
        raise FeatcacheError("--ckpt is required (or --random-init with --arch)")
    return load_encoder(opts.ckpt, dilation=opts.dilation, device=device)


def _read_splits(opts: ExtractOptions, draws: dict[str, int], noise: NoiseSpec
                 ) -> tuple[list[SplitLayout], np.ndarray]:
    """Each split's rows and labels, every file on the first file's wavelength grid (spectra.splits)."""
    opened, wave = open_splits(opts.data, stored_noise=not noise.generated, generated_noise=noise.generated)
    return [SplitLayout(s.name, s.path, s.start, s.stop, draws[s.name], s.label_names, {}) for s in opened], wave


def check_cache_size(out: Any, splits: list[SplitLayout]) -> None:
    """Rows x draws checked before anything is allocated: the row coordinates alone take 12 bytes a row, in
    memory and on disk, and the features several hundred; a count that cannot fit is refused here, by number,
    instead of failing inside an allocation (or filling the disk) with a cache half made."""
    rows = sum(s.n_rows for s in splits)
    if rows > MAX_CACHE_ROWS:
        worst = max(splits, key=lambda s: s.n_rows)
        raise FeatcacheError(f"--noise-draws: {rows:,} rows in all ({worst.n_source:,} spectra x {worst.draws:,} "
                             f"draws in split '{worst.name}'), over the {MAX_CACHE_ROWS:,} a cache takes; give fewer "
                             "draws (--noise-draws NAME=K) or fewer spectra")
    try:
        free = shutil.disk_usage(_existing_parent(out)).free
    except OSError:
        return
    need = rows * 12  # index (int64) and draw (int32): the least a cache of these rows writes
    if need > free:
        raise FeatcacheError(f"--out {out}: {rows:,} rows need at least {need / 2**30:.1f} GiB for their row "
                             f"coordinates alone, and the disk has {free / 2**30:.1f} GiB free; give fewer draws "
                             "or spectra, or write elsewhere")


def _existing_parent(path: Any) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def scan_splits(splits: list[SplitLayout], mode: str) -> None:
    """Each file read once (--hash full: every byte) for its identity and the per-row scan of the splits' rows
    in it: content hashes (copied rows across splits) and NaN pixels (missing values set to 0, named)."""
    by_file: dict[str, list[SplitLayout]] = {}
    for split in splits:
        by_file.setdefault(os.path.realpath(split.path), []).append(split)
    for group in by_file.values():
        scan = scan_file(group[0].path, mode=mode, ranges=[(s.start, s.stop) for s in group])
        for split in group:
            rows = scan.rows(split.start, split.stop)
            split.identity, split.row_hash = scan.identity, rows.hashes
            split.nan_flux = rows.nan_summary()
            nan = split.nan_flux
            if nan["rows"]:
                first = ", ".join(map(str, nan["first_rows"])) + (", ..." if nan["rows"] > 5 else "")
                status(f"split '{split.name}': {nan['rows']} spectra have NaN flux pixels ({nan['pixels']} pixels; "
                       f"rows {first} of {split.path}), read as 0 by the reading rule (docs/refusals.md)")


def _layers(model: Any, names: list[str], n_kept: int, direction: str, pools: list[str]) -> list[LayerPlan]:
    layers: list[LayerPlan] = []
    for name in names:
        if name in PSEUDO_LAYERS:
            layers.append(LayerPlan(name, 1, n_kept, True))
            continue
        layers.append(LayerPlan(name, *tap_shape(model, name, n_kept, direction), False))
    for layer in layers:
        for pool in pools:
            pooled_width(pool, layer.channels, layer.length, layer.name)
    return layers


def _arrays(splits: list[SplitLayout], layers: list[LayerPlan], pools: list[str], opts: ExtractOptions
            ) -> list[ArraySpec]:
    arrays: list[ArraySpec] = []
    for split in splits:
        for layer in layers:
            for pool in pools:
                pooling = get_pooling(pool)
                width = pooled_width(pool, layer.channels, layer.length, layer.name)
                arrays.append(ArraySpec(split.name, "features", layer.name, pool, (split.n_rows, width), {
                    "D": width, "C": layer.channels, "L": layer.length, "pooling": pool,
                    "definition": pooling.definition, "layer": layer.name,
                    "direction": "forward" if layer.pseudo else opts.direction}))
            if opts.keep_maps and not layer.pseudo and layer.channels * layer.length <= MAX_MAP_SIZE:
                arrays.append(ArraySpec(split.name, "maps", layer.name, None,
                                        (split.n_rows, layer.channels, layer.length),
                                        {"C": layer.channels, "L": layer.length, "layer": layer.name,
                                         "definition": "the raw (C, L') map"}))
    return arrays


def _parts(opts: ExtractOptions, encoder: LoadedEncoder, splits: list[SplitLayout], mask: np.ndarray,
           noise: NoiseSpec, device: torch.device, batch_size: int, conv_plan: str) -> dict[str, Any]:
    """What the fingerprint covers: everything that changes the numbers. That includes the batch size and
    the device type: convolution kernels sum in an order that depends on both (differences of 1e-7), so a
    resume with another batch size or device would mix rows computed two ways."""
    features = feature_parts(
        weights_sha256=encoder.weights_digest(), config=encoder.config.as_dict(), code_version=CODE_VERSION,
        random_init_seed=opts.init_seed if opts.random_init else None, mask=mask, noise_mode=noise.mode,
        noise_seed=noise.seed, noise_level=noise.level, direction=opts.direction, compute_dtype=opts.dtype,
        store_dtype=opts.store_dtype)
    data = {s.name: {"identity": s.identity, "start": s.start, "stop": s.stop, "draws": s.draws} for s in splits}
    return {**features, "data": data, "block_rows": opts.block_rows,
            "compute": {"batch_size": batch_size, "device": device.type, "conv": conv_plan}}


def build_plan(opts: ExtractOptions) -> ExtractPlan:
    """Validate every option and input before any work starts."""
    noise = _check_options(opts)
    layer_names = list(dict.fromkeys(opts.layers))
    if not layer_names:
        raise FeatcacheError("--layer: give at least one layer")
    pools = parse_poolings(opts.pools)
    if not pools:
        raise FeatcacheError("--pool: give at least one pooling")
    specs = parse_split_specs(opts.data)
    draws = parse_draws(opts.noise_draws, [s.name for s in specs])
    if not noise.generated and any(d > 1 for d in draws.values()):
        raise FeatcacheError("--noise-draws > 1 needs --noise generated (a stored noisy array is one draw)")
    device = resolve_device(opts.device)
    encoder = load_plan_encoder(opts, device)
    layer_names = expand_layers(layer_names, encoder.config.num_layers)  # --layer all
    for name in layer_names:
        if name not in PSEUDO_LAYERS and name not in encoder.model.tap_names:
            raise FeatcacheError("--layer: " + choices_message("layer", name,
                                                               [*encoder.model.tap_names, *PSEUDO_LAYERS]))
    splits, wave = _read_splits(opts, draws, noise)
    check_disjoint([(s.name, os.path.realpath(s.path), s.start, s.stop) for s in splits])
    check_cache_size(opts.out, splits)
    mask_spec = parse_mask_spec(opts.mask)
    first = splits[0]
    with PfsDataset(first.path) as ds:
        mask = make_mask(mask_spec, ds, first.start, first.stop, source=f"split '{first.name}'")
    scan_splits(splits, opts.hash)  # every byte read (and every error value checked) before anything is written
    check_disjoint([(s.name, s.identity["hash"], s.start, s.stop) for s in splits])  # copies of one file too
    check_rows_disjoint([SplitRows(s.name, str(s.path), s.start, s.row_hash) for s in splits])  # copied rows
    layers = _layers(encoder.model, layer_names, int(mask.sum()), opts.direction, pools)
    arrays = _arrays(splits, layers, pools, opts)
    taps = [layer.name for layer in layers if not layer.pseudo]
    conv = opts.conv if opts.dtype == "float32" else "direct"  # autocast runs the direct convolutions
    lean = LeanEncoder(encoder.model, taps, int(mask.sum()), conv=conv, device=device) if taps else None
    batch_size = opts.batch_size or DEFAULT_BATCH.get(device.type, 64)
    plan = conv_plan(encoder.config, int(mask.sum()), conv, device)  # of the whole encoder: taps do not change it
    parts = _parts(opts, encoder, splits, mask, noise, device, batch_size, plan)
    return ExtractPlan(opts, encoder, splits, mask, mask_spec, noise, wave[mask], layers, pools, arrays, parts,
                       digest(parts), device, lean, batch_size)
