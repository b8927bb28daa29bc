"""A repeated ``symbnmf simulate`` imports no SymPy (issue 14, fast start-up).

The first run of a string activation keeps what SymPy produced for it (label, the key of φ, the
theory column) in an authenticated record under ``SYMBNMF_CACHE_DIR/simulate``; a second process
with the same input reads it, loads the compiled program from the executable cache and prints the
same JSON (apart from ``time_s``) without importing SymPy, mpmath or the symbolic and numeric
stages, also when the program must be compiled (``SYMBNMF_NO_COMPILE_CACHE=1``: φ is rebuilt from
the JAX source in the record). A tampered record, another activation or other parameters, and
``SYMBNMF_NO_CACHE=1`` (the derivation cache's switch) all take the SymPy path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from symbnmf._errors import SymbnmfError

CHILD = """
import json, sys
from symbnmf.cli.main import main
rc = main(sys.argv[1:])
heavy = ("sympy", "mpmath", "symbnmf._activations", "symbnmf.symbolic", "symbnmf.numeric")
loaded = sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy[:2])
print(json.dumps({"rc": rc, "loaded": loaded}))
"""

SIZES = ["-B", "4", "-N", "64", "-L", "6", "-K", "8", "--json"]


def _simulate(cache, *argv: str, **env_extra: str) -> tuple[dict, list[str]]:
    """Run ``symbnmf simulate ARGV`` in a fresh process: (its JSON without time_s, the heavy modules it loaded)."""
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(cache), **env_extra)
    for switch in ("SYMBNMF_NO_COMPILE_CACHE", "SYMBNMF_NO_CACHE"):
        if switch not in env_extra:
            env.pop(switch, None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "simulate", *argv, *SIZES], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    *lines, probe = proc.stdout.strip().splitlines()
    status = json.loads(probe)
    assert status["rc"] == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (out,) = lines
    summary = json.loads(out)
    summary.pop("time_s")
    return summary, status["loaded"]


def _records(cache) -> list:
    return sorted((cache / "simulate").glob("*.json"))


@pytest.fixture(scope="module")
def primed(tmp_path_factory):
    """A cache after one ``simulate relu``: its JSON and the modules that run loaded."""
    cache = tmp_path_factory.mktemp("resolved") / "cache"
    first, loaded = _simulate(cache, "relu")
    return cache, first, loaded


def _copy(primed, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(primed[0], cache)
    return cache


def test_repeat_run_imports_no_sympy_and_prints_the_same(primed, tmp_path):
    cache = _copy(primed, tmp_path)
    _, first, loaded_first = primed
    assert "sympy" in loaded_first and first["gradient_rate"]["theory"] is not None
    (record,) = _records(cache)
    assert record.stat().st_mode & 0o077 == 0 and (cache / "simulate").stat().st_mode & 0o077 == 0
    second, loaded = _simulate(cache, "relu")
    assert loaded == [], loaded
    assert json.dumps(second) == json.dumps(first)
    assert _records(cache) == [record]


def test_tampered_record_is_ignored(primed, tmp_path):
    """A record whose bytes changed is not trusted: the SymPy path runs, prints the right
    output and replaces the record, which the next run uses."""
    cache = _copy(primed, tmp_path)
    _, first, _ = primed
    (record,) = _records(cache)
    blob = record.read_bytes()
    i = blob.index(b'"relu"') + 1
    record.write_bytes(blob[:i] + b"R" + blob[i + 1 :])  # the label "relu" becomes "Relu"
    second, loaded = _simulate(cache, "relu")
    assert "sympy" in loaded
    assert json.dumps(second) == json.dumps(first)
    third, loaded = _simulate(cache, "relu")
    assert loaded == [] and json.dumps(third) == json.dumps(first)


def test_opt_out_resolves_with_sympy(primed, tmp_path):
    cache = _copy(primed, tmp_path)
    _, first, _ = primed
    (record,) = _records(cache)
    before = record.read_bytes()
    out, loaded = _simulate(cache, "relu", SYMBNMF_NO_CACHE="1")
    assert "sympy" in loaded
    assert json.dumps(out) == json.dumps(first)
    assert _records(cache) == [record] and record.read_bytes() == before  # neither read nor written


def test_cold_compile_from_the_record_needs_no_sympy(primed, tmp_path):
    """With the compile caches off the program is traced and compiled again, with φ executed from
    the JAX source kept in the record: still no SymPy, and the same numbers."""
    cache = _copy(primed, tmp_path)
    _, first, _ = primed
    out, loaded = _simulate(cache, "relu", SYMBNMF_NO_COMPILE_CACHE="1")
    assert loaded == [], loaded
    assert json.dumps(out) == json.dumps(first)


def test_record_is_not_used_for_another_activation(primed, tmp_path):
    """The record of relu is not used for tanh with the same sizes."""
    cache = _copy(primed, tmp_path)
    _, first, _ = primed
    other, loaded = _simulate(cache, "tanh")
    assert "sympy" in loaded
    assert other["activation"] == "tanh" and other["theory_method"] == "fast"
    assert other["gradient_rate"]["theory"] != first["gradient_rate"]["theory"]
    assert len(_records(cache)) == 2


# ---- in process: the record store itself, and errors on the SymPy path ---------------------


def test_store_and_load_resolved(tmp_path, monkeypatch):
    from symbnmf.fast import _compile_cache as cc

    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SYMBNMF_NO_CACHE", raising=False)
    key = cc.resolved_key({"activation": "relu", "batch_size": 4})
    assert key is not None and key != cc.resolved_key({"activation": "relu", "batch_size": 5})
    assert cc.resolved_key({"x": float("nan")}) is None and cc.resolved_key({"x": object()}) is None
    assert cc.load_resolved(key) is None
    rec = {"label": "relu", "theory": {"a": [1, 2.5, None, True]}}
    assert cc.store_resolved(key, rec)
    assert cc.load_resolved(key) == rec
    path = tmp_path / "simulate" / f"{key}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    other = "0" * 64
    shutil.copy(path, tmp_path / "simulate" / f"{other}.json")
    assert cc.load_resolved(other) is None  # the key is part of the MAC
    (tmp_path / "secret.key").write_text("1" * 64)  # another key: nothing is authentic any more
    os.chmod(tmp_path / "secret.key", 0o600)
    assert cc.load_resolved(key) is None
    monkeypatch.setenv("SYMBNMF_NO_CACHE", "1")
    assert cc.resolved_cache_dir() is None and not cc.store_resolved(key, rec) and cc.load_resolved(key) is None


def test_record_key_is_the_whole_input(tmp_path, monkeypatch):
    """Every part of the input the record depends on is in its key; input that is not plain
    (an Activation, parameters that are not numbers) has no record."""
    from symbnmf._activations import get_activation
    from symbnmf.montecarlo.networks import _resolved_key

    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path))
    base = dict(
        activation="leaky_relu", params={"a": 0.2}, B=8, gamma=1.0, beta=0.0, eps=0.0, backward=True, theory=True
    )
    key = _resolved_key(**base)
    assert key is not None and key == _resolved_key(**{**base, "params": {"a": 0.2}})
    changes = [
        {"activation": "leaky_relu "},
        {"activation": "relu"},
        {"params": {"a": 0.3}},
        {"params": {"a": 1}},  # an int binds Integer(1), a float Float(1.0)
        {"params": {}},
        {"B": 9},
        {"gamma": 0.5},
        {"beta": 0.1},
        {"eps": 0.1},
        {"backward": False},
        {"theory": False},
    ]
    keys = {_resolved_key(**{**base, **c}) for c in changes}
    assert None not in keys and key not in keys and len(keys) == len(changes)
    assert _resolved_key(**{**base, "activation": get_activation("relu")}) is None
    assert _resolved_key(**{**base, "params": {"a": "0.2"}}) is None


def test_only_a_reliable_theory_column_is_kept(tmp_path, monkeypatch):
    """A theory value that failed unexpectedly (perhaps a passing failure) or that is not plain
    JSON is not kept: the next run computes it again."""
    from symbnmf.fast._compile_cache import load_resolved
    from symbnmf.montecarlo.networks import _keep_resolved, _Resolved, theory_values

    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SYMBNMF_NO_CACHE", raising=False)

    class Broken:
        label = "broken"

        @property
        def bound_expr(self):
            raise RuntimeError("passing failure")

    from symbnmf._activations import get_activation
    from symbnmf.fast._specfun import callable_from_source

    rec, why = theory_values(Broken(), 8, gamma=2.0)
    assert rec is None and why is not None
    relu = get_activation("relu")
    for i, theory in enumerate([(rec, why), ({"x": (1.0, 2.0)}, None), ({"x": float("nan")}, None)]):
        _keep_resolved(_Resolved("relu", "k", None, act=relu, key=f"{i:064x}"), theory)
        assert load_resolved(f"{i:064x}") is None, theory
    _keep_resolved(_Resolved("relu", "k", None, act=relu, key="f" * 64), (None, "B=3 is outside the theory"))
    kept = load_resolved("f" * 64)
    assert kept is not None
    phi = callable_from_source(kept.pop("phi_source"), kept.pop("phi_helpers"), "jax")
    assert [float(phi(v)) for v in (-1.5, 0.0, 2.5)] == [0.0, 0.0, 2.5]
    assert kept == {
        "label": "relu",
        "act_key": "k",
        "nondegenerate": True,
        "theory": None,
        "theory_reason": "B=3 is outside the theory",
    }


def test_unknown_activation_and_parameter_errors_are_kept(tmp_path, monkeypatch, capsys):
    from symbnmf.cli.main import main

    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SYMBNMF_NO_CACHE", raising=False)
    for argv, needle in (
        (["nosuch"], "unknown activation"),
        (["tanh(g*x)"], "unbound parameter"),
        (["relu", "--param", "a"], "NAME=VALUE"),
        (["relu", "--param", "g=1"], "no parameter(s) ['g']"),
    ):
        assert main(["simulate", *argv, *SIZES]) == 2, argv
        out = json.loads(capsys.readouterr().out)
        assert needle in out["error"], (argv, out)
    assert not (tmp_path / "simulate").exists() or not _records(tmp_path)
    from symbnmf.montecarlo.networks import simulate

    with pytest.raises(SymbnmfError, match="unknown activation"):
        simulate("nosuch", 4, 8, 3, 2, theory=False)


def test_monte_carlo_modules_import_no_sympy():
    """The modules a repeated simulation runs import SymPy only where it is needed (lazily)."""
    code = (
        "import sys, symbnmf.montecarlo, symbnmf.montecarlo.run, symbnmf.fast._compile_cache, symbnmf.cli.simulate\n"
        "print(sorted(m for m in ('sympy', 'mpmath', 'symbnmf._activations', 'symbnmf.symbolic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
