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
    Typical session:
      featcache synth data/train.h5 --n 20000 --seed 1
      featcache extract --ckpt ENC.ckpt --data train=train.h5 --data val=val.h5 --out cache/x.zarr
      featcache fit --cache cache/x.zarr --layer enc_pre_latent --pool seg_mean_K8 --head ridge
    """


for _module in COMMAND_MODULES:
    cli.add_command(importlib.import_module(f"featcache_cli.{_module}").command)


def main() -> None:
    cli(prog_name="featcache")
