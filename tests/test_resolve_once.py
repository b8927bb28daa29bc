"""Front doors resolve an activation once; the stages below receive the resolved object (issue 9).

A spy replaces :func:`symbnmf.get_activation` everywhere it is bound and records every call whose
argument is not already an :class:`~symbnmf.Activation` (i.e. a string or expression that has to
be parsed). Each command and each front door must parse exactly once.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest

import symbnmf
from symbnmf import _activations


@pytest.fixture
def parses(monkeypatch):
    """Counter of (caller file, line) for every get_activation call that has to parse its input."""
    import traceback

    import symbnmf._evaluate
    import symbnmf.fast._fastquad
    import symbnmf.fast.codegen
    import symbnmf.numeric._certify
    import symbnmf.numeric._quadrature
    import symbnmf.symbolic._derive
    import symbnmf.symbolic._quantities  # noqa: F401 - bind their get_activation before patching

    orig = _activations.get_activation
    calls: Counter = Counter()

    def spy(spec, **params):
        if not isinstance(spec, _activations.Activation):
            frame = traceback.extract_stack()[-2]
            calls[(frame.filename.rsplit("symbnmf/", 1)[-1], frame.lineno)] += 1
        return orig(spec, **params)

    spy.is_spy = True  # type: ignore[attr-defined]
    monkeypatch.setattr(_activations, "get_activation", spy)
    for mod in list(sys.modules.values()):
        bound = getattr(mod, "get_activation", None)
        # modules first imported under an earlier test's spy still hold that spy: rebind them too
        if getattr(mod, "__name__", "").startswith("symbnmf") and (bound is orig or hasattr(bound, "is_spy")):
            monkeypatch.setattr(mod, "get_activation", spy)
    return calls


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "relu", "-B", "4", "8", "--json"],
        ["eval", "tanh", "-B", "4", "--json"],
        ["check", "relu", "-B", "4", "--dps", "15", "--json"],
        ["derive", "leaky_relu", "--json"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_each_command_parses_its_activation_once(argv, parses, capsys, tmp_path, monkeypatch):
    from symbnmf.cli.main import main

    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path))
    assert main(argv) == 0
    capsys.readouterr()
    assert sum(parses.values()) == 1, dict(parses)
    (where,) = parses
    assert where[0].startswith("cli/"), f"parsed below the command line door: {where}"


def test_python_front_doors_parse_once(parses, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMBNMF_CACHE_DIR", str(tmp_path))
    symbnmf.evaluate("relu", [4, 8])
    assert sum(parses.values()) == 1, dict(parses)
    parses.clear()
    symbnmf.certify("identity", 4, dps=15)
    assert sum(parses.values()) == 1, dict(parses)
    parses.clear()
    symbnmf.derive("relu")
    assert sum(parses.values()) == 1, dict(parses)


def test_spy_detects_a_second_parse(parses):
    """The counter can fail: resolving the same string twice is seen twice."""
    _activations.get_activation("relu")
    _activations.get_activation("relu")
    assert sum(parses.values()) == 2
