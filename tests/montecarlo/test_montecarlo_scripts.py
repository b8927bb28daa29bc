"""Validation scripts and the Monte Carlo benchmark: --quick smoke runs (slow) and no-overwrite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def _run(*args, timeout=900):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_figure1_and_report_refuse_to_overwrite(tmp_path):
    (tmp_path / "figure1a_gradient_rate_vs_batch.png").write_bytes(b"keep")
    p = _run("validation/figure1.py", "--quick", "--out-dir", str(tmp_path), "--json")
    assert p.returncode == 2 and json.loads(p.stdout)["type"] == "OutputExistsError"
    assert (tmp_path / "figure1a_gradient_rate_vs_batch.png").read_bytes() == b"keep"
    rep = tmp_path / "REPORT.md"
    rep.write_text("keep")
    p = _run("validation/report.py", "--quick", "--out", str(rep), "--json")
    assert p.returncode == 2 and "--force" in json.loads(p.stdout)["error"]
    assert rep.read_text() == "keep"


@pytest.mark.slow
def test_figure1_quick_writes_three_pngs(tmp_path):
    p = _run("validation/figure1.py", "--quick", "--out-dir", str(tmp_path), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    for path in out["files"].values():
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_quick_writes_tables(tmp_path):
    rep = tmp_path / "REPORT.md"
    p = _run("validation/report.py", "--quick", "--out", str(rep), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    text = rep.read_text()
    for heading in ("Gradient growth rate", "Finite-width trend", "Edge regimes", "Weight laws"):
        assert heading in text
    assert "nan" not in text.lower()


@pytest.mark.slow
def test_benchmark_quick_prints_ratios_in_one_json_object():
    p = _run("benchmarks/bench_montecarlo.py", "--quick", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    impl = out["implementations"]
    # the fair baseline (the same exact low-rank sampler in numpy) and the dense context ones
    assert set(impl) == {"symbnmf", "numpy low-rank", "numpy dense", "naive JAX"}
    assert impl["symbnmf"]["ratio_to_symbnmf"] == 1.0
    for name, r in impl.items():
        assert r["ratio_to_symbnmf"] > 0 and r["median_cpu_s"] > 0, name
        assert abs(r["gradient_rate"] - impl["numpy low-rank"]["gradient_rate"]) < 6 * r["gradient_rate_stderr"], name
