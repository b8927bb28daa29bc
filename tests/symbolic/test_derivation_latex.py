"""Derivation documents a reader can check (issue 10, item 13): distinct notation for
E[phi(y1) phi(y2)] and E[phi(y1)^2], phi' not Phi', every symbol defined, the Gaussian-lemma
intermediate results shown, and nothing running off the page (pdflatex, overfull boxes = 0)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from symbnmf.symbolic._derivation import NOTATION_LATEX, latex_width
from symbnmf.symbolic._derive import derive


@pytest.fixture(scope="module")
def relu_doc() -> str:
    return derive("relu").latex()


def _step(doc: str, name: str) -> list[str]:
    """The displayed equations of every step called ``name``."""
    pat = re.compile(r"\\item \\textbf\{%s\}.*?\\begin\{gather\*\}(.*?)\\end\{gather\*\}" % re.escape(name), re.S)
    return pat.findall(doc)


def test_orbit_reduction_distinguishes_pair_from_square(relu_doc):
    forward_m = " ".join(_step(relu_doc, "Orbit reduction"))
    assert r"\phi(y_1) \phi(y_2)" in forward_m and r"\phi(y_1)^{2}" in forward_m
    assert r"\phi'(y_1)" in forward_m  # backward steps
    assert "Phi" not in relu_doc and r"E{\left(" not in relu_doc


def test_gaussian_lemma_results_are_shown(relu_doc):
    for name in ("Expansion in sphere monomials", "Standard Gaussian moments", "Sphere monomials"):
        assert _step(relu_doc, name), name
    # ReLU's arc-cosine kernel: the wedge lemma's result at correlation rho, then on the sphere
    assert any(
        r"\mathbb{E}\bigl[x_1 H(x_1) x_2 H(x_2)\bigr]" in s for s in _step(relu_doc, "Standard Gaussian moments")
    )
    assert any(r"\theta_{B}" in s for s in _step(relu_doc, "Sphere monomials"))


def test_every_symbol_is_defined(relu_doc):
    body = relu_doc[relu_doc.index(r"\subsection*{Lemmas}") :]
    greek = set(re.findall(r"\\(alpha|beta|gamma|theta|mu|rho|psi|phi|xi|lambda|chi|Sigma|Delta|Pi|epsilon)\b", body))
    for g in greek:
        assert "\\" + g in NOTATION_LATEX, g
    for sym in ("I_S", "I_d", "I_o", "S_B", r"\theta_B", r"\mu^*", "N_X", "D_X", "m_k", "M_k", "H", r"\phi'"):
        assert sym in NOTATION_LATEX, sym
    assert r"\subsection*{Conventions and notation}" in relu_doc


def test_width_estimate_orders_formulas():
    assert latex_width(r"\frac{a + b + c}{d}") < latex_width("a + b + c + d")
    assert latex_width(r"\left(x\right)") == pytest.approx(3)


@pytest.mark.parametrize(
    ("eps", "act"),
    [
        (False, "identity"),
        (False, "relu"),
        pytest.param(False, "leaky_relu", marks=pytest.mark.slow),
        (True, "relu"),
        pytest.param(True, "leaky_relu", marks=pytest.mark.slow),
    ],
)
def test_latex_compiles_without_overfull_boxes(eps, act, tmp_path):
    """The derivation documents fit the page. The eps documents (derivations/relu_eps.tex had 12
    overfull boxes) abbreviate P_{B/2 + j}(B eps/(2 mu)) as P_j and break every long equation,
    terms included (symbolic._epsforms.long_equation_latex)."""
    from symbnmf.symbolic._epsforms import derive_eps

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base)")
    (tmp_path / "d.tex").write_text((derive_eps if eps else derive)(act).latex())
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "d.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp_path / "d.log").read_text(errors="replace")
    assert run.returncode == 0, log[-2000:]
    overfull = [ln for ln in log.splitlines() if ln.startswith(("Overfull", "Underfull \\vbox"))]
    assert overfull == [], overfull
