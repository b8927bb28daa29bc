"""Issue 10 item 1: the derivation cache never executes code and never trusts an edited entry."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

from symbnmf.symbolic import _derive
from symbnmf.symbolic._serialize import UnsafeExpressionError, read_srepr

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SYMBNMF_NO_CACHE", raising=False)
    _derive._MEMO.clear()
    yield tmp_path / "cache"
    _derive._MEMO.clear()


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch /tmp/pwned') or x",
        "Symbol('x').__class__",
        "Symbol('x', real=__import__('os'))",
        "Integer(10**10)",
        "[Integer(1) for _ in ()]",
        "eval('1')",
        "Add(*[Integer(1)])",
        "Function('f')(Symbol('x'))",
        "Integer(" + "9" * 5000 + ")",
        "Add(" * 300 + "Integer(1)" + ")" * 300,
        "lambda: 0",
    ],
)
def test_read_srepr_refuses_anything_but_whitelisted_constructors(text):
    with pytest.raises(UnsafeExpressionError):
        read_srepr(text)


def test_read_srepr_round_trips_the_committed_derivations():
    files = glob.glob(str(ROOT / "derivations" / "*.json"))
    assert files
    for f in files:
        doc = json.loads(Path(f).read_text())
        for name, v in doc["quantities"].items():
            e = read_srepr(v["srepr"])
            assert sp.srepr(e) == v["srepr"], (f, name)


def _entry(cache_dir: Path) -> Path:
    (f,) = cache_dir.glob("derive-*.json")
    return f


def test_edited_entry_is_rederived_not_trusted(cache):
    cold = _derive.derive("relu")
    value = float(cold["backward.G"].subs(sp.Symbol("B", positive=True), 8))
    f = _entry(cache)
    entry = json.loads(f.read_text())
    entry["derivation"] = entry["derivation"].replace("Integer(-3)", "Integer(-4)")  # one integer changed
    f.write_text(json.dumps(entry))
    _derive._MEMO.clear()
    again = _derive.derive("relu")
    assert float(again["backward.G"].subs(sp.Symbol("B", positive=True), 8)) == pytest.approx(value, rel=1e-14)
    assert value == pytest.approx(1.78818997665875, rel=1e-12)


def test_forged_entry_with_code_is_never_executed(cache, tmp_path):
    _derive.derive("relu")
    f = _entry(cache)
    marker = tmp_path / "pwned"
    entry = json.loads(f.read_text())
    doc = json.loads(entry["derivation"])
    doc["phi"] = doc["phi_srepr"] = f"__import__('os').system('touch {marker}') or x"
    for v in doc["quantities"].values():
        v["srepr"] = f"__import__('os').system('touch {marker}') or Integer(1)"
    entry["derivation"] = json.dumps(doc)
    f.write_text(json.dumps(entry))
    _derive._MEMO.clear()
    d = _derive.derive("relu")
    assert not marker.exists()
    assert d["fixed_point.diag"] == sp.Rational(1, 2)
    # even a correctly authenticated hostile document is parsed without evaluation
    with pytest.raises(UnsafeExpressionError):
        _derive.Derivation.from_json(doc)
    assert not marker.exists()


def test_warm_and_cold_derivations_print_identically(cache):
    cold = _derive.derive("relu")
    _derive._MEMO.clear()
    warm = _derive.derive("relu")
    assert warm is not cold
    assert warm.dumps() == cold.dumps()
    assert warm.latex() == cold.latex()
    assert {n: sp.sstr(v) for n, v in warm.limits.items()} == {n: sp.sstr(v) for n, v in cold.limits.items()}


def test_key_file_readable_by_others_disables_the_cache(cache):
    _derive.derive("relu")
    key = cache / "secret.key"
    assert (key.stat().st_mode & 0o777) == 0o600
    os.chmod(key, 0o644)
    assert _derive._cache_secret(cache, create=False) is None
    _derive._MEMO.clear()
    assert _derive._read_cache(_entry(cache), "anything") is None


def test_empty_cache_dir_variable_does_not_write_into_cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBNMF_CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SYMBNMF_NO_CACHE", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert _derive._cache_dir() == tmp_path / "home" / ".cache" / "symbnmf"
    _derive._MEMO.clear()
    _derive.derive("identity")
    assert list(work.iterdir()) == []
    _derive._MEMO.clear()


@pytest.mark.slow
def test_fingerprint_covers_every_module_a_derivation_imports():
    code = (
        "import sys, json\n"
        "from symbnmf.symbolic._derive import derive, fingerprint_sources\n"
        "derive('relu', use_cache=False)\n"
        "mods = sorted({m.__file__ for n, m in sys.modules.items() if n.startswith('symbnmf') and m.__file__})\n"
        "print(json.dumps([mods, [str(p) for p in fingerprint_sources()]]))\n"
    )
    env = dict(os.environ, SYMBNMF_NO_CACHE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=True)
    mods, sources = json.loads(out.stdout.strip().splitlines()[-1])
    missing = [m for m in mods if str(Path(m).resolve()) not in {str(Path(s).resolve()) for s in sources}]
    assert missing == []
    assert any(s.endswith("_conventions.py") for s in sources)
