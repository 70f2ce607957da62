"""Cache format versions: new caches are format 2; format-1 caches (no dimension names but `row, feature`,
no coordinates) read exactly as before, resume, and refuse only new arrays; a newer format is refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from featcache.cache import open_cache, open_root
from featcache.cache.layout import FORMAT_VERSION, META_KEY
from featcache.common.errors import FeatcacheError

from ..helpers import CKPT, assert_user_error, run_cli, run_process, write_format_1, write_pfs

FEATURES = [("enc_last", "global_mean"), ("input_flux", "seg_mean_K4")]


@pytest.fixture
def format_1_copy(labelled_caches, tmp_path):
    """A format-1 copy of the shared labelled cache (the shared one is never written)."""
    copy = tmp_path / "v1.zarr"
    shutil.copytree(labelled_caches["pretrained"], copy)
    write_format_1(copy)
    return copy


def _set_format(path, value) -> None:
    root = open_root(path, "a")
    meta = dict(root.attrs[META_KEY])
    meta["format"] = value
    root.attrs[META_KEY] = meta


def test_new_caches_are_format_2(labelled_caches):
    cache = open_cache(labelled_caches["pretrained"])
    assert cache.format == FORMAT_VERSION == 2 and cache.info()["format"] == 2
    array = cache.feature_array("train", "enc_last", "seg_mean_K4")
    assert array.metadata.dimension_names == ("row", "feature_seg_mean_K4")
    assert cache.array("train/labels/log_g").metadata.dimension_names == ("row",)
    assert open_root(cache.path)["train"].attrs["coordinates"] == "index draw"


def test_a_format_1_cache_reads_as_before(labelled_caches, format_1_copy):
    old, new = open_cache(format_1_copy), open_cache(labelled_caches["pretrained"])
    assert old.format == 1 and old.info()["format"] == 1
    assert old.feature_array("train", "enc_last", "global_mean").metadata.dimension_names == ("row", "feature")
    assert old.array("train/index").metadata.dimension_names is None
    assert old.fingerprint == new.fingerprint and old.is_complete()
    for split in new.splits:
        for layer, pool in FEATURES:
            np.testing.assert_array_equal(old.features(split, layer, pool, draw=0),
                                          new.features(split, layer, pool, draw=0))
        np.testing.assert_array_equal(old.labels(split, "log_g"), new.labels(split, "log_g"))
        np.testing.assert_array_equal(old.index(split), new.index(split))
    assert "format 1" in run_cli("inspect", format_1_copy).output
    result = run_cli("fit", "--cache", format_1_copy, "--feature", "enc_last/global_mean", "--target", "log_g",
                     "--head", "ridge", "--out", format_1_copy.parent / "run", "-q")
    assert "test" in result.output


def test_to_xarray_reads_a_format_1_cache(labelled_caches, format_1_copy):
    pytest.importorskip("xarray")
    old, new = open_cache(format_1_copy).to_xarray("val"), open_cache(labelled_caches["pretrained"]).to_xarray("val")
    assert old.attrs["format"] == 1 and list(old.data_vars) == list(new.data_vars)
    for name in new.data_vars:
        assert old[name].dims == new[name].dims
        np.testing.assert_array_equal(old[name].values, new[name].values)
    np.testing.assert_array_equal(old["log_g"].values, new["log_g"].values)


def test_a_format_1_cache_resumes_but_takes_no_new_arrays(tmp_path):
    data = write_pfs(tmp_path / "d.h5", n=40, p=64, seed=2)
    out = tmp_path / "c.zarr"
    args = ["extract", "--ckpt", CKPT, "--data", f"train={data}", "--mask", "none", "--out", out]
    run_cli(*args, "--pool", "global_mean", "-q")
    before = open_cache(out).features("train", "enc_last", "global_mean")
    write_format_1(out)
    again = run_cli(*args, "--pool", "global_mean")  # the same request: nothing to add, the store stays format 1
    assert "up to date" in again.output and open_cache(out).format == 1
    proc = run_process(*args, "--pool", "global_mean,mean_max")
    assert_user_error(proc, f"--out {out}", "a format-1 cache", "--overwrite")
    assert open_cache(out).pools("train", "enc_last") == ["global_mean"]
    run_cli(*args, "--pool", "global_mean,mean_max", "--overwrite", "-q")
    cache = open_cache(out)
    assert cache.format == 2 and cache.pools("train", "enc_last") == ["global_mean", "mean_max"]
    np.testing.assert_array_equal(cache.features("train", "enc_last", "global_mean"), before)


def test_a_newer_format_is_refused(tmp_path):
    data = write_pfs(tmp_path / "d.h5", n=10, p=64, seed=3)
    out = tmp_path / "c.zarr"
    args = ["extract", "--ckpt", CKPT, "--data", f"train={data}", "--mask", "none", "--pool", "global_mean",
            "--out", out]
    run_cli(*args, "-q")
    _set_format(out, 3)
    with pytest.raises(FeatcacheError, match=r"cache format 3 is not one featcache .* reads \(1, 2\)"):
        open_cache(out)
    assert_user_error(run_process(*args), "cache format 3 is not one featcache", "upgrade featcache")
