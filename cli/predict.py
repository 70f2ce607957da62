"""`featcache predict`: apply a fitted head to a split of a (possibly other) feature cache."""

from __future__ import annotations

from pathlib import Path

import click

from .common import UserError, command, echo_result, elapsed
from .options import threads_option


@command("predict", short_help="Apply a fitted head to a split of a feature cache.")
@click.option("--head", "run_dir", type=click.Path(path_type=Path), required=True,
              help="Run directory written by featcache fit (holds head.pt).")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path), required=True, help="Feature cache (.zarr).")
@click.option("--split", required=True, help="Split of the cache to predict.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output file: .npz or .csv.")
@click.option("--force", is_flag=True,
              help="Apply the head even to features made another way (another encoder, mask, noise, ...); says so.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@threads_option("heads")
def command(run_dir: Path, cache_path: Path, split: str, out: Path, force: bool, overwrite: bool,
            threads: int | None) -> None:
    """Apply a fitted head to SPLIT of a feature cache with the same features (draw 0 rows).

    Refuses a cache whose features were made another way than the head's (another encoder, mask, noise,
    direction, dtype or pooling definition) unless --force, naming what differs.

    \b
    Example:
      featcache predict --head reports/runs/pre_latent-K8-mlp_1 --cache cache/new.zarr \\
        --split test --out reports/new-test-predictions.csv
    """
    from featcache.common.device import use_threads
    from featcache.common.files import atomic_write, check_not_inside_store
    from featcache.heads.metrics import r2
    from featcache.heads.predict import predict_split

    if out.suffix not in (".npz", ".csv"):
        raise UserError(f"--out {out}: expected a .npz or .csv file name")
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory, expected a .npz or .csv file name")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out}: exists; pass --overwrite to replace it")
    check_not_inside_store(out)
    use_threads(threads, "heads")
    result = predict_split(run_dir, cache_path, split, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        atomic_write(out, lambda tmp: _save_npz(tmp, result))
    else:
        import pandas as pd

        frame = pd.DataFrame({k: v for k, v in result.items() if k != "targets"})
        atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))
    scores = [f"{t} R2 {r2(result[f'true_{t}'], result[f'pred_{t}']):.3f}" for t in result["targets"]
              if f"true_{t}" in result]
    echo_result(f"{len(result['index'])} predictions for split '{split}' -> {out}"
                + (f" ({', '.join(scores)})" if scores else "") + f"; {elapsed()} in all")


def _save_npz(path: Path, arrays: dict) -> None:
    import numpy as np

    with open(path, "wb") as handle:  # a file object: np.savez would append .npz to a temporary name
        np.savez(handle, **arrays)
