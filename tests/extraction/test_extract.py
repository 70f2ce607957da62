"""featcache extract: reference features through the CLI, invariances, resume after SIGKILL, fingerprints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import featcache
from featcache.cache import CacheLock, open_cache
from featcache.common.errors import FeatcacheError

from ..helpers import CKPT, DATASET, MASK, REPO, assert_cli_error, assert_user_error, run_cli, run_process, write_pfs

TOL = 1e-4
POOLS = "global_mean,mean_max,seg_mean_K8"


@pytest.fixture(scope="module")
def fixture_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("fx") / "fx.zarr"
    run_cli("extract", "--ckpt", CKPT, "--data", f"test={DATASET}", "--noise", "stored", "--mask", MASK,
            "--layer", "enc_pre_latent", "--layer", "enc_last", "--layer", "input_flux", "--pool", POOLS,
            "--keep-maps", "--block-rows", "5", "--batch-size", "3", "--out", out, "--quiet")
    return out


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory):
    return write_pfs(tmp_path_factory.mktemp("data") / "s.h5", n=150, p=512, seed=1)


def extract(out, *extra, data=None, check=True):
    args = ["extract", "--ckpt", CKPT, "--data", data or f"test={DATASET}", "--mask", "none",
            "--pool", "global_mean,seg_mean_K4", "--out", out, "--quiet", *extra]
    return run_cli(*args, check=check)


def test_reference_features_through_cli(fixture_cache, reference):
    cache = featcache.open_cache(fixture_cache)
    assert cache.splits == ["test"] and cache.is_complete()
    assert cache.layers("test") == ["enc_pre_latent", "enc_last", "input_flux"]
    for layer in ("enc_pre_latent", "enc_last"):
        for pool in POOLS.split(","):
            got = cache.features("test", layer, pool)
            assert np.abs(got - reference[f"{layer}/{pool}"]).max() < TOL, (layer, pool)
        assert cache.feature_info("test", layer, "seg_mean_K8")["L"] == int(reference[f"{layer}/length"])
    np.testing.assert_array_equal(cache.index("test"), np.arange(12))
    np.testing.assert_array_equal(cache.mask, np.load(MASK))
    assert cache.labels("test", "log_g").shape == (12,)


def test_keep_maps_and_input_pseudo_layer(fixture_cache, reference):
    cache = featcache.open_cache(fixture_cache)
    maps = np.asarray(cache.maps("test", "enc_pre_latent")[:])
    assert np.abs(maps - reference["enc_4_forward"]).max() < TOL
    flux_mean = cache.features("test", "input_flux", "global_mean")[:, 0]
    np.testing.assert_allclose(flux_mean, reference["noisy_masked"].mean(1), rtol=1e-5)
    with pytest.raises(FeatcacheError, match="--keep-maps"):
        cache.maps("test", "input_flux")


def test_reverse_and_both_directions(tmp_path, reference):
    import torch

    from featcache.model.pooling import get_pooling

    for direction in ("reverse", "both"):
        out = tmp_path / f"{direction}.zarr"
        run_cli("extract", "--ckpt", CKPT, "--data", f"test={DATASET}", "--noise", "stored", "--mask", MASK,
                "--layer", "enc_last", "--pool", "seg_mean_K8", "--direction", direction, "--out", out, "-q")
        got = open_cache(out).features("test", "enc_last", "seg_mean_K8")
        rev = get_pooling("seg_mean_K8")(torch.from_numpy(reference["enc_5_reverse"])).numpy()
        if direction == "reverse":
            assert np.abs(got - rev).max() < TOL
        else:
            both = torch.from_numpy(np.concatenate([reference["enc_5_forward"], reference["enc_5_reverse"]], 1))
            assert got.shape == (12, 128)
            assert np.abs(got - get_pooling("seg_mean_K8")(both).numpy()).max() < TOL


def test_batch_size_invariance(tmp_path, synth_file):
    data = f"train={synth_file}"
    extract(tmp_path / "a.zarr", "--batch-size", "3", "--block-rows", "64", data=data)
    extract(tmp_path / "b.zarr", "--batch-size", "64", "--block-rows", "32", data=data)
    for pool in ("global_mean", "seg_mean_K4"):
        a = open_cache(tmp_path / "a.zarr").features("train", "enc_last", pool)
        b = open_cache(tmp_path / "b.zarr").features("train", "enc_last", pool)
        assert np.abs(a - b).max() < 1e-6


def test_row_slices_and_noise_draws(tmp_path, synth_file):
    full = tmp_path / "full.zarr"
    extract(full, data=f"train={synth_file}")
    part = tmp_path / "part.zarr"
    extract(part, "--noise-draws", "train=2", data=f"train={synth_file}:10:40")
    cache, whole = open_cache(part), open_cache(full)
    assert cache.n_rows("train") == 60 and cache.n_spectra("train") == 30
    np.testing.assert_array_equal(cache.index("train"), np.tile(np.arange(10, 40), 2))
    np.testing.assert_array_equal(cache.draws("train"), np.repeat([0, 1], 30))
    draw0 = cache.features("train", "enc_last", "global_mean", draw=0)
    assert np.abs(draw0 - whole.features("train", "enc_last", "global_mean")[10:40]).max() < 1e-6
    draw1 = cache.features("train", "enc_last", "global_mean", draw=1)
    assert np.abs(draw1 - draw0).max() > 1e-3  # another noise realisation
    np.testing.assert_array_equal(cache.labels("train", "log_g", draw=1), whole.labels("train", "log_g")[10:40])


def test_fingerprint_refusal_and_overwrite(tmp_path, synth_file):
    out = tmp_path / "c.zarr"
    data = f"train={synth_file}"
    extract(out, data=data)
    first = open_cache(out).fingerprint
    result = extract(out, data=data)  # same inputs: nothing to do
    assert "up to date" in result.output
    proc = run_process("extract", "--ckpt", CKPT, "--data", data, "--mask", "none", "--pool",
                       "global_mean,seg_mean_K4", "--noise-seed", "7", "--out", out)
    assert_user_error(proc, "made from other inputs", "seed 42 -> 7", "--overwrite")
    extract(out, "--noise-seed", "7", "--overwrite", data=data)
    assert open_cache(out).fingerprint != first


def test_changed_data_file_is_named(tmp_path):
    path = write_pfs(tmp_path / "d.h5", n=20, p=512, seed=3)
    out = tmp_path / "c.zarr"
    extract(out, data=f"train={path}")
    write_pfs(path, n=20, p=512, seed=4)
    with pytest.raises(AssertionError, match="split 'train': file content changed"):
        extract(out, data=f"train={path}")


def test_adding_a_pooling_computes_only_it(tmp_path, synth_file):
    out = tmp_path / "c.zarr"
    data = f"train={synth_file}"
    run_cli("extract", "--ckpt", CKPT, "--data", data, "--mask", "none", "--pool", "global_mean", "--out", out, "-q")
    chunk = out / "train" / "features" / "enc_last" / "global_mean" / "c" / "0" / "0"
    before = chunk.stat().st_mtime_ns
    result = run_cli("extract", "--ckpt", CKPT, "--data", data, "--mask", "none", "--pool", "global_mean,mean_max",
                     "--out", out)
    assert "4 arrays added" not in result.output and "2 arrays added" in result.output  # 2 layers x mean_max
    assert chunk.stat().st_mtime_ns == before
    fresh = tmp_path / "fresh.zarr"
    run_cli("extract", "--ckpt", CKPT, "--data", data, "--mask", "none", "--pool", "mean_max", "--out", fresh, "-q")
    np.testing.assert_array_equal(open_cache(out).features("train", "enc_last", "mean_max"),
                                  open_cache(fresh).features("train", "enc_last", "mean_max"))
    assert open_cache(out).pools("train", "enc_last") == ["global_mean", "mean_max"]


def test_lock_refuses_a_second_writer(tmp_path, synth_file):
    out = tmp_path / "c.zarr"
    with CacheLock(out).acquire("a test holding the lock"):
        proc = run_process("extract", "--ckpt", CKPT, "--data", f"train={synth_file}", "--mask", "none",
                           "--out", out)
    assert_user_error(proc, "is being written by pid", "a test holding the lock")


def test_kill_and_resume_is_bitwise_equal(tmp_path):
    data = write_pfs(tmp_path / "big.h5", n=960, p=1024, seed=5)
    args = [sys.executable, "-m", "featcache", "extract", "--random-init", "--arch", "l6e16k9s1bn1d1",
            "--data", f"train={data}", "--mask", "none", "--pool", "global_mean,seg_mean_K8",
            "--block-rows", "32", "--batch-size", "16", "--quiet"]
    reference_out = tmp_path / "ref.zarr"
    subprocess.run([*args, "--out", reference_out], check=True, cwd=REPO, timeout=300)
    out = tmp_path / "killed.zarr"
    markers = out / "_done" / "g0" / "train" / "c"
    for kill_after_blocks in (2, 9):
        proc = subprocess.Popen([*args, "--out", out], cwd=REPO)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if markers.exists() and len(os.listdir(markers)) >= kill_after_blocks:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "extraction finished before it could be killed; make the data larger"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        cache = open_cache(out)
        assert not cache.is_complete()
        with pytest.raises(FeatcacheError, match="incomplete"):
            cache.features("train", "enc_last", "global_mean")
    done = subprocess.run([*args, "--out", out], cwd=REPO, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = open_cache(out), open_cache(reference_out)
    assert a.is_complete() and a.fingerprint == b.fingerprint
    for layer in ("enc_pre_latent", "enc_last"):
        for pool in ("global_mean", "seg_mean_K8"):
            assert np.array_equal(a.features("train", layer, pool), b.features("train", layer, pool))


@pytest.mark.parametrize("extra,fragments", [
    (["--layer", "enc_99"], ["unknown layer 'enc_99'", "enc_pre_latent", "input_flux"]),
    (["--pool", "avg"], ["unknown pooling 'avg'", "seg_mean_K{K}"]),
    (["--pool", "seg_mean_K300"], ["K=300 segments exceed the map length L'=217"]),
    (["--data", f"test={DATASET}"], ["split name 'test' given twice"]),
    (["--mask", "MASKSHORT"], ["has shape (10,), expected (4096,)"]),
    (["--noise", "stored", "--data", "other=NOSTORED"], ["no 'noisy' array"]),
    (["--device", "cuda:0"], ["CUDA is not available"]),
    (["--noise-draws", "valid=2"], ["unknown split 'valid'"]),
    (["--mask", "quantile:0.001", "--layer", "enc_last"], ["too few for this depth"]),
])
def test_bad_inputs_fail_before_work(tmp_path, extra, fragments):
    if "cuda:0" in extra:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    np.save(tmp_path / "short.npy", np.ones(10, dtype=bool))
    nostored = write_pfs(tmp_path / "nostored.h5", n=4, p=4096)
    extra = [str(tmp_path / "short.npy") if e == "MASKSHORT" else e.replace("NOSTORED", str(nostored))
             for e in extra]
    out = tmp_path / "bad.zarr"
    result = run_cli("extract", "--ckpt", CKPT, "--data", f"test={DATASET}", "--out", out, *extra, check=False)
    assert_cli_error(result, *fragments)
    assert not (out / "zarr.json").exists()


def test_python_api_errors_list_choices(fixture_cache):
    cache = open_cache(fixture_cache)
    with pytest.raises(FeatcacheError, match="unknown split 'train'; choose from: test"):
        cache.features("train", "enc_last", "mean_max")
    with pytest.raises(FeatcacheError, match="unknown layer in split 'test' 'enc_1'; choose from: enc_pre_latent"):
        cache.features("test", "enc_1", "mean_max")
    with pytest.raises(FeatcacheError, match="choose from: global_mean, mean_max, seg_mean_K8"):
        cache.features("test", "enc_last", "global_max")
    with pytest.raises(FeatcacheError, match="available: T_eff"):
        cache.labels("test", "logg")
    assert zarr.open_group(str(fixture_cache), mode="r")["test/features/enc_last/mean_max"].shape == (12, 16)


def test_inspect_cache(fixture_cache):
    out = run_cli("inspect", fixture_cache).output
    assert "complete         yes" in out and "seg_mean_K8 (64)" in out and "fingerprint" in out


@pytest.mark.parametrize("case,fragments", [
    ("missing_file", ["no such file"]),
    ("missing_key", ["missing key 'dataset/arrays/error/value'"]),
    ("shape", ["shape mismatch", "(8, 511)"]),
    ("no_rows", ["split 'test' has no rows"]),
])
def test_bad_data_files_fail_in_one_line(tmp_path, case, fragments):
    import h5py

    path = tmp_path / "bad.h5"
    spec = f"test={path}"
    if case == "missing_key":
        write_pfs(path, n=8, p=512)
        with h5py.File(path, "a") as f:
            del f["dataset/arrays/error"]
    elif case == "shape":
        write_pfs(path, n=8, p=512, flux_shape=(8, 511))
    elif case == "no_rows":
        write_pfs(path, n=8, p=512)
        spec = f"test={path}:5:5"
    proc = run_process("extract", "--ckpt", CKPT, "--data", spec, "--mask", "none", "--out", tmp_path / "c.zarr")
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "c.zarr" / "zarr.json").exists()


def test_convolution_modes_agree_and_each_is_reproducible(tmp_path, synth_file):
    """--conv fft and --conv direct give the same features to float32 rounding; each is bitwise the same
    from one run to the next; and the mode is part of the fingerprint (a resume never mixes the two)."""
    data = f"train={synth_file}"
    caches = {}
    for name, conv in (("fft", "fft"), ("fft-again", "fft"), ("direct", "direct")):
        caches[name] = tmp_path / f"{name}.zarr"
        extract(caches[name], "--conv", conv, data=data)
    a, again, b = (open_cache(caches[n]) for n in ("fft", "fft-again", "direct"))
    for pool in ("global_mean", "seg_mean_K4"):
        assert np.array_equal(a.features("train", "enc_last", pool), again.features("train", "enc_last", pool))
        assert np.abs(a.features("train", "enc_last", pool) - b.features("train", "enc_last", pool)).max() < 1e-5
    assert a.fingerprint == again.fingerprint != b.fingerprint
    assert a.meta["parts"]["compute"]["conv"] == "fft:0,1,2,3,4,5"
    assert b.meta["parts"]["compute"]["conv"] == "direct"
    result = extract(caches["direct"], "--conv", "fft", data=data, check=False)
    assert_cli_error(result, "compute: conv direct -> fft:0,1,2,3,4,5")


def test_layer_all_extracts_every_depth_against_the_reference(tmp_path, reference):
    """--layer all: enc_0 .. enc_5 of the l5 fixture, each depth's global mean equal to the reference maps."""
    out = tmp_path / "all.zarr"
    run_cli("extract", "--ckpt", CKPT, "--data", f"test={DATASET}", "--noise", "stored", "--mask", MASK,
            "--layer", "all", "--pool", "global_mean", "--out", out, "--quiet")
    cache = featcache.open_cache(out)
    assert cache.layers("test") == [f"enc_{i}" for i in range(6)]
    for depth in (2, 3, 4, 5):
        got = cache.features("test", f"enc_{depth}", "global_mean")
        assert np.abs(got - reference[f"enc_{depth}_forward"].mean(axis=2)).max() < TOL, depth
