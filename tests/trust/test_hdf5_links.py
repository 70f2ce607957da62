"""HDF5 files that read other files: external raw storage (a dataset whose bytes are another file, such as
/etc/passwd), external links and virtual datasets. Every command that reads an HDF5 input refuses them,
naming the dataset, before it reads a single value from any array."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ..helpers import CKPT, write_pfs
from .test_bad_input import refused

FLUX = "dataset/arrays/flux/value"


def external_storage(root):
    """flux stored in another file: its bytes are read as spectra."""
    secret = root / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 2000)
    path = write_pfs(root / "external.h5", n=20, p=128, seed=1)
    with h5py.File(path, "a") as f:
        del f[FLUX]
        f.create_dataset(FLUX, shape=(20, 128), dtype="f4", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    return path, FLUX, "stored in another file"


def external_link(root):
    """flux an external link into another file."""
    other = write_pfs(root / "other.h5", n=20, p=128, seed=2)
    path = write_pfs(root / "linked.h5", n=20, p=128, seed=1)
    with h5py.File(path, "a") as f:
        del f[FLUX]
        f[FLUX] = h5py.ExternalLink(str(other), "/" + FLUX)
    return path, FLUX, "an external link"


def virtual_dataset(root):
    """flux a virtual dataset over the rows of another file (a test file made of train rows)."""
    train = write_pfs(root / "train.h5", n=20, p=128, seed=2)
    path = write_pfs(root / "virtual.h5", n=20, p=128, seed=1)
    layout = h5py.VirtualLayout(shape=(20, 128), dtype="f4")
    layout[:] = h5py.VirtualSource(str(train), FLUX, shape=(20, 128))
    with h5py.File(path, "a") as f:
        del f[FLUX]
        f.create_virtual_dataset(FLUX, layout)
    return path, FLUX, "a virtual dataset"


@pytest.fixture
def no_reads(monkeypatch):
    """Count every value read from an HDF5 dataset while a command runs."""
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, *args, **kwargs):
        reads.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    return reads


@pytest.mark.parametrize("make", [external_storage, external_link, virtual_dataset])
def test_hdf5_inputs_that_read_other_files_are_refused(tmp_path, make, no_reads):
    path, name, what = make(tmp_path)
    with h5py.File(path, "r") as f:  # h5py reads it as any other file: the bytes come from elsewhere
        assert f[FLUX][()].shape == (20, 128) and np.isfinite(f[FLUX][:, :4]).any()
    no_reads.clear()
    fragments = (str(path), f"'{name}'", what)
    refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"train={path}", "--mask", "none", "-q",
            "--out", tmp_path / "c.zarr", fragments=fragments)
    refused(tmp_path, "finetune", "--ckpt", CKPT, "--data", f"train={path}", "--val-split", "", "--test-split",
            "", "--target", "log_g", "--mask", "none", "--out", tmp_path / "ft", "-q", fragments=fragments)
    refused(tmp_path, "pretrain", "--data", f"train={path}", "--num-layers", "3", "--embed-dim", "4",
            "--mask", "none", "-q", "--out", tmp_path / "p.ckpt", fragments=fragments)
    refused(tmp_path, "inspect", path, fragments=fragments)
    assert no_reads == [], f"values were read before the refusal: {no_reads[:5]}"
