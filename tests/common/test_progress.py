"""Progress when stderr is not a terminal: lines at a bounded rate, one at the end, none with --quiet."""

from __future__ import annotations

from featcache.common import progress as progress_module
from featcache.common.progress import LineProgress, progress


def test_lines_at_a_bounded_rate_and_one_at_the_end(capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "_quiet", False)
    with LineProgress(total=10, desc="extract", unit="spectra", interval=3600.0) as bar:
        for _ in range(10):
            bar.update(1)
        bar.set_postfix(loss="0.1234", refresh=False)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1  # the interval was never reached: only the closing line
    assert lines[0].startswith("extract: 10/10 spectra (100%), ") and lines[0].endswith("[loss=0.1234]")

    bar = LineProgress(total=4, desc="fit", unit="epoch", interval=0.0)
    bar.update(1)
    bar.update(1)
    bar.close()
    bar.close()  # closing twice prints once
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == ["fit: 1/4 epoch (25%)", "fit: 2/4 epoch (50%)",
                                                       "fit: 2/4 epoch (50%)"]
    assert "ETA" in lines[0]


def test_progress_picks_lines_off_a_terminal_and_nothing_when_quiet(capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "_quiet", False)
    bar = progress(total=3, desc="synth", unit="spectra")  # pytest's captured stderr is not a terminal
    assert isinstance(bar, LineProgress)
    assert list(progress(range(3), desc="walk")) == [0, 1, 2]
    assert "walk: 3/3 it (100%)" in capsys.readouterr().err
    monkeypatch.setattr(progress_module, "_quiet", True)
    assert not isinstance(progress(total=3), LineProgress)
    list(progress(range(3), desc="walk"))
    assert capsys.readouterr().err == ""
