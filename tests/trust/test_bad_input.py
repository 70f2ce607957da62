"""Hostile input, as a new user would give it: every command ends a user mistake in one `Error:` line naming
the file, key or option, exit status 2, and nothing created or changed on disk."""

from __future__ import annotations

import os
import shutil

import h5py
import pytest

from ..helpers import CKPT, DATASET, assert_cli_error, assert_user_error, run_cli, run_process, write_pfs


def snapshot(root) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            stat = os.lstat(path)
            out[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files a user might pass, built once: data, a labelled cache, a fit run; tests work in copies."""
    root = tmp_path_factory.mktemp("hostile")
    data = write_pfs(root / "d.h5", n=40, p=512, seed=21)
    cache = root / "c.zarr"
    run_cli("extract", "--ckpt", CKPT, "--data", f"train={data}:0:24", "--data", f"val={data}:24:32",
            "--data", f"test={data}:32:40", "--layer", "enc_last", "--pool", "global_mean", "--mask", "none", "-q",
            "--out", cache)
    run = root / "run"
    run_cli("fit", "--cache", cache, "--layer", "enc_last", "--pool", "global_mean", "--target", "log_g", "-q",
            "--out", run)
    return {"data": data, "cache": cache, "run": run}


def refused(tmp_path, *args, fragments=()):
    """Run a command in tmp_path that must be refused; check the contract and that the tree is unchanged."""
    before = snapshot(tmp_path)
    result = run_cli(*args, check=False)
    assert_cli_error(result, *fragments)
    assert snapshot(tmp_path) == before, "a refused run changed files on disk"
    return result


def negative_error_file(path):
    write_pfs(path, n=20, p=512, seed=3)
    with h5py.File(path, "a") as f:
        f["dataset/arrays/error/value"][13, 100] = -0.2
    return path


# -- physical inputs -------------------------------------------------------------------------------------
def test_negative_error_values_are_refused_before_anything_is_written(tmp_path):
    data = negative_error_file(tmp_path / "neg.h5")
    for mask in ("none", "quantile:0.85"):
        refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"train={data}", "--mask", mask,
                "--out", tmp_path / "c.zarr", "-q", fragments=("neg.h5", "negative error value -0.2", "row 13"))
    refused(tmp_path, "finetune", "--ckpt", CKPT, "--data", f"train={data}:0:10", "--data", f"val={data}:10:20",
            "--val-split", "val", "--test-split", "", "--target", "log_g", "--mask", "none",
            "--out", tmp_path / "ft", "-q", fragments=("negative error value",))


@pytest.mark.parametrize("level", ["-1", "nan", "inf", "0"])
def test_noise_level_must_be_positive_and_finite(tmp_path, inputs, level):
    common = ["--data", f"train={inputs['data']}:0:24", "--noise-level", level, "-q"]
    refused(tmp_path, "extract", "--ckpt", CKPT, *common, "--out", tmp_path / "c.zarr",
            fragments=("--noise-level must be a positive finite number",))
    refused(tmp_path, "finetune", "--ckpt", CKPT, *common, "--val-split", "", "--test-split", "", "--target",
            "log_g", "--out", tmp_path / "ft", fragments=("--noise-level must be a positive finite number",))
    refused(tmp_path, "pretrain", "--data", f"train={DATASET}", "--noise-level", level, "-q",
            "--out", tmp_path / "p.ckpt", fragments=("--noise-level must be a positive finite number",))


@pytest.mark.parametrize("args,fragments", [
    (["pretrain", "--kernel-size", "4"], ["--kernel-size 4: must be odd", "blind spot"]),
    (["pretrain", "--kernel-size", "0"], ["--kernel-size 0: must be an integer >= 1"]),
    (["pretrain", "--embed-dim", "0"], ["--embed-dim 0: must be an integer >= 1"]),
    (["pretrain", "--dilation", "0"], ["--dilation 0: must be an integer >= 1"]),
    (["pretrain", "--num-layers", "1"], ["--num-layers 1: must be an integer >= 2"]),
    (["extract", "--random-init", "--arch", "l5e8k4s1bn1d1"], ["--arch l5e8k4s1bn1d1: kernel size 4: must be odd"]),
    (["extract", "--random-init", "--arch", "l5e0k5s1bn1d1"], ["--arch l5e0k5s1bn1d1: embed dim 0"]),
    (["extract", "--ckpt", "CKPT", "--dilation", "0"], ["--dilation 0: must be an integer >= 1"]),
    (["extract", "--random-init", "--ckpt", "CKPT", "--dilation", "-2"], ["--dilation -2: must be an integer >= 1"]),
])
def test_architectures_that_break_the_model_are_refused(tmp_path, args, fragments):
    args = [str(CKPT) if a == "CKPT" else a for a in args]
    out = ["--out", tmp_path / ("p.ckpt" if args[0] == "pretrain" else "c.zarr")]
    refused(tmp_path, *args, "--data", f"train={DATASET}", *out, "-q", fragments=fragments)


@pytest.mark.parametrize("mag", ["nan", "inf", "-40"])
def test_synth_magnitude_must_be_finite(tmp_path, mag):
    refused(tmp_path, "synth", tmp_path / "s.h5", "--n", "3", "--seed", "1", "--mag", mag, fragments=("--mag",))


# -- leakage and selection on test -----------------------------------------------------------------------
def test_overlapping_splits_are_refused_even_through_a_copy(tmp_path, inputs):
    data = inputs["data"]
    copy = tmp_path / "copy.h5"
    shutil.copy(data, copy)
    for val in (f"val={data}:20:30", f"val={copy}:20:30"):
        refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"train={data}:0:24", "--data", val, "-q",
                "--out", tmp_path / "c.zarr", fragments=("'train' (rows 0:24) and 'val' (rows 20:30)", "share rows"))
    refused(tmp_path, "finetune", "--ckpt", CKPT, "--data", f"train={data}:0:24", "--data", f"val={copy}:20:30",
            "--test-split", "", "--target", "log_g", "--out", tmp_path / "ft", "-q", fragments=("share rows 20:24",))


def test_validation_on_the_test_split_is_refused(tmp_path, inputs):
    refused(tmp_path, "fit", "--cache", inputs["cache"], "--layer", "enc_last", "--pool", "global_mean",
            "--target", "log_g", "--val-split", "test", "--out", tmp_path / "r",
            fragments=("--val-split and --test-split both name split 'test'",))
    refused(tmp_path, "compare", "--cache", inputs["cache"], "--target", "log_g", "--val-split", "test",
            "--out", tmp_path / "cmp", fragments=("both name split 'test'",))


@pytest.mark.parametrize("rows,fragment", [(":0:999", "row 999 is outside the file, which has 40 rows"),
                                           (":-50:", "row -50 is outside the file"),
                                           (":30:10", "has no rows")])
def test_row_slices_are_never_clamped(tmp_path, inputs, rows, fragment):
    refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"train={inputs['data']}{rows}", "-q",
            "--out", tmp_path / "c.zarr", fragments=(fragment,))


# -- the fingerprint sees what changes the numbers ---------------------------------------------------------
def test_a_file_edited_where_sampling_would_not_look_is_seen(tmp_path):
    data = write_pfs(tmp_path / "d.h5", n=300, p=512, seed=4)
    out = tmp_path / "c.zarr"
    args = ["extract", "--ckpt", CKPT, "--data", f"train={data}", "--mask", "none", "--pool", "global_mean",
            "--out", out, "-q"]
    run_cli(*args)
    with h5py.File(data, "a") as f:  # rows 150..151: between the 8 sampled 16-row blocks
        f["dataset/arrays/flux/value"][150, :10] += 0.01
    refused(tmp_path, *args, fragments=("split 'train': file content changed", "--overwrite"))
    # the cheap mode is explicit: it identifies the file by sampled blocks, and says so when compared
    refused(tmp_path, *args, "--hash", "sampled",
            fragments=("identified its file by --hash full, this run by --hash sampled",))


def test_another_batch_size_is_another_computation(tmp_path, inputs):
    out = tmp_path / "c.zarr"
    args = ["extract", "--ckpt", CKPT, "--data", f"train={inputs['data']}:0:24", "--mask", "none", "--pool",
            "global_mean", "--out", out, "-q"]
    run_cli(*args, "--batch-size", "8")
    refused(tmp_path, *args, "--batch-size", "16", "--layer", "enc_0",
            fragments=("compute: batch_size 8 -> 16", "--overwrite"))


def test_predict_refuses_features_made_another_way(tmp_path, inputs):
    data = inputs["data"]
    for i, (extra, fragment) in enumerate(((["--direction", "reverse"], "direction forward -> reverse"),
                            (["--mask", "quantile:0.9"], "mask.n_kept 512 -> "),
                            (["--noise-level", "0.5"], "noise.level 1.0 -> 0.5"),
                            (["--store-dtype", "float16"], "store_dtype float32 -> float16"))):
        other = tmp_path / "other.zarr"
        run_cli("extract", "--ckpt", CKPT, "--data", f"test={data}:32:40", "--layer", "enc_last", "--pool",
                "global_mean", "--mask", "none", *extra, "--out", other, "-q", "--overwrite")
        refused(tmp_path, "predict", "--head", inputs["run"], "--cache", other, "--split", "test",
                "--out", tmp_path / f"refused-{i}.csv", fragments=("made with another encoder or other settings",
                                                                   fragment, "--force"))
        forced = run_cli("predict", "--head", inputs["run"], "--cache", other, "--split", "test",
                         "--out", tmp_path / "p.csv", "--force", "--overwrite")
        assert "warning: --force: applying the head to features made another way" in forced.stderr
    same = tmp_path / "same.zarr"
    run_cli("extract", "--ckpt", CKPT, "--data", f"test={data}:32:40", "--layer", "enc_last", "--pool",
            "global_mean", "--mask", "none", "--out", same, "-q")
    ok = run_cli("predict", "--head", inputs["run"], "--cache", same, "--split", "test", "--out", tmp_path / "q.csv")
    assert "warning" not in ok.stderr and "8 predictions" in ok.output


# -- data loss and races --------------------------------------------------------------------------------------
def test_existing_outputs_are_kept_unless_overwrite(tmp_path, inputs):
    precious = tmp_path / "real.h5"
    shutil.copy(inputs["data"], precious)
    refused(tmp_path, "synth", precious, "--n", "3", "--seed", "1", fragments=("real.h5: exists", "--overwrite"))
    run = tmp_path / "run"
    shutil.copytree(inputs["run"], run)
    fit = ["fit", "--cache", inputs["cache"], "--layer", "enc_last", "--pool", "global_mean", "--target", "T_eff",
           "--out", run, "-q"]
    refused(tmp_path, *fit, fragments=("holds an earlier run", "--overwrite"))
    (run / "encoder.ckpt").write_text("from a finetune run")
    run_cli(*fit, "--overwrite")
    assert not (run / "encoder.ckpt").exists(), "--overwrite left a file of the earlier run beside the new one"
    assert "T_eff" in (run / "metrics.json").read_text()
    (tmp_path / "p.csv").write_text("keep me")
    refused(tmp_path, "predict", "--head", run, "--cache", inputs["cache"], "--split", "test",
            "--out", tmp_path / "p.csv", fragments=("p.csv: exists", "--overwrite"))
    refused(tmp_path, "bench", "--quick", "--out", tmp_path / "p.csv", fragments=("exists", "--overwrite"))


def test_the_lock_holds_through_a_symlink(tmp_path, inputs):
    from featcache.cache.lock import CacheLock

    real = tmp_path / "real.zarr"
    shutil.copytree(inputs["cache"], real)
    (tmp_path / "link.zarr").symlink_to(real)
    with CacheLock(real).acquire("a writer holding the real path"):
        proc = run_process("extract", "--ckpt", CKPT, "--data", f"train={inputs['data']}:0:24", "--data",
                           f"val={inputs['data']}:24:32", "--data", f"test={inputs['data']}:32:40", "--layer",
                           "enc_last", "--layer", "enc_0", "--pool", "global_mean", "--mask", "none",
                           "--out", tmp_path / "sub" / ".." / "link.zarr")
    assert_user_error(proc, "is being written by pid", "a writer holding the real path")


def test_a_shard_facing_a_cache_of_other_inputs_fails_at_once(tmp_path, inputs):
    out = tmp_path / "c.zarr"
    shutil.copytree(inputs["cache"], out)
    proc = run_process("extract", "--ckpt", CKPT, "--data", f"train={inputs['data']}:0:24", "--layer", "enc_last",
                       "--pool", "global_mean", "--mask", "none", "--noise-seed", "9", "--shard", "1/2",
                       "--out", out, timeout=120)
    assert_user_error(proc, "shard 1/2", "made from other inputs", "noise: seed 42 -> 9")


# -- user mistakes that used to end in a traceback ------------------------------------------------------------
def test_out_that_is_a_file(tmp_path, inputs):
    target = tmp_path / "taken"
    target.write_text("x")
    common = ["--data", f"train={inputs['data']}:0:24", "-q"]
    refused(tmp_path, "extract", "--ckpt", CKPT, *common, "--out", target, fragments=("is a file",))
    refused(tmp_path, "fit", "--cache", inputs["cache"], "--layer", "enc_last", "--pool", "global_mean",
            "--target", "log_g", "--out", target, fragments=("is a file",))
    refused(tmp_path, "compare", "--cache", inputs["cache"], "--target", "log_g", "--out", target,
            fragments=("is a file",))
    refused(tmp_path, "finetune", "--ckpt", CKPT, *common, "--val-split", "", "--test-split", "", "--target",
            "log_g", "--out", target, fragments=("is a file",))
    refused(tmp_path, "pretrain", "--data", f"train={DATASET}", "--out", target, fragments=("expected a .ckpt",))


def test_ckpt_that_is_a_directory_and_bad_split_names(tmp_path, inputs):
    refused(tmp_path, "extract", "--ckpt", tmp_path, "--data", f"train={inputs['data']}", "--out",
            tmp_path / "c.zarr", fragments=("is a directory, expected a checkpoint file",))
    for name in ("..", "mask", ".hidden", "a/b"):
        refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"{name}={inputs['data']}", "--out",
                tmp_path / "c.zarr", fragments=("--data",))


def test_over_long_names(tmp_path, inputs):
    long = tmp_path / ("x" * 300 + ".zarr")
    refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"train={inputs['data']}:0:24", "--out", long, "-q",
            fragments=("File name too long",))


@pytest.mark.parametrize("text,fragment", [("batch_size: [1, 2]\n", "key 'batch_size' takes a single value"),
                                           ("layer: {a: 1}\n", "key 'layer' takes a list of values"),
                                           ("mask: {quantile: 0.85}\n", "key 'mask' takes a single value")])
def test_wrong_typed_config_values(tmp_path, inputs, text, fragment):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    refused(tmp_path, "extract", "--config", config, "--ckpt", CKPT, "--data", f"train={inputs['data']}",
            "--out", tmp_path / "c.zarr", fragments=(fragment,))


def test_a_damaged_hdf5_chunk_names_the_file_and_rows(tmp_path):
    """A compressed chunk with garbage in it (a bad disk block): the full identity pass reads every chunk, so
    the damage is found before any cache exists, and the message names the file, the array and the rows."""
    data = write_pfs(tmp_path / "d.h5", n=64, p=512, seed=5)
    chunked = tmp_path / "chunked.h5"
    with h5py.File(data, "r") as src, h5py.File(chunked, "w") as dst:
        for key in ("spectrumdataset/wave", "dataset/arrays/flux/value", "dataset/arrays/error/value"):
            dst.create_dataset(key, data=src[key][()], chunks=(8, 512) if "arrays" in key else None,
                               compression="gzip" if "error" in key else None)
    with h5py.File(chunked, "r") as f:
        info = f["dataset/arrays/error/value"].id.get_chunk_info(3)
    with open(chunked, "r+b") as handle:
        handle.seek(info.byte_offset + 5)
        handle.write(b"\xff" * 64)
    data.unlink()
    refused(tmp_path, "extract", "--ckpt", CKPT, "--data", f"train={chunked}", "--mask", "none",
            "--out", tmp_path / "c.zarr", fragments=("chunked.h5: cannot read rows", "dataset/arrays/error/value",
                                                     "damaged"))


def test_a_damaged_cache_names_the_array(tmp_path, inputs):
    cache = tmp_path / "c.zarr"
    shutil.copytree(inputs["cache"], cache)
    chunk = cache / "train" / "features" / "enc_last" / "global_mean" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    refused(tmp_path, "fit", "--cache", cache, "--layer", "enc_last", "--pool", "global_mean", "--target", "log_g",
            "--out", tmp_path / "r", fragments=("cannot read 'train/features/enc_last/global_mean' rows",
                                                "damaged chunk"))
    meta = cache / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    refused(tmp_path, "inspect", cache, fragments=("damaged cache metadata",))
    refused(tmp_path, "fit", "--cache", cache, "--layer", "enc_last", "--pool", "global_mean", "--target", "log_g",
            "--out", tmp_path / "r", fragments=("damaged cache metadata",))


# -- folders that cannot take the output -----------------------------------------------------------------------
def test_a_read_only_folder_is_one_line(tmp_path, inputs):
    if not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
        pytest.skip("no read-only /sys here")
    common = ["--data", f"train={inputs['data']}:0:24", "-q"]
    for args in (["extract", "--ckpt", CKPT, *common, "--out", "/sys/featcache-test.zarr"],
                 ["synth", "/sys/featcache-test.h5", "--n", "2", "--seed", "1"],
                 ["fit", "--cache", inputs["cache"], "--layer", "enc_last", "--pool", "global_mean", "--target",
                  "log_g", "--out", "/sys/featcache-run"]):
        proc = run_process(*args)
        assert_user_error(proc, "/sys/featcache-test" if "run" not in str(args[-1]) else "/sys/featcache-run")


def test_a_full_disk_is_one_line_and_never_a_complete_cache(tmp_path, tiny_disk):
    data = write_pfs(tmp_path / "d.h5", n=400, p=1024, seed=6)
    out = tiny_disk / "c.zarr"
    proc = run_process("extract", "--random-init", "--arch", "l4e8k5s1bn1d1", "--data", f"train={data}",
                       "--mask", "none", "--pool", "none", "--block-rows", "64", "--out", out)
    assert_user_error(proc, "No space left on device")
    if (out / "zarr.json").exists():
        from featcache.cache.reader import FeatureCache

        assert not FeatureCache(out).is_complete()


def test_the_os_error_net_names_the_file():
    import errno

    from featcache_cli.common import os_error_message

    message = os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/c.zarr/x"))
    assert message == "/data/c.zarr/x: No space left on device; free some space or write elsewhere"
