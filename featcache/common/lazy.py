"""Lazy package exports (PEP 562): `from featcache.heads import create_head` works, while importing a light
module of a package (say its options) does not import torch or zarr (`featcache --help` stays fast)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for a package whose public `names` live in its submodules ({name: module})."""

    def getattr_(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted(names)

    return getattr_, dir_
