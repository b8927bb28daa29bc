"""Issue 14: ``symbnmf check`` derives and integrates in worker processes; its output does not
depend on the number of processes (only the timing fields do)."""

from __future__ import annotations

import json

import pytest

from symbnmf.cli.main import main

TIMING = ("seconds", "derive_seconds", "quadrature_seconds", "closed_form_seconds")


def _check(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["check", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _scrub(doc: object) -> object:
    """The document without timing fields and the process count."""
    if isinstance(doc, dict):
        return {k: _scrub(v) for k, v in doc.items() if k not in TIMING and k != "jobs"}
    if isinstance(doc, list):
        return [_scrub(v) for v in doc]
    return doc


ARGS = ("identity", "relu", "leaky_relu(0.1)", "-B", "4", "5", "9", "--dps", "15")


def test_serial_and_parallel_output_are_identical(capsys):
    rc1, out1, _ = _check(capsys, *ARGS, "--json", "-j", "1")
    rc2, out2, _ = _check(capsys, *ARGS, "--json", "-j", "3")
    assert rc1 == rc2 == 0
    serial, parallel = json.loads(out1), json.loads(out2)
    assert serial["jobs"] == 1 and parallel["jobs"] == 3
    assert _scrub(serial) == _scrub(parallel)
    # results in the order asked for (the workers run the largest B first)
    assert [(r["activation"], r["B"]) for r in parallel["results"]] == [
        (a, b) for a in ("identity", "relu", "leaky_relu [a=1/10]") for b in (4, 5, 9)
    ]
    assert all(q["digits"] >= 14 for r in parallel["results"] for q in r["quantities"])


def test_serial_and_parallel_text_tables_are_identical(capsys):
    def table(out: str) -> list[str]:
        # drop the per-case quadrature seconds column and the timing line at the end
        rows = [ln for ln in out.splitlines() if not ln.startswith("all certified")]
        return [" ".join(ln.split()[:3] + ln.split()[4:]) if ln[:1] == " " else ln for ln in rows]

    rc1, out1, _ = _check(capsys, "relu", "-B", "4", "6", "--dps", "15", "-j", "1")
    rc2, out2, _ = _check(capsys, "relu", "-B", "4", "6", "--dps", "15", "-j", "2")
    assert rc1 == rc2 == 0
    assert table(out1) == table(out2)
    assert "(2 processes" in out2 and "(1 process," in out1


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_derivation_that_fails_in_a_worker_is_a_one_line_error(capsys, jobs):
    # piecewise polynomial, but its closed form leaves Q(B, pi): only the derivation finds out
    rc, out, err = _check(capsys, "relu(x)+1", "-B", "4", "5", "--dps", "15", "-j", jobs)
    assert rc == 2
    assert "Traceback" not in err
    assert "closed form needs coefficients" in err


def test_parallel_check_beside_jax_spawns_and_gives_the_same_output(capsys, monkeypatch):
    import multiprocessing

    import jax  # noqa: F401 - JAX's threads make fork unsafe: the workers are spawned then

    contexts = []
    real = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda m=None: contexts.append(m) or real(m))
    argv = ("relu", "-B", "4", "5", "--dps", "15", "--json")
    rc1, out1, _ = _check(capsys, *argv, "-j", "1")
    rc2, out2, _ = _check(capsys, *argv, "-j", "2")
    assert rc1 == rc2 == 0
    assert contexts == ["spawn"]
    assert _scrub(json.loads(out1)) == _scrub(json.loads(out2))
