"""Fixtures the trust tests share."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root only): a real full disk without filling the machine's."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=256k tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    os.system(f"umount {mount}")
