"""The `featcache` click group. Each command lives in its own module of this package."""

from __future__ import annotations

import importlib

import click

from featcache._version import __version__

# the module of every command (its `command` attribute), in the order `featcache --help` lists them.
COMMAND_MODULES: list[str] = [
    "inspect",
    "extract",
    "fit",
    "finetune",
    "compare",
    "predict",
    "report",
    "bounds",
    "bench",
    "demo",
    "pretrain",
    "search",
    "synth",
    "import_spectra",
    "export_pfs",
    "transfer",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="featcache")
def cli() -> None:
    """featcache: run a frozen spectrum encoder once, cache its features, fit heads in seconds.

    \b
    Typical session (runs as written in an empty folder, about a minute on 2 cores;
    tests/docs/test_help_session.py runs it):
      featcache synth data/train.h5 --n 500 --seed 1
      featcache synth data/val.h5 --n 100 --seed 2
      featcache synth data/test.h5 --n 100 --seed 3
      featcache pretrain --data train=data/train.h5 --data val=data/val.h5 --out ckpt/enc.ckpt \\
        --num-layers 4 --embed-dim 8 --kernel-size 5 --max-epochs 1
      featcache extract --ckpt ckpt/enc.ckpt --data train=data/train.h5 --data val=data/val.h5 \\
        --data test=data/test.h5 --layer enc_pre_latent --layer input_flux \\
        --pool global_mean,seg_mean_K8 --out cache/x.zarr
      featcache fit --cache cache/x.zarr --layer enc_pre_latent --pool seg_mean_K8 \\
        --head ridge --target log_g --out reports/runs/x-ridge
      featcache compare --cache cache/x.zarr --target log_g --out reports/x

    \b
    With an encoder of your own: featcache inspect ENC.ckpt, then extract --ckpt ENC.ckpt.
    Docs: docs/ (mkdocs serve), or start with `featcache demo --size quick`.
    """


for _module in COMMAND_MODULES:
    cli.add_command(importlib.import_module(f"featcache_cli.{_module}").command)


def main() -> None:
    cli(prog_name="featcache")
