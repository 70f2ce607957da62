"""Every command's options are its library options object's fields, with the same defaults: the command line
only parses and calls the library, so a default is defined once (in the dataclass) and shown as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
from featcache_cli.options import defaults

from featcache.extraction.options import ExtractOptions
from featcache.finetune.options import FinetuneOptions
from featcache.heads.fit import FitSpec
from featcache.heads.recipe import TrainRecipe
from featcache.model.config import EncoderConfig
from featcache.pretrain.recipe import PretrainRecipe
from featcache.reports.options import CompareOptions


def _defaults(*classes: type) -> dict[str, object]:
    out: dict[str, object] = {}
    for cls in reversed(classes):  # the command's own options object wins over the recipe it holds
        out.update(defaults(cls))
    return out


def _plain(value: object) -> object:
    import click

    if value is getattr(click.core, "UNSET", object()):  # click 8.3: an option without a default
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "," in value:  # a list option given as one comma-separated default
        return value.split(",")
    if isinstance(value, tuple | list):
        items = [_plain(v) for v in value]
        return [x for item in items for x in (item if isinstance(item, list) else [item])]
    return value


# (command module, library options classes, click parameters whose default is the CLI's own on purpose)
COMMANDS = [
    ("extract", (ExtractOptions,), {"data"}),
    ("fit", (FitSpec, TrainRecipe), {"val_split", "test_split", "grad_clip", "alphas"}),
    ("compare", (CompareOptions, TrainRecipe), {"heads", "layers", "pools", "alphas", "grad_clip", "hidden",
                                                "dropout", "lr", "weight_decay", "train_sizes", "runs"}),
    ("finetune", (FinetuneOptions, TrainRecipe), {"head", "val_split", "test_split", "grad_clip", "out",
                                                  "unfreeze", "alphas", "data", "targets", "config"}),
    ("pretrain", (PretrainRecipe, EncoderConfig), {"data", "noise_seed"}),
]


@pytest.mark.parametrize("module,classes,own", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_defaults_are_the_library_defaults(module, classes, own):
    import importlib

    command = importlib.import_module(f"featcache_cli.{module}").command
    defaults = _defaults(*classes)
    checked = 0
    for param in command.params:
        if param.name in defaults and param.name not in own:
            default = param.default
            if _plain(default) is None and getattr(param, "is_flag", False):  # click 8.3: a flag's unset default
                default = False
            elif _plain(default) is None and getattr(param, "multiple", False):
                default = ()
            assert _plain(default) == _plain(defaults[param.name]), f"{module} --{param.name}"
            checked += 1
    assert checked >= 5  # the test compares something
