"""The embedded files (featcache/data/) are found through importlib.resources and declared as package data, so
a wheel carries every one of them (CI's `make wheel-check` installs the wheel outside the clone and runs the
quick demo)."""

from __future__ import annotations

import fnmatch
import tomllib

from featcache.common.resources import embedded
from featcache.demo import DEMO_ENCODER
from featcache.synth.physics import LINES_CSV, load_lines

from ..helpers import REPO

# the recipes that rebuild the encoders run from a clone
NOT_SHIPPED = {"encoders/make_demo.sh", "encoders/make_demo_e16.sh"}


def test_embedded_files_resolve_inside_the_package():
    import featcache

    assert embedded().parent.samefile(featcache.__path__[0])
    assert embedded("lines.csv") == LINES_CSV and LINES_CSV.is_file()
    assert embedded("encoders", "demo-l9e32k9s1bn1d1.ckpt") == DEMO_ENCODER and DEMO_ENCODER.is_file()
    assert len(load_lines()) > 50


def test_every_embedded_file_is_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["featcache"]
    files = [p.relative_to(embedded()).as_posix() for p in embedded().rglob("*") if p.is_file()]
    assert "lines.csv" in files and "encoders/demo-l9e32k9s1bn1d1.mask.npy" in files
    for name in files:
        shipped = any(fnmatch.fnmatch(f"data/{name}", pattern) for pattern in patterns)
        assert shipped != (name in NOT_SHIPPED), name
