"""`featcache bench`: extraction vs an independent minimal forward, memory, ranks and head fits, as ratios."""

from __future__ import annotations

from pathlib import Path

import click

from featcache.bench.config import BenchConfig

from .options import defaults

D = defaults(BenchConfig)


def _batches(value: str | None) -> tuple[int, ...] | None:
    from featcache.common.errors import FeatcacheError

    if not value:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise FeatcacheError(f"--batch-sizes {value}: expected comma-separated integers, e.g. 8,16,64") from None
    if not sizes or min(sizes) < 1:
        raise FeatcacheError(f"--batch-sizes {value}: expected positive integers")
    return sizes


from .common import command, echo_result  # noqa: E402 -- after the helpers the options use


@command("bench", short_help="Time extraction vs a minimal encoder forward, memory, ranks, fits.")
@click.option("--quick", is_flag=True, help="Tiny sizes (seconds): checks that every measurement runs.")
@click.option("--arch", default=None, help=f"Encoder shape to time (default {D['arch']}; quick: l4e8k5s1bn1d1).")
@click.option("--n", "n_spectra", type=int, default=None,
              help=f"Synthetic spectra to extract (default {D['n_spectra']}).")
@click.option("--batch-sizes", default=None,
              help=f"Batch sizes the encoders are timed at (default {','.join(map(str, D['batch_sizes']))}).")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help=f"Interleaved rounds, best of each kept (default {D['repeats']}).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:i].")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Compute dtypes to time (default float32; repeat for more).")
@click.option("--heads-rows", type=int, default=None, help=f"Rows of the head benchmark (default {D['heads_rows']}).")
@click.option("--no-shards", is_flag=True, help="Skip the 1-process vs 2-rank comparison.")
@click.option("--no-heads", is_flag=True, help="Skip the ridge / mlp_1 fit timings.")
@click.option("--memory-scale", type=click.IntRange(min=0), default=None,
              help=f"Also compare peak RSS at N and this many times N spectra (default {D['memory_scale']}; 0 or 1 "
                   "skips).")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Where the synthetic file and caches go (default: a temporary directory).")
@click.option("--out", type=click.Path(path_type=Path), default=D["out"], show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def command(quick: bool, arch: str | None, n_spectra: int | None, batch_sizes: str | None, repeats: int | None,
            device: str, dtypes: tuple[str, ...], heads_rows: int | None, no_shards: bool, no_heads: bool,
            memory_scale: int | None, workdir: Path | None, out: Path, overwrite: bool) -> None:
    """Time the pipeline on synthetic data and write the figures to --out (JSON) and stdout.

    Figures are ratios measured in one run: featcache extract (default options) against a minimal eager
    forward of the encoder at its best batch size, the lean encoder against the original one, the fraction of
    the machine's matmul peak, extra poolings, 2 ranks vs 1, peak memory at N vs 16 N; plus spectra/s, peak
    resident memory and head fit seconds. Run it alone: two busy cores distort every figure.

    \b
    Example:
      featcache bench                      # l9e48k25, 3072 spectra, float32
      featcache bench --device cuda --dtype float32 --dtype bfloat16 --no-heads
      featcache bench --quick --out /tmp/bench.json
    """
    from featcache.bench.run import format_bench, run_bench
    from featcache.common.errors import FeatcacheError

    if out.is_dir() or (out.exists() and not overwrite):
        raise FeatcacheError(f"--out {out}: exists; pass --overwrite to replace it" if not out.is_dir()
                             else f"--out {out}: is a directory, expected a .json file name")
    overrides = {k: v for k, v in {"arch": arch, "n_spectra": n_spectra, "batch_sizes": _batches(batch_sizes),
                                   "repeats": repeats, "heads_rows": heads_rows, "memory_scale": memory_scale,
                                   "dtypes": tuple(dtypes) or None}.items() if v is not None}
    overrides.update(device=device, shards=not no_shards, heads=not no_heads, workdir=workdir, out=out)
    config = BenchConfig.quick(**overrides) if quick else BenchConfig(**overrides)
    echo_result(format_bench(run_bench(config)))
    echo_result(f"figures written to {out}")
