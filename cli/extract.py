"""`featcache extract`: run the frozen encoder once over every spectrum into a Zarr feature cache."""

from __future__ import annotations

from pathlib import Path

import click

from featcache.extraction.options import (
    COMPUTE_DTYPES,
    CONV_MODES,
    DEFAULT_BATCH,
    HASH_MODES,
    STORE_DTYPES,
    ExtractOptions,
)

from .common import command, command_line, echo_result, elapsed
from .options import data_option, defaults, device_option, noise_options, parse_shard, threads_option

D = defaults(ExtractOptions)


@command("extract", short_help="Run the encoder once over all spectra into a Zarr feature cache.")
@click.option("--ckpt", type=click.Path(path_type=Path), help="Encoder checkpoint (Lightning .ckpt or state dict).")
@data_option()
@click.option("--layer", "layers", multiple=True, default=tuple(D["layers"]), show_default=True,
              help="Encoder tap (enc_0..enc_N, enc_pre_latent, enc_last), all (enc_0..enc_N: every depth) or "
                   "input_flux / input_error. Repeatable.")
@click.option("--pool", "pools", multiple=True, default=(",".join(D["pools"]),), show_default=True,
              help="Poolings, comma-separated or repeated (global_mean, global_max, mean_max, seg_mean_K{K}, "
                   "seg_max_K{K}, seg_meanmax_K{K}, none).")
@noise_options(D)
@click.option("--noise-draws", multiple=True, metavar="K|NAME=K",
              help="Noise realisations per spectrum (all splits, or one: --noise-draws train=4).")
@click.option("--direction", type=click.Choice(["forward", "reverse", "both"]), default=D["direction"],
              show_default=True, help="Taps of x, of x flipped (flipped back), or both on channels.")
@click.option("--dilation", type=int, default=None,
              help="Encoder dilation (default: YAML beside the checkpoint, the d<N> name token, else 1).")
@click.option("--batch-size", type=int, default=None,
              help="Spectra per encoder forward (default by device, measured: " +
                   ", ".join(f"{k} {v}" for k, v in DEFAULT_BATCH.items()) + ").")
@click.option("--block-rows", type=int, default=D["block_rows"], show_default=True,
              help="Rows per Zarr chunk and per resumable block.")
@device_option(D["device"])
@threads_option("encoder")
@click.option("--dtype", type=click.Choice(COMPUTE_DTYPES), default=D["dtype"], show_default=True,
              help="Compute dtype (autocast) of the encoder.")
@click.option("--conv", type=click.Choice(CONV_MODES), default=D["conv"], show_default=True,
              help="Encoder convolutions: FFT (overlap-save) where it is faster (auto: long maps on the CPU), "
                   "direct, or fft everywhere. All agree with the original code to 1e-6.")
@click.option("--store-dtype", type=click.Choice(STORE_DTYPES), default=D["store_dtype"], show_default=True,
              help="dtype of the stored features.")
@click.option("--keep-maps", is_flag=True, help="Also store raw (C, L') maps of taps with C*L' <= 4096.")
@click.option("--random-init", is_flag=True,
              help="Use randomly initialised weights (the random-encoder baseline) of --ckpt's or --arch's shape.")
@click.option("--init-seed", type=int, default=D["init_seed"], show_default=True, help="Seed of --random-init.")
@click.option("--arch", default=None, help="Architecture for --random-init without --ckpt, e.g. l9e48k25s1bn1d1.")
@click.option("--hash", "hash_mode", type=click.Choice(HASH_MODES), default=D["hash"], show_default=True,
              help="Data file identity for the fingerprint: every byte of the arrays and labels (full, which "
                   "also checks every error value first), or 8 sampled blocks (blind to edits elsewhere).")
@click.option("--shard", default=None, metavar="I/N", help="Compute only shard I of N (Slurm job arrays).")
@click.option("--prepare", "prepare_only", is_flag=True,
              help="Only create the cache's arrays and metadata (run once before a Slurm job array of --shard runs).")
@click.option("--wait", "wait_seconds", type=float, default=D["wait_seconds"], show_default=True,
              metavar="SECONDS", help="With --shard I/N (I > 0): how long to wait for shard 0 (or --prepare) to "
                                      "create the cache before giving up with exit status 2.")
@click.option("--overwrite", is_flag=True,
              help="Replace a cache that was made from other inputs: the new cache is built beside it and takes its "
                   "place only once complete (the old one stays usable until then).")
@click.option("--out", type=click.Path(path_type=Path), default=D["out"], show_default=True,
              help="Output cache (a .zarr directory).")
def command(ckpt: Path | None, data: tuple[str, ...], layers: tuple[str, ...], pools: tuple[str, ...], mask: str,
            noise: str, noise_level: float, noise_seed: int, noise_draws: tuple[str, ...], direction: str,
            dilation: int | None, batch_size: int | None, block_rows: int, device: str, threads: int | None, dtype: str,
            conv: str,
            store_dtype: str,
            keep_maps: bool, random_init: bool, init_seed: int, arch: str | None, hash_mode: str,
            shard: str | None, prepare_only: bool, wait_seconds: float, overwrite: bool, out: Path) -> None:
    """Run the frozen encoder once over every spectrum; pool the chosen layers; write a Zarr cache.

    Re-running the same command resumes or does nothing; adding --layer or --pool values computes only
    what is missing; changed inputs are refused unless --overwrite.

    \b
    Example:
      featcache extract --ckpt ENC.ckpt \\
        --data train=train.h5 --data val=val.h5 --data test=test.h5 \\
        --layer enc_pre_latent --layer enc_last --pool global_mean,mean_max,seg_mean_K8 \\
        --mask quantile:0.85 --noise-level 1.0 --noise-seed 42 --out cache/m215.zarr
    """
    from featcache.extraction.run import run_extract

    options = ExtractOptions(
        data=list(data), out=out, ckpt=ckpt, layers=list(layers), pools=list(pools), mask=mask, noise=noise,
        noise_level=noise_level, noise_seed=noise_seed, noise_draws=list(noise_draws), direction=direction,
        dilation=dilation, batch_size=batch_size, block_rows=block_rows, device=device, threads=threads, dtype=dtype,
        conv=conv,
        store_dtype=store_dtype, keep_maps=keep_maps, random_init=random_init, init_seed=init_seed, arch=arch,
        hash=hash_mode, overwrite=overwrite, shard=parse_shard(shard), prepare_only=prepare_only,
        wait_seconds=wait_seconds, command=command_line())
    report = run_extract(options)
    state = "complete" if report.complete else "INCOMPLETE (re-run to finish)"
    if prepare_only:
        echo_result(f"{out}: prepared ({len(report.arrays_added)} arrays added); fingerprint {report.fingerprint[:12]}")
    elif report.up_to_date:
        echo_result(f"{out}: up to date, {state}; fingerprint {report.fingerprint[:12]}")
    else:
        echo_result(f"{out}: {report.rows_done} rows in {report.seconds:.1f} s "
                    f"({report.spectra_per_second:.0f} spectra/s), {len(report.arrays_added)} arrays added, "
                    f"{state}; fingerprint {report.fingerprint[:12]}; {elapsed()} in all (reading and hashing the "
                    "inputs included)")
