"""`featcache demo`: the whole pipeline on the embedded synthetic benchmark and demo encoder."""

from __future__ import annotations

from pathlib import Path

import click

from .common import command, echo_result, elapsed


@command("demo", short_help="Run synth, extract, fit, compare on the embedded default.")
@click.option("--size", type=click.Choice(["quick", "standard"]), default="quick", show_default=True,
              help="quick: a few hundred spectra (under a minute); standard: 20k train / 1k val / 1k test.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Report folder (default reports/demo-<size> under the current folder).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the synthetic files go (default data/synth under the current folder; existing files are "
                   "reused).")
@click.option("--encoder", type=click.Path(path_type=Path), default=None,
              help="Encoder checkpoint (default: the demo encoder embedded in the package, "
                   "featcache/data/encoders/demo-l9e32k9s1bn1d1.ckpt).")
@click.option("--head", "heads", multiple=True, default=("ridge", "mlp_1"), show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="CPU threads of the extraction and of each process fitting heads (default: every core for the "
                   "extraction, one per head-fitting process).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes making the fits (on a quiet machine, one per core is fastest).")
def command(size: str, out: Path | None, data_dir: Path | None, encoder: Path | None, heads: tuple[str, ...],
            device: str, threads: int | None, jobs: int) -> None:
    """Generate the synthetic benchmark, extract features with the demo encoder, fit ridge and mlp_1 on
    every layer x pooling (plus the raw noisy flux) for log_g, and write the compare report.

    Re-running reuses the data files, the cache and every finished cell.

    \b
    Example:
      featcache demo --size standard       # what `make demo` runs
      featcache demo --size quick --out /tmp/demo
    """
    from featcache.demo import run_demo

    result = run_demo(size=size, out=out, data_dir=data_dir, encoder=encoder, heads=heads, device=device,
                      threads=threads, jobs=jobs)
    echo_result(result.markdown)
    echo_result(f"\nreport: {result.report} (also {result.report.with_suffix('.html')}: one file, images inlined); "
                f"cache: {result.cache}; {result.fitted} cells fitted, {result.reused} reused; {elapsed()} in all")
