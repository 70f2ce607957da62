"""End to end on the embedded default: a head fitted on clean synthetic spectra predicts log g for observed-like
synthetic spectra read from PFS-format FITS (exported, imported), and the transfer report shows the shift."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featcache.demo import DEMO_ENCODER
from tests.helpers import assert_cli_error, run_cli

MASK = DEMO_ENCODER.with_suffix(".mask.npy")
FEATURE = ["--layer", "enc_3", "--pool", "global_mean", "--mask", str(MASK), "--quiet"]


@pytest.mark.slow
def test_sim_to_observed_end_to_end(tmp_path):
    d = tmp_path
    for name, n, seed in (("train", 160, 4301), ("val", 60, 4302), ("test", 60, 4303), ("obs", 60, 4304)):
        run_cli("synth", d / f"{name}.h5", "--n", n, "--seed", seed, "--workers", "1", "--quiet")
    run_cli("export", d / "obs.h5", d / "pfsCoadd-obs.fits", "--catalogue", d / "labels.csv", "--cosmic-rays",
            "0.002", "--quiet")
    out = run_cli("import", d / "pfsCoadd-obs.fits", "--reference", d / "train.h5", "--out", d / "observed.h5",
                  "--catalogue", d / "labels.csv", "--label", "log_g", "--label", "T_eff", "--quiet").output
    assert "60 spectra ->" in out and "60 of 60 targets matched by id" in out
    run_cli("extract", "--ckpt", DEMO_ENCODER, "--data", f"train={d / 'train.h5'}", "--data", f"val={d / 'val.h5'}",
            "--data", f"test={d / 'test.h5'}", "--out", d / "sim.zarr", *FEATURE)
    run_cli("extract", "--ckpt", DEMO_ENCODER, "--data", f"observed={d / 'observed.h5'}", "--noise", "stored",
            "--out", d / "obs.zarr", *FEATURE)
    run_cli("fit", "--cache", d / "sim.zarr", "--layer", "enc_3", "--pool", "global_mean", "--target", "log_g",
            "--head", "mlp_1_gauss", "--max-epochs", "4", "--out", d / "run", "--quiet")
    # predict refuses the observed cache (its noise differs) unless told it is another data source
    assert_cli_error(run_cli("predict", "--head", d / "run", "--cache", d / "obs.zarr", "--split", "observed",
                             "--out", d / "p.csv", check=False), "noise")
    result = run_cli("transfer", "--head", d / "run", "--cache", d / "obs.zarr", "--split", "observed",
                     "--out", d / "report", "--n-boot", "200")
    assert "60 observed vs 60 simulated rows" in result.output
    report = json.loads((d / "report" / "transfer.json").read_text())
    assert report["reference"]["split"] == "test" and report["train"]["n"] == 160
    assert "noise.mode generated -> stored" in report["data_source_differences"]
    dist = report["distance"]
    assert dist["reference"]["fraction_beyond"] <= 0.05 and 0 <= dist["observed"]["fraction_beyond"] <= 1
    observed = report["targets_report"]["log_g"]["observed"]
    assert observed["n_labelled"] == 60 and np.isfinite(observed["metrics"]["r2"])
    assert any("coverage_1sigma" in b for b in observed["binned"])
    assert {b["population"] for b in observed["binned"]} >= {"all", "giants", "dwarfs"}
    assert report["observed"]["source"]["products"] == ["pfsCoadd"]
    text = (d / "report" / "report.md").read_text()
    assert "Distance from the training features" in text and "cover 1s" in text
    predictions = (d / "report" / "predictions.csv").read_text().splitlines()
    assert predictions[0].startswith("index,pred_log_g,sigma_log_g,true_log_g,nn_distance") and len(predictions) == 61
    assert_cli_error(run_cli("transfer", "--head", d / "run", "--cache", d / "obs.zarr", "--split", "observed",
                             "--out", d / "report", check=False), "earlier report")
    # features made another way (here: another mask) are refused, not transferred
    run_cli("extract", "--ckpt", DEMO_ENCODER, "--data", f"observed={d / 'observed.h5'}", "--noise", "stored",
            "--out", d / "obs-q.zarr", "--layer", "enc_3", "--pool", "global_mean", "--mask", "quantile:0.5",
            "--quiet")
    assert_cli_error(run_cli("transfer", "--head", d / "run", "--cache", d / "obs-q.zarr", "--split", "observed",
                             "--out", d / "report-q", check=False), "made another way", "mask")
    assert not (d / "report-q").exists()
