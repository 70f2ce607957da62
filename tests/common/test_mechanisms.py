"""The shared mechanisms, each implemented once: settings diffs, fingerprint wording, atomic writes, plain
data, the background producer, early stopping, device resolution and the packages' lazy exports."""

from __future__ import annotations

import importlib
import math
import pkgutil

import numpy as np
import pytest
import torch

import featcache
from featcache.cache.fingerprint import describe_changes, digest
from featcache.common.background import background
from featcache.common.device import resolve_device
from featcache.common.errors import FeatcacheError
from featcache.common.files import atomic_write, write_json
from featcache.common.serialise import plain
from featcache.common.settings import MISSING, changes, format_changes
from featcache.heads.early_stopping import EarlyStopping


def test_changes_walk_nested_settings_and_skip_ignored_paths():
    saved = {"noise": {"seed": 42, "level": 1.0}, "lr": 0.01, "epochs": 3, "gone": 1}
    wanted = {"noise": {"seed": 7, "level": 1.0}, "lr": 0.1, "epochs": 9, "new": "x"}
    found = changes(saved, wanted, ignore=["epochs"])
    assert [(c.path, c.saved, c.wanted) for c in found] == [
        ("gone", 1, MISSING), ("lr", 0.01, 0.1), ("new", MISSING, "x"), ("noise.seed", 42, 7)]
    assert format_changes(found[1:2]) == "lr 0.01 -> 0.1"
    assert format_changes(found[2:3], "{path} {wanted} (saved {saved})") == "new 'x' (saved (none))"
    assert changes(saved, saved) == []


def test_fingerprint_changes_are_worded_per_part():
    old = {"data": {"train": {"identity": {"hash": "full:aaa"}, "start": 0}, "val": {"start": 0}},
           "noise": {"seed": 42, "level": 1.0}, "direction": "forward", "encoder": {"weights_sha256": "x"}}
    new = {"data": {"train": {"identity": {"hash": "full:bbb"}, "start": 5}, "test": {"start": 0}},
           "noise": {"seed": 7, "level": 1.0}, "direction": "reverse", "encoder": {"weights_sha256": "y"}}
    words = describe_changes(old, new)
    assert "split 'train': file content, start changed" in words
    assert "split 'test' is new" in words and "split 'val' is no longer given" in words
    assert "noise: seed 42 -> 7" in words and "direction: forward -> reverse" in words
    assert "encoder weights_sha256 changed" in words
    assert digest(old) == digest(dict(reversed(list(old.items())))) != digest(new)  # key order is irrelevant
    sampled = {"data": {"train": {"identity": {"hash": "sampled:aaa"}, "start": 0}}}
    (word,) = describe_changes(sampled, {"data": {"train": {"identity": {"hash": "full:aaa"}, "start": 0}}})
    assert "identified its file by --hash sampled, this run by --hash full" in word


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    write_json(target, {"r2": np.float32(0.5), "nan": float("nan")}, finite_only=True)
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"r2":0.5,"nan":null}'


def test_plain_makes_json_and_weights_only_friendly_values(tmp_path):
    value = {"a": np.int64(3), "b": np.arange(3), "c": (np.float64(1.5), tmp_path), "d": float("inf")}
    assert plain(value) == {"a": 3, "b": [0, 1, 2], "c": [1.5, str(tmp_path)], "d": math.inf}
    assert plain(value, finite_only=True)["d"] is None
    assert type(plain(np.float32(2.0))) is float


def test_background_keeps_order_and_reraises_in_the_consumer():
    assert list(background(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise ValueError("bad block")

    with pytest.raises(ValueError, match="bad block"):
        list(background(failing()))


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience():
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2)
    scores = [0.1, 0.5, 0.4, 0.3]
    stops = []
    for epoch, score in enumerate(scores, start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        stops.append(stopper.step(epoch, score, model))
    assert stops == [False, False, False, True] and stopper.best_epoch == 2 and stopper.best_score == 0.5
    stopper.restore(model)
    assert float(model.weight.detach()[0, 0]) == 2.0
    again = EarlyStopping(patience=2)
    again.load_state_dict(stopper.state_dict())
    assert again.best_epoch == 2 and again.bad_epochs == 2
    no_val = EarlyStopping(patience=1)
    assert not any(no_val.step(e, None, model) for e in range(1, 5)) and no_val.best_epoch == 4


def test_device_resolution_is_one_rule():
    assert resolve_device("auto").type in ("cpu", "cuda") and resolve_device("cpu").type == "cpu"
    with pytest.raises(FeatcacheError, match="--device tpu: expected auto | cpu | cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(FeatcacheError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_every_lazy_export_resolves():
    """Each package's __init__ names what it offers; every name must import (no stale entries)."""
    packages = [featcache] + [importlib.import_module(f"featcache.{m.name}")
                              for m in pkgutil.iter_modules(featcache.__path__) if m.ispkg]
    for package in packages:
        for name in dir(package) if package is not featcache else featcache.__all__:
            if name.startswith("__"):
                continue
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"


def test_the_command_line_starts_without_torch():
    """`featcache --help` reads option defaults from torch-free library modules (startup stays fast; nor Optuna,
    which only `featcache search` imports)."""
    import subprocess
    import sys

    code = ("import sys, featcache_cli.main; print(sorted(m for m in ('torch', 'zarr', 'h5py', 'optuna') if m in "
            "sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
