"""Labels from a catalogue: by (catId, objId) and by sky position, with an unmatched target, an ambiguous one, a
duplicated target, and the same table read from CSV, FITS and Parquet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featcache.common.errors import FeatcacheError
from featcache.observed.catalogue import join_labels, parse_label_specs, read_catalogue

ARCSEC = 1 / 3600
# (catId, objId, ra, dec) of five spectra: the last two are the same target (two visits)
TARGETS = [(10, 1, 150.0, 2.0), (10, 2, 150.01, 2.0), (10, 3, 150.02, 2.0), (3, 1, 150.03, 2.0),
           (3, 1, 150.03, 2.0)]
CATALOGUE = pd.DataFrame({
    "catId": [10, 10, 10, 3, 99],
    "objId": [1, 2, 2, 1, 1],                          # (10, 2) twice: ambiguous by id; (10, 3) absent
    "ra": [150.0 + 0.4 * ARCSEC, 150.01, 150.01 + 0.5 * ARCSEC, 150.03, 150.02 + 5 * ARCSEC],
    "dec": [2.0, 2.0, 2.0, 2.0, 2.0],
    "logg": [4.5, 2.0, 2.1, np.nan, 3.3],
    "teff": [5000.0, 4000.0, 4100.0, 6000.0, 5500.0],
})


def test_join_by_id():
    labels, report = join_labels(CATALOGUE, TARGETS, {"logg": "log_g", "teff": "T_eff"}, by="id")
    np.testing.assert_array_equal(labels["log_g"], [4.5, np.nan, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(labels["T_eff"], [5000.0, np.nan, np.nan, 6000.0, 6000.0])
    assert report.matched == 3 and report.unmatched == [2] and report.ambiguous == [1]
    assert report.duplicated_targets == {(3, 1): 2}
    assert report.missing_values == {"log_g": 2, "T_eff": 0}   # matched, but the catalogue has no value
    assert report.shared_rows == []                              # the two visits of (3, 1) are one target
    assert "3 of 5 targets matched by id; 1 unmatched; 1 ambiguous" in report.summary()


def test_join_by_position():
    labels, report = join_labels(CATALOGUE, TARGETS, {"teff": "T_eff"}, by="position", radius_arcsec=1.0)
    # target 1 has two catalogue rows within 1" (ambiguous); target 2's nearest row is 5" away (unmatched)
    np.testing.assert_array_equal(labels["T_eff"], [5000.0, np.nan, np.nan, 6000.0, 6000.0])
    assert report.unmatched == [2] and report.ambiguous == [1] and report.matched == 3
    assert max(report.separation_arcsec) == pytest.approx(0.4 * np.cos(np.radians(2.0)), rel=1e-3)
    labels, report = join_labels(CATALOGUE, TARGETS, {"teff": "T_eff"}, by="position", radius_arcsec=10.0)
    assert labels["T_eff"][2] == 5500.0 and report.ambiguous == [1]
    with pytest.raises(FeatcacheError, match="--radius"):
        join_labels(CATALOGUE, TARGETS, {"teff": "T_eff"}, by="position", radius_arcsec=0.0)


def test_catalogue_formats_agree(tmp_path):
    from astropy.table import Table

    CATALOGUE.to_csv(tmp_path / "c.csv", index=False)
    Table.from_pandas(CATALOGUE).write(tmp_path / "c.fits")
    CATALOGUE.to_parquet(tmp_path / "c.parquet")
    results = [join_labels(read_catalogue(tmp_path / f"c.{ext}"), TARGETS, {"logg": "log_g"})[0]["log_g"]
               for ext in ("csv", "fits", "parquet")]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    with pytest.raises(FeatcacheError, match="expected a .csv, .fits or .parquet"):
        (tmp_path / "c.txt").write_text("x")
        read_catalogue(tmp_path / "c.txt")
    with pytest.raises(FeatcacheError, match="no column 'lgg'"):
        join_labels(CATALOGUE, TARGETS, {"lgg": "log_g"})


def test_label_specs():
    assert parse_label_specs(["logg=log_g", "teff,feh=M_H"]) == {"logg": "log_g", "teff": "teff", "feh": "M_H"}
    with pytest.raises(FeatcacheError, match="given twice"):
        parse_label_specs(["a=x", "b=x"])
