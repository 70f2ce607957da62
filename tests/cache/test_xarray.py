"""The cache in xarray: `xarray.open_datatree(cache, engine="zarr")` opens a cache made by `featcache extract`
(every array names its dimensions, each pooling its own feature dimension, index/draw and labels are
coordinates on row), and `FeatureCache.to_xarray(split)` is a lazy Dataset equal to what the reader returns.
Without xarray, to_xarray names the extra that provides it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from featcache.cache import open_cache
from featcache.common.errors import FeatcacheError

from ..helpers import CKPT, run_cli, write_pfs

FEATURES = [("enc_last", "global_mean"), ("enc_last", "seg_mean_K4"), ("input_flux", "global_mean"),
            ("input_flux", "seg_mean_K4"), ("input_error", "global_mean"), ("input_error", "seg_mean_K4")]


@pytest.fixture(scope="module")
def maps_cache(tmp_path_factory):
    """Two splits of different sizes, the maps of two layers (different channels and lengths) kept."""
    root = tmp_path_factory.mktemp("maps")
    data = write_pfs(root / "d.h5", n=30, p=64, seed=5)
    run_cli("extract", "--ckpt", CKPT, "--data", f"train={data}:0:20", "--data", f"val={data}:20:30",
            "--layer", "enc_0", "--layer", "enc_last", "--pool", "global_mean", "--mask", "none", "--keep-maps",
            "--block-rows", "8", "-q", "--out", root / "m.zarr")
    return root / "m.zarr"


def test_open_datatree_names_every_dimension(labelled_caches):
    xr = pytest.importorskip("xarray")
    path = labelled_caches["pretrained"]
    cache = open_cache(path)
    tree = xr.open_datatree(path, engine="zarr")
    assert tree["mask"].dims == ("pixel",) and tree["wave"].dims == ("kept_pixel",)
    for split in cache.splits:
        node = tree[f"{split}/features/enc_last"]
        for pool in ("global_mean", "seg_mean_K4"):
            variable = node[pool]
            assert variable.dims == ("row", f"feature_{pool}")
            np.testing.assert_array_equal(variable.values, cache.features(split, "enc_last", pool))
        assert node.sizes["feature_global_mean"] == 8 and node.sizes["feature_seg_mean_K4"] == 32
        rows = tree[split]
        assert set(rows.coords) == {"index", "draw"} and rows.coords["draw"].dims == ("row",)
        np.testing.assert_array_equal(rows.coords["index"].values, cache.index(split))
        np.testing.assert_array_equal(rows.coords["draw"].values, cache.draws(split))
        labels = tree[f"{split}/labels"]
        # snr: the per-spectrum S/N the report bins by
        assert set(labels.coords) == set(cache.label_names(split)) == {"T_eff", "log_g", "snr"}
        assert labels.coords["log_g"].dims == ("row",) and not labels.data_vars
        np.testing.assert_array_equal(labels.coords["log_g"].values, cache.labels(split, "log_g"))
    assert tree["train"].sizes["row"] == 400 and tree["val"].sizes["row"] == 50  # train has two noise draws


def test_the_issues_open_zarr_call_works(labelled_caches):
    """Every pooling named its second dimension `feature` in format 1, so a layer's group did not open."""
    xr = pytest.importorskip("xarray")
    group = xr.open_zarr(labelled_caches["pretrained"], group="train/features/input_flux")
    assert group["global_mean"].dims == ("row", "feature_global_mean")
    assert group.sizes["feature_global_mean"] == 1 and group.sizes["feature_seg_mean_K4"] == 4


