"""Progress bars stay readable when stderr is a file: whole lines, no carriage returns (issue 10)."""

from __future__ import annotations

import io

from symbnmf._progress import LOG_COLUMNS, progress


def test_file_progress_is_line_per_stage():
    buf = io.StringIO()  # not a terminal
    with progress(3000, desc="symbnmf run", unit="step", stream=buf) as bar:
        for i in range(3000):
            if i % 1000 == 0:
                bar.set_postfix_str(f"stage {i // 1000} " + "x" * 200)
            bar.update()
    text = buf.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert all(len(ln) <= LOG_COLUMNS for ln in lines)
    # one line per stage change plus start/end, not one per update
    assert 3 <= len(lines) <= 10, lines
    assert lines[-1].startswith("symbnmf run: 3000/3000")


def test_disabled_progress_prints_nothing():
    buf = io.StringIO()
    with progress(10, desc="x", disable=True, stream=buf) as bar:
        bar.update(10)
    assert buf.getvalue() == ""


def test_iterable_progress():
    buf = io.StringIO()
    assert list(progress(iterable=range(5), desc="cells", stream=buf)) == list(range(5))
    assert "\r" not in buf.getvalue()
