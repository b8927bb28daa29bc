"""Issue 14: the abstract quantity definitions are cached on disk, authenticated like the derivations.

A second process reads them back instead of rebuilding them in SymPy; what it reads is
structurally equal to what is built; an edited or forged entry is rebuilt, never trusted, and
nothing in it is executed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

from symbnmf.symbolic import _quantities
from symbnmf.symbolic._serialize import UnsafeExpressionError, read_srepr, write_exact
from symbnmf.symbolic._sphere import DPHI, PHI

PROBE = """
import json
from symbnmf.symbolic import _quantities as q
d = q.abstract_definitions()
print(json.dumps({
    "source": q.DEFINITIONS_SOURCE["source"],
    "reductions": q._forward_integral.cache_info().currsize + q._backward_integral.cache_info().currsize,
    "backward.G": str(d["backward.G"].formula),
}))
"""


def _probe(cache: Path) -> dict:
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(cache))
    env.pop("SYMBNMF_NO_CACHE", None)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SYMBNMF_NO_CACHE", raising=False)
    _quantities.abstract_definitions.cache_clear()
    yield tmp_path / "cache"
    _quantities.abstract_definitions.cache_clear()


def _entry(cache_dir: Path) -> Path:
    (f,) = cache_dir.glob("definitions-*.json")
    return f


def _assert_structurally_equal(a: object, b: object) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, sp.Basic):
        assert a == b and hash(a) == hash(b), (a, b)
        assert write_exact(a) == write_exact(b)
        assert len(a.args) == len(b.args)
        for x, y in zip(a.args, b.args):
            _assert_structurally_equal(x, y)


def _assert_same_definitions(built: dict, read: dict) -> None:
    assert list(built) == list(read)
    for name, qd in built.items():
        rd = read[name]
        assert (qd.name, qd.definition_latex, qd.theorem) == (rd.name, rd.definition_latex, rd.theorem)
        _assert_structurally_equal(qd.formula, rd.formula)
        assert list(qd.integrals) == list(rd.integrals)
        for ph, si in qd.integrals.items():
            assert len(si.terms) == len(rd.integrals[ph].terms)
            for t1, t2 in zip(si.terms, rd.integrals[ph].terms):
                for u, v in zip(t1, t2):
                    _assert_structurally_equal(u, v)
        assert qd.test_direction == rd.test_direction
        if qd.test_direction is not None:
            for field in ("NR", "RN", "RRd", "RRo"):
                assert getattr(qd.test_direction, field) == getattr(rd.test_direction, field)


def test_second_process_reads_the_cache_and_does_no_sympy_reduction(tmp_path):
    first = _probe(tmp_path / "cache")
    second = _probe(tmp_path / "cache")
    assert first["source"] == "built" and first["reductions"] > 0
    assert second["source"] == "cache" and second["reductions"] == 0
    assert second["backward.G"] == first["backward.G"]


def test_cached_definitions_are_structurally_equal_to_built_ones(cache):
    from symbnmf.numeric._quadrature import evaluate_quadrature

    built = _quantities.build_abstract_definitions()
    first = _quantities.abstract_definitions()
    assert _quantities.DEFINITIONS_SOURCE["source"] == "built"
    quad_built = evaluate_quadrature("leaky_relu(0.1)", 5, 15)
    _quantities.abstract_definitions.cache_clear()
    read = _quantities.abstract_definitions()
    assert _quantities.DEFINITIONS_SOURCE["source"] == "cache"
    assert read is not first
    _assert_same_definitions(built, read)
    # what is computed from them is the same to the last bit
    assert evaluate_quadrature("leaky_relu(0.1)", 5, 15) == quad_built


def test_edited_entry_is_rebuilt_not_trusted(cache):
    built = _quantities.abstract_definitions()
    f = _entry(cache)
    entry = json.loads(f.read_text())
    assert "Integer(-3)" in entry["definitions"]
    entry["definitions"] = entry["definitions"].replace("Integer(-3)", "Integer(-4)", 1)  # B - 3 -> B - 4
    f.write_text(json.dumps(entry))
    _quantities.abstract_definitions.cache_clear()
    again = _quantities.abstract_definitions()
    assert _quantities.DEFINITIONS_SOURCE["source"] == "built"
    _assert_same_definitions(built, again)
    # and the rebuilt entry replaced the edited one
    _quantities.abstract_definitions.cache_clear()
    _quantities.abstract_definitions()
    assert _quantities.DEFINITIONS_SOURCE["source"] == "cache"


def test_forged_entry_with_code_is_never_executed(cache, tmp_path):
    _quantities.abstract_definitions()
    f = _entry(cache)
    marker = tmp_path / "pwned"
    entry = json.loads(f.read_text())
    doc = json.loads(entry["definitions"])
    doc["quantities"][0]["formula"] = f"__import__('os').system('touch {marker}') or Symbol('I_d')"
    entry["definitions"] = json.dumps(doc)
    f.write_text(json.dumps(entry))
    _quantities.abstract_definitions.cache_clear()
    d = _quantities.abstract_definitions()
    assert not marker.exists()
    assert _quantities.DEFINITIONS_SOURCE["source"] == "built"
    assert d["fixed_point.diag"].formula == _quantities.I_d
    # even a correctly authenticated hostile document is parsed without evaluation
    with pytest.raises(UnsafeExpressionError):
        _quantities._definitions_from_json(doc)
    assert not marker.exists()


def test_entry_of_another_key_or_kind_is_not_used(cache):
    from symbnmf.symbolic._diskcache import read_entry

    _quantities.abstract_definitions()
    f = _entry(cache)
    _, key = _quantities._definitions_entry()
    assert read_entry(f, key, "definitions") is not None
    assert read_entry(f, key, "derivation") is None  # the MAC binds the kind
    assert read_entry(f, "0" * 24, "definitions") is None
    entry = json.loads(f.read_text())
    entry["key"] = "0" * 24  # a key edited to match another request: its MAC no longer does
    f.write_text(json.dumps(entry))
    assert read_entry(f, "0" * 24, "definitions") is None


def test_key_file_readable_by_others_disables_the_cache(cache):
    _quantities.abstract_definitions()
    os.chmod(cache / "secret.key", 0o644)
    _quantities.abstract_definitions.cache_clear()
    _quantities.abstract_definitions()
    assert _quantities.DEFINITIONS_SOURCE["source"] == "built"


def test_no_cache_variable_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SYMBNMF_NO_CACHE", "1")
    _quantities.abstract_definitions.cache_clear()
    try:
        _quantities.abstract_definitions()
        assert _quantities.DEFINITIONS_SOURCE["source"] == "built"
        assert not (tmp_path / "cache").exists()
    finally:
        _quantities.abstract_definitions.cache_clear()


def test_exact_reading_keeps_structure_and_names():
    x = sp.Symbol("x")
    e = sp.Mul(2, x + 1, evaluate=False)  # as sp.factor writes 2*(x + 1)
    text = write_exact(e)
    assert read_srepr(text) != e  # the default reader re-evaluates: 2*x + 2
    back = read_srepr(text, exact=True)
    assert back == e and back.args == e.args
    # the phi' placeholder's name is not an identifier: accepted only when named
    with pytest.raises(UnsafeExpressionError):
        read_srepr(write_exact(DPHI * PHI))
    assert read_srepr(write_exact(DPHI * PHI), exact=True, symbol_names=frozenset({"Phi'"})) == DPHI * PHI
    with pytest.raises(UnsafeExpressionError):
        read_srepr("Symbol('a b')", symbol_names=frozenset({"Phi'"}))
    with pytest.raises(UnsafeExpressionError):
        read_srepr('Symbol("Phi\'", evil=True)', symbol_names=frozenset({"Phi'"}))
    with pytest.raises(UnsafeExpressionError):
        read_srepr('Symbol("Phi\'", "x")', symbol_names=frozenset({"Phi'"}))