def test_maps_and_done_markers_have_their_own_dimensions(maps_cache):
    xr = pytest.importorskip("xarray")
    tree = xr.open_datatree(maps_cache, engine="zarr")
    maps = tree["train/maps"]
    assert maps["enc_0"].dims == ("row", "channel_enc_0", "position_enc_0")
    assert maps["enc_last"].dims == ("row", "channel_enc_last", "position_enc_last")
    assert maps.sizes["position_enc_0"] != maps.sizes["position_enc_last"]
    np.testing.assert_array_equal(maps["enc_last"].values, open_cache(maps_cache).maps("train", "enc_last")[:])
    done = tree["_done/g0"]
    assert done["train"].sizes == {"block_train": 3} and done["val"].sizes == {"block_val": 2}
    assert bool(done["train"].all()) and bool(done["val"].all())


def test_to_xarray_is_the_reader_lazily(labelled_caches):
    pytest.importorskip("xarray")
    dask_array = pytest.importorskip("dask.array")
    cache = open_cache(labelled_caches["pretrained"])
    ds = cache.to_xarray("train")
    assert list(ds.data_vars) == [f"{layer}/{pool}" for layer, pool in FEATURES]
    for layer, pool in FEATURES:
        variable = ds[f"{layer}/{pool}"]
        assert variable.dims == ("row", f"feature_{layer}_{pool}")
        assert isinstance(variable.data, dask_array.Array)
        assert variable.attrs["pooling"] == pool and variable.attrs["layer"] == layer
        np.testing.assert_array_equal(variable.values, cache.features("train", layer, pool))
    assert set(ds.coords) == {"index", "draw", "T_eff", "log_g", "snr"}
    np.testing.assert_array_equal(ds["snr"].values, cache.labels("train", "snr"))
    assert all(ds.coords[name].dims == ("row",) for name in ds.coords)
    np.testing.assert_array_equal(ds["log_g"].values, cache.labels("train", "log_g"))
    np.testing.assert_array_equal(ds["index"].values, cache.index("train"))
    np.testing.assert_array_equal(ds["draw"].values, cache.draws("train"))
    assert ds.attrs["fingerprint"] == cache.fingerprint and ds.attrs["split"] == "train"
    assert ds.attrs["format"] == 2 and ds.sizes["row"] == 400


def test_to_xarray_selects_a_draw_and_features(labelled_caches):
    pytest.importorskip("xarray")
    cache = open_cache(labelled_caches["pretrained"])
    ds = cache.to_xarray("train", features=["enc_last/seg_mean_K4", ("input_flux", "global_mean")], draw=1)
    assert list(ds.data_vars) == ["enc_last/seg_mean_K4", "input_flux/global_mean"]
    assert ds.sizes["row"] == 200 and ds.attrs["draw"] == 1 and set(ds["draw"].values.tolist()) == {1}
    np.testing.assert_array_equal(ds["enc_last/seg_mean_K4"].values,
                                  cache.features("train", "enc_last", "seg_mean_K4", draw=1))
    np.testing.assert_array_equal(ds["log_g"].values, cache.labels("train", "log_g", draw=1))
    high = ds.where(ds.log_g > 3, drop=True)  # labels are loaded coordinates: selecting by them is immediate
    assert 0 < high.sizes["row"] < 200 and bool((high.log_g > 3).all())
    with pytest.raises(FeatcacheError, match="unknown pooling of enc_last in split 'train' 'mean_max'"):
        cache.to_xarray("train", features=["enc_last/mean_max"])
    with pytest.raises(FeatcacheError, match="expected 'LAYER/POOL'"):
        cache.to_xarray("train", features=["enc_last"])
    with pytest.raises(FeatcacheError, match="has draws 0..1, not 2"):
        cache.to_xarray("train", draw=2)


@pytest.mark.parametrize("module", ["xarray", "dask.array"])
def test_to_xarray_without_the_extra_names_it(labelled_caches, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import xarray` now raises ImportError, as when absent
    cache = open_cache(labelled_caches["pretrained"])
    with pytest.raises(FeatcacheError) as raised:
        cache.to_xarray("train")
    message = str(raised.value)
    assert "\n" not in message and "pip install 'featcache[xarray]'" in message
    assert f"({module.split('.')[0]} is not installed)" in message
