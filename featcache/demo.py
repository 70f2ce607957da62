"""`featcache demo`: synthetic benchmark -> extract with the embedded encoder -> ridge and mlp_1 -> report.

Every stage reuses what already exists: the synthetic files (named by size and seed, and deterministic),
the cache (fingerprinted) and the fitted cells (keyed by cache, feature, head and recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .common.errors import FeatcacheError
from .common.progress import progress, status
from .common.resources import embedded, missing_message

# embedded in the package (featcache/data/encoders/, with its YAML and mask), so an installed wheel runs the demo
DEMO_ENCODER = embedded("encoders", "demo-l9e32k9s1bn1d1.ckpt")
# outputs go under the current folder, as in a clone run from its root (data/synth/ is git-ignored there)
DEFAULT_DATA_DIR = Path("data") / "synth"
DEFAULT_REPORTS = Path("reports")
# seeds of the demo's splits; the demo encoder was pretrained on other seeds (featcache/data/encoders/README.md)
SPLIT_SEEDS = {"train": 101, "val": 102, "test": 103}
SIZES = {"quick": {"train": 400, "val": 150, "test": 150}, "standard": {"train": 20_000, "val": 1_000, "test": 1_000}}
# enc_3: where log_g peaks along the encoder (chosen on validation in the 100k reference grid's depth curve,
# other spectra than the demo's); enc_pre_latent and enc_last: the reference experiment's taps
LAYERS = ["enc_3", "enc_pre_latent", "enc_last"]
POOLS = ["global_mean", "mean_max", "seg_mean_K8"]
NOISE_SEED = 42
# the quick demo checks the pipeline in under a minute, so its MLPs train for fewer epochs
QUICK_MAX_EPOCHS = 10


@dataclass
class DemoResult:
    out: Path
    cache: Path
    markdown: str
    report: Path
    fitted: int
    reused: int


def synth_files(size: str, data_dir: Path) -> dict[str, Path]:
    """The demo's train/val/test files, generated once (a file with the same name holds the same spectra)."""
    from .synth.generate import write_synth

    data_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in SIZES[size].items():
        path = data_dir / f"demo-{split}-n{n}-s{SPLIT_SEEDS[split]}.h5"
        if not path.exists():
            status(f"demo: generating {n} synthetic spectra -> {path}")
            with progress(total=n, desc=f"synth {split}", unit="spectra") as bar:
                write_synth(path, n, SPLIT_SEEDS[split], progress=bar.update)
        files[split] = path
    return files


def run_demo(size: str = "quick", out: Path | None = None, data_dir: Path | None = None,
             encoder: Path | None = None, heads: tuple[str, ...] = ("ridge", "mlp_1"), device: str = "auto",
             max_epochs: int | None = None, threads: int | None = None, jobs: int = 1) -> DemoResult:
    """The whole pipeline on the embedded default; safe to re-run (everything is reused). out defaults to
    reports/demo-<size> and data_dir to data/synth, both under the current folder. threads: CPU threads of
    the extraction and of each process fitting heads (None: each workload's default, common.device: every
    core for the encoder, one per head-fitting process); jobs: processes making the fits."""
    from .extraction.options import ExtractOptions
    from .extraction.run import run_extract
    from .heads.recipe import TrainRecipe
    from .information.store import cache_bounds
    from .reports.comparison import compare

    if size not in SIZES:
        raise FeatcacheError(f"--size {size}: choose from: {', '.join(SIZES)}")
    if encoder is not None and not Path(encoder).is_file():
        raise FeatcacheError(f"--encoder {encoder}: no such checkpoint file")
    encoder = Path(encoder or DEMO_ENCODER)
    if not encoder.is_file():
        raise FeatcacheError(missing_message(encoder, "the demo encoder"))
    out = Path(out or DEFAULT_REPORTS / f"demo-{size}")
    data_dir = Path(data_dir or DEFAULT_DATA_DIR)
    files = synth_files(size, data_dir)
    cache = out / "cache.zarr"
    common = dict(data=[f"{split}={path}" for split, path in files.items()], out=cache, ckpt=encoder,
                  mask="quantile:0.85", noise_seed=NOISE_SEED, device=device, command=f"featcache demo --size {size}")
    status(f"demo: extracting {', '.join(LAYERS)} x {', '.join(POOLS)} and the raw-flux baseline -> {cache}")
    run_extract(ExtractOptions(layers=LAYERS, pools=POOLS, threads=threads, **common))
    run_extract(ExtractOptions(layers=["input_flux"], pools=["none"], threads=threads, **common))
    if max_epochs is None and size == "quick":
        max_epochs = QUICK_MAX_EPOCHS
    recipe = TrainRecipe() if max_epochs is None else TrainRecipe(max_epochs=max_epochs)
    status("demo: the information bound of every val and test spectrum (exact: the generator's derivatives)")
    cache_bounds(cache, source="synth", splits=["val", "test"])
    status(f"demo: fitting {' and '.join(heads)} on every cell and the full-spectrum baseline (finished cells are "
           "reused)")
    result = compare({"demo encoder": cache}, ["log_g"], heads=list(heads), recipe=recipe, out=out, device=device,
                     full_spectrum=True, threads=threads, jobs=jobs, command=f"featcache demo --size {size}")
    return DemoResult(out, cache, result.markdown, out / "report.md", result.fitted, result.reused)
