"""`featcache bench`: measure encoder, extraction, memory, sharding and head-fitting speed on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from .common import command, echo_result


@command("bench", short_help="Time extraction vs the bare encoder, memory, ranks, fits.")
@click.option("--quick", is_flag=True, help="Tiny sizes (seconds): checks that every measurement runs.")
@click.option("--arch", default=None, help="Encoder shape to time (default l9e48k25s1bn1d1; quick: l4e8k5s1bn1d1).")
@click.option("--n", "n_spectra", type=int, default=None, help="Synthetic spectra to extract (default 2048).")
@click.option("--batch-size", type=int, default=None, help="Spectra per forward (default 256).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:i].")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Compute dtypes to time (default float32 and bfloat16).")
@click.option("--heads-rows", type=int, default=None, help="Rows of the head benchmark (default 100000).")
@click.option("--no-shards", is_flag=True, help="Skip the 1-process vs 2-rank comparison.")
@click.option("--no-heads", is_flag=True, help="Skip the ridge / mlp_1 fit timings.")
@click.option("--memory-scale", type=click.IntRange(min=0), default=None,
              help="Also compare peak RSS at N and this many times N spectra (default 16; 0 or 1 skips).")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Where the synthetic file and caches go (default: a temporary directory).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/bench.json"), show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def command(quick: bool, arch: str | None, n_spectra: int | None, batch_size: int | None, device: str,
            dtypes: tuple[str, ...], heads_rows: int | None, no_shards: bool, no_heads: bool,
            memory_scale: int | None, workdir: Path | None, out: Path, overwrite: bool) -> None:
    """Time the pipeline on synthetic data and write the figures to --out (JSON) and stdout.

    Figures are ratios measured in one run (extraction vs the bare encoder, extra poolings, 2 ranks vs 1,
    peak memory at N vs 16 N)
    plus spectra/s, peak resident memory and head fit seconds.

    \b
    Example:
      featcache bench                      # l9e48k25, 2048 spectra, float32 + bfloat16
      featcache bench --quick --out /tmp/bench.json
    """
    from featcache.bench.run import BenchConfig, format_bench, run_bench
    from featcache.common.errors import FeatcacheError

    if out.is_dir() or (out.exists() and not overwrite):
        raise FeatcacheError(f"--out {out}: exists; pass --overwrite to replace it" if not out.is_dir()
                             else f"--out {out}: is a directory, expected a .json file name")

    overrides = {k: v for k, v in {"arch": arch, "n_spectra": n_spectra, "batch_size": batch_size,
                                   "heads_rows": heads_rows, "memory_scale": memory_scale}.items() if v is not None}
    overrides.update(device=device, shards=not no_shards, heads=not no_heads, workdir=workdir, out=out)
    if dtypes:
        overrides["dtypes"] = tuple(dtypes)
    config = BenchConfig.quick(**overrides) if quick else BenchConfig(**overrides)
    echo_result(format_bench(run_bench(config)))
    echo_result(f"figures written to {out}")
