"""The fast JAX eps > 0 path (issue 12, symbnmf.fast._epsquad) against the mpmath path
(symbnmf.numeric._epsilon), the eps = 0 fast path and its own tables."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from symbnmf import evaluate
from symbnmf._activations import get_activation
from symbnmf._errors import SymbnmfError
from symbnmf.fast._epsquad import _endpoint_values, build_tables, fast_evaluate_eps
from symbnmf.fast._fastquad import fast_evaluate
from symbnmf.numeric._epsilon import evaluate_eps

NAMES = (
    "fixed_point.diag",
    "fixed_point.offdiag",
    "forward.G",
    "forward.L",
    "forward.M",
    "backward.G",
    "backward.L",
    "backward.M",
    "depth_scale",
)


def _agree(fast: dict, ref: dict, rel: float = 1e-9) -> None:
    assert str(fast["phase"]) == ref["_meta"]["phase"]
    assert float(fast["mu"]) == pytest.approx(ref["_meta"]["mu"], rel=rel, abs=1e-300)
    for name in NAMES:
        want = ref[name]
        got = float(fast[name])
        if want is None:
            assert not math.isfinite(got) or (name == "depth_scale" and got == math.inf), name
            continue
        # eigenvalues are dimensionless O(1) numbers: absolute floor rel (forward.G -> 0 as eps -> 0)
        floor = rel * (abs(float(ref["fixed_point.diag"])) if name.startswith("fixed") else 1.0)
        assert abs(got - float(want)) <= rel * abs(float(want)) + floor, (name, got, want)


# (B, eps, weight_var, gamma): both phases, several scales
RELU_POINTS = [
    (4, 0.3, 2.0, 1.0),
    (4, 1e-4, 1.0, 1.0),
    (8, 0.1, 1.0, 1.0),
    (8, 2.0, 1.0, 1.0),  # collapsed: sigma_w^2 mu_0 (B-1)/(B eps) < 1
    (32, 0.05, 0.5, 1.5),
    (32, 3.0, 1.0, 2.0),
]


@pytest.mark.parametrize("B", [4, 8, 32])
def test_relu_matches_mpmath(B):
    pts = [p for p in RELU_POINTS if p[0] == B]
    e, s, g = (np.array([p[i] for p in pts]) for i in (1, 2, 3))
    fast = fast_evaluate_eps("relu", B, eps=e, weight_var=s, gamma=g)
    for i, (_, eps, sw, gamma) in enumerate(pts):
        ref = evaluate_eps("relu", B, eps=eps, weight_var=sw, gamma=gamma)
        _agree({k: v[i] for k, v in fast.items()}, ref)
    assert set(fast["phase"]) <= {"bsb1", "collapsed"}


def test_relu_phases_and_collapse_boundary():
    # relu: the collapsed phase is stable iff eps > eps_c = sigma_w^2 mu_0 (B-1)/B
    mu0 = 0.5 - 0.5 * (math.sqrt(1 - 1 / 49) + (math.pi - math.acos(-1 / 7)) * (-1 / 7)) / math.pi
    eps_c = mu0 * 7 / 8
    r = fast_evaluate_eps("relu", 8, eps=np.array([0.98, 1.02]) * eps_c)
    assert list(r["phase"]) == ["bsb1", "collapsed"]
    assert r["collapse_boundary_eps"][0] == pytest.approx(eps_c, rel=1e-10)
    assert r["mu"][1] == 0 and r["fixed_point.diag"][1] == 0 and r["fixed_point.offdiag"][1] == 0


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_eps_zero_is_the_fast_path(act):
    Bs = [4, 8, 32]
    ref = fast_evaluate(act, Bs)
    got = fast_evaluate_eps(act, Bs, eps=0.0, weight_var=1.0)
    for name in NAMES:
        if name == "forward.G":
            assert np.all(np.abs(got[name]) < 1e-12)
            continue
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-10, err_msg=name)
    # sigma_w^2 scales the covariance only
    got3 = fast_evaluate_eps(act, Bs, eps=0.0, weight_var=3.0)
    np.testing.assert_allclose(got3["fixed_point.diag"], 3 * ref["fixed_point.diag"], rtol=1e-10)
    np.testing.assert_allclose(got3["backward.G"], ref["backward.G"], rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("B", "taus"),
    [
        (8, [0.005, 0.0129, 0.02, 0.03, 0.031, 0.3, 0.9]),
        # cuts at 0.0029 and 0.006, grading points 0.018, 0.056, 0.20
        (32, [0.001, 0.00291, 0.004, 0.00601, 0.01, 0.03, 0.1, 0.3, 0.9]),
    ],
)
def test_tables_inside_tau_with_kinks(B, taus):
    """relu(beta + gamma t y) with beta != 0: the tables are split where the kink lines and their
    corner leave the support of (y1, y2), and graded next to those cuts. At any tau, the eps = 0
    formulas applied to the tables must be the eps = 0 fast path of the activation relu(g x + beta)
    with g = gamma sqrt(tau) (whose derivative carries the factor t, and whose Jacobian the full
    y y^T/B: K-sum times tau)."""
    act = get_activation("relu")
    gamma, beta = 1.0, 0.3
    tab = build_tables(act, B, [(gamma, beta)])
    taus = np.array(taus)
    ref = fast_evaluate("relu(g*x + 0.3)", B, g=gamma * np.sqrt(taus))
    for j, tau in enumerate(taus):
        v = {k: float(x[0]) for k, x in _endpoint_values(tab, np.array([0]), float(tau)).items()}
        assert v["a"] == pytest.approx(ref["fixed_point.diag"][j], rel=1e-10)
        assert v["b"] == pytest.approx(ref["fixed_point.offdiag"][j], rel=1e-10)
        mu = v["a"] - v["b"]
        for X in "LM":
            fw = ((B - 1) * v[f"Q.{X}"] / B - tab.trace[X] * v[f"T.{X}"]) / (2 * mu * tab.norm[X])
            bw = B / ((B - 3) * mu) * tau * sum(v[f"K.{X}.{k}"] for k in range(3)) / tab.norm[X]
            assert fw == pytest.approx(ref[f"forward.{X}"][j], rel=1e-9, abs=1e-12)
            assert bw == pytest.approx(ref[f"backward.{X}"][j], rel=1e-9, abs=1e-12)


def test_front_door_and_cli(capsys):
    rec = evaluate("relu", [8], method="fast", eps=0.1)[0]
    ref = evaluate("relu", [8], method="quadrature", eps=0.1)[0]
    assert rec["method"] == "fast" and rec["phase"] == "bsb1"
    assert rec["backward"]["G"] == pytest.approx(ref["backward"]["G"], rel=1e-9)
    assert rec["fixed_point"]["diag"] == pytest.approx(ref["fixed_point"]["diag"], rel=1e-9)
    col = evaluate("relu", [8], method="fast", eps=3)[0]
    assert col["phase"] == "collapsed" and col["depth_scale"] is None and col["mu"] == 0
    from symbnmf.cli.main import main

    assert main(["eval", "relu", "-B", "8", "--fast", "--eps", "0.1", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"phase": "bsb1"' in out and '"method": "fast"' in out


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": 0.1, "weight_var": 0}, "weight_var"),
        ({"eps": float("nan")}, "finite"),
        ({"eps": 0.1, "gamma": 0}, "gamma"),
    ],
)
def test_bad_input(kw, msg):
    with pytest.raises(SymbnmfError, match=msg):
        fast_evaluate_eps("relu", 8, **kw)
    with pytest.raises(SymbnmfError):
        evaluate("relu", [8], method="fast", **kw)


def test_kink_at_beta_refused():
    with pytest.raises(SymbnmfError, match="kink at beta"):
        fast_evaluate_eps("relu", 8, eps=0.1, gamma=-1.0)


@pytest.mark.slow
@pytest.mark.long  # the mpmath reference takes 5 to 20 minutes a point
@pytest.mark.parametrize(
    ("B", "eps", "beta", "sw"),
    [
        (4, 0.1, 0.5, 1.0),  # the corner of the two kink lines leaves the sphere at tau = 1/4
        (8, 0.1, 0.5, 1.0),
        (4, 0.1, 1.0, 1.0),  # ... at tau = 1 exactly: the last tau piece is singular at its end
        # the mpmath tables used to raise ConvergenceError (kinks -beta/(gamma t) with long
        # mantissas were rounded by nsimplify: test_kinks_with_long_mantissas_stay_exact)
        (4, 0.01, 0.2, 1.0),
    ],
)
def test_relu_beta_matches_mpmath(B, eps, beta, sw):
    """ReLU with beta != 0: the tables are split where the kink line and the corner of the two kink
    lines leave the support of (y1, y2) (numeric._epsilon.exit_taus) and graded next to those cuts
    (graded_pieces), the chi-square rule is split at the s of the cuts. (The mpmath reference takes
    1 to 20 minutes a point.)"""
    fast = fast_evaluate_eps("relu", B, eps=eps, weight_var=sw, beta=beta)
    ref = evaluate_eps("relu", B, eps=eps, weight_var=sw, beta=beta)
    _agree(fast, ref)


@pytest.mark.slow  # about 1 minute (the mpmath tables of the two points are shared)
@pytest.mark.parametrize("sw", [1.0, 4.0])
def test_relu_negative_beta_matches_mpmath(sw):
    """ReLU at beta = -0.5 (B = 4, eps = 0.1): phi(beta + gamma t y) = 0 for tau < beta^2/(gamma^2 (B-1))
    and the collapse direction psi = 0 (m0 = 0: mu = 0 is always stable). At sigma_w^2 = 1 there is
    no nonzero fixed point (collapsed); at sigma_w^2 = 4 two (0.041 unstable, 0.315 stable: BSB1)."""
    fast = fast_evaluate_eps("relu", 4, eps=0.1, weight_var=sw, beta=-0.5)
    ref = evaluate_eps("relu", 4, eps=0.1, weight_var=sw, beta=-0.5)
    _agree(fast, ref)
    assert ref["_meta"]["collapse_slope"] == 0.0
    if sw == 1.0:
        assert ref["_meta"]["phase"] == "collapsed" and ref["_meta"]["nonzero_fixed_points"] == []
    else:
        assert ref["_meta"]["phase"] == "bsb1" and len(ref["_meta"]["nonzero_fixed_points"]) == 2


def test_sqrt_map_resolves_square_root_singularities_at_or_near_the_ends():
    """_sqrt_map: sqrt(x - a + da) and sqrt(b + db - x) are entire in the rule's variable, so 16
    Gauss points integrate them (times an analytic factor) to rounding; plain Gauss-Legendre does
    not (the reason for the map: a kink line's tangency or a corner near the sphere's edge)."""
    import jax
    import jax.numpy as jnp

    from symbnmf.fast._fastquad import _sqrt_map

    def exact(da, db):
        with mpmath.workdps(30):
            return mpmath.quad(lambda x: mpmath.sqrt(x + da) * mpmath.sqrt(1 + db - x) * mpmath.exp(x), [0, 1])

    t, w = np.polynomial.legendre.leggauss(16)
    with jax.enable_x64(True):
        for da, db in [(0.0, 0.0), (0.0, 1.0), (1e-9, 1.0), (1e-6, 1e-7), (1.0, 1.0), (0.0, 1e-12)]:
            x, wx = (np.asarray(v) for v in _sqrt_map(*(jnp.array([v]) for v in (0.0, 1.0, da, db)), t, w))
            got = np.sum(np.sqrt(x + da) * np.sqrt(1 + db - x) * np.exp(x) * wx)
            assert got == pytest.approx(float(exact(da, db)), rel=1e-14, abs=1e-15), (da, db)
            assert np.all((x > 0) & (x < 1)) and np.all(wx > 0)
        # empty piece: no nodes inside, zero weight
        x, wx = _sqrt_map(*(jnp.array([v]) for v in (0.5, 0.5, 0.0, 0.0)), t, w)
        assert np.all(np.asarray(wx) == 0)
    plain = np.sum(np.sqrt((t + 1) / 2) * np.sqrt(1 - (t + 1) / 2) * np.exp((t + 1) / 2) * w / 2)
    assert abs(plain - float(exact(0.0, 0.0))) > 1e-5


def test_sphere_integrals_converge_next_to_a_corner_exit():
    """Regression for the B = 4, beta = 0.5 failure: just inside tau = 1/4 the corner of the kink
    lines y1 = y2 = -beta/(gamma t) lies just inside the support, the theta kink of y1 and the
    tangency of y2 = k nearly coincide, and the inner integral's branch point sits just outside a
    theta piece. The iterated rule must still agree with a rule twice as large to rounding."""
    from symbnmf.fast._epsquad import _integrals

    ev = _integrals(get_activation("relu").bound_expr, False, 1e-10)
    ts = 0.5 + np.array([0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, -1e-6])
    args = [ts, np.ones_like(ts), np.full_like(ts, 0.5)]
    small, _ = ev._compute([4], args, ts.size, ((32, 28), (28, 24)))
    large, _ = ev._compute([4], args, ts.size, ((64, 56), (32, 28)))
    np.testing.assert_allclose(small, large, rtol=0, atol=1e-13)


def test_chi_square_rule_split_at_the_breaks():
    """_s_rule against mpmath for E g(tau(s)), s ~ chi^2_k, with g = sqrt|tau - tau_c| (the table
    behaviour at a kink exit) and a second cut: 8 points a panel suffice once the rule is split at
    s_c = B eps tau_c/(mu (1 - tau_c)) and mapped there; a grading point (map 0 above it) is no break."""
    import jax
    import jax.numpy as jnp

    from symbnmf.fast._epsquad import _n_panels, _s_rule, chi2_rule

    B, eps, mu, tc1, tc2, grade = 16, 0.5, 0.4, 0.0667, 0.1429, 0.4476
    k = B - 1
    panels = 16 * math.ceil(_n_panels(k) / 16)
    tedges = jnp.array([[0.0, tc1, tc2, grade, 1.0]])
    tmaps = jnp.array([[2, 3, 1, 0]])

    def g(tau):
        return np.sqrt(np.abs(tau - tc1)) + np.sqrt(np.abs(tau - tc2)) * tau

    with jax.enable_x64(True):
        vals = []
        for n in (8, 12):
            rule = chi2_rule(k, n, panels)
            s, w = (
                np.asarray(v)[0] for v in _s_rule(rule, float(B), jnp.array([eps]), jnp.array([mu]), tedges, tmaps, 8)
            )
            vals.append(np.sum(g(mu * s / (mu * s + B * eps)) * w))
    half = mpmath.mpf(k) / 2
    dens = lambda v: v ** (half - 1) * mpmath.exp(-v / 2) / (2**half * mpmath.gamma(half))
    tau = lambda v: mu * v / (mu * v + B * eps)
    gm = lambda v: (mpmath.sqrt(abs(tau(v) - tc1)) + mpmath.sqrt(abs(tau(v) - tc2)) * tau(v)) * dens(v)
    breaks = [B * eps * c / (mu * (1 - c)) for c in (tc1, tc2)]
    ref = float(mpmath.quad(gm, [0, *breaks, 40, 80, mpmath.inf]))
    assert vals[0] == pytest.approx(ref, rel=1e-13)
    assert vals[1] == pytest.approx(ref, rel=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("B", "eps", "sw", "gamma", "beta"),
    [
        (8, 0.1, 1.0, 1.0, 0.0),
        (8, 2.0, 1.0, 1.0, 0.0),
        pytest.param(4, 0.1, 1.0, 1.5, 0.2, marks=pytest.mark.long),
        # the poles of tanh(gamma sqrt(tau) y) reach tau ~ -pi^2/(4 gamma^2 (B - 1)) = -0.035: the
        # mpmath tables need Chebyshev degree 64 (129 nodes) on [0, 1] (~10 minutes)
        pytest.param(32, 0.1, 1.0, 1.5, 0.0, marks=pytest.mark.long),
    ],
)
def test_tanh_matches_mpmath(B, eps, sw, gamma, beta):
    fast = fast_evaluate_eps("tanh", B, eps=eps, weight_var=sw, gamma=gamma, beta=beta)
    ref = evaluate_eps("tanh", B, eps=eps, weight_var=sw, gamma=gamma, beta=beta)
    _agree(fast, ref)


def test_iterated_rule_at_every_tangency_of_a_kink_line():
    """Regression (leaky ReLU(0.2), beta = -0.4, B = 4: "rules (96, 84) and (64, 56) differ by
    8e-08"): the kink line y2 = k is tangent to the inner circle of the iterated rule where
    cos(theta -+ alpha) = -k/R; the root theta = 2 pi - alpha - arccos(-k/R) (in (0, pi) when
    alpha + arccos(-k/R) > pi, here for t in (0.23, 0.69)) was missing from the theta cuts, so the
    inner integral's branch point |theta - theta_t|^(1/2) sat inside a piece and the rules converged
    algebraically (relative fine/coarse gaps 1e-5 at every such t, not only at the corner exit
    t = 0.4, where the corner (1, 1) of the kink lines is on the edge of the support). Now the
    smallest rule pair agrees to rounding and the values match the mpmath sphere quadrature."""
    import sympy as sp

    from symbnmf._activations import x
    from symbnmf.fast._epsquad import _integrals
    from symbnmf.numeric._epsilon import _values
    from symbnmf.symbolic._algebra import B as Bsym
    from symbnmf.symbolic._epsilon import concrete_terms

    phi = get_activation("leaky_relu(0.2)").bound_expr
    ev = _integrals(phi, False, 1e-10)
    ts = np.array([0.3, 0.39, 0.4, 0.4 + 1e-9, 0.41, 0.6])
    args = [ts, np.ones_like(ts), np.full_like(ts, -0.4)]
    small, coarse = ev._compute([4], args, ts.size, ((32, 28), (28, 24)))
    np.testing.assert_allclose(small, coarse, rtol=0, atol=1e-13)
    terms = {
        name: tuple((sp.sympify(c).subs(Bsym, 4), f1, f2) for c, f1, f2 in tt)
        for name, tt in concrete_terms(phi, x, sp.Integer(1), sp.Rational(-2, 5)).items()
    }
    for j, t in [(0, sp.Rational(3, 10)), (2, sp.Rational(2, 5))]:  # a missing tangency; the corner exit
        with mpmath.workdps(26):
            ref = _values(terms, 4, 18, t, "test")
        for i, name in enumerate(ev._plan.names):
            assert small[i, j, 0] == pytest.approx(float(ref[name]), rel=1e-13, abs=1e-14), (float(t), name)


def test_leaky_relu_negative_beta_against_explicit_maps():
    """leaky ReLU(0.2) at beta = -0.4, B = 4, eps = 0.1 (the refused case of issue 12) against the
    explicit B x B maps (seeded Monte Carlo, tests/explicit.py). sigma_w^2 = 2: BSB1 (mu* = 0.376,
    tau = mu s/(mu s + B eps) sweeps over the cuts 0.053, 0.16 of the tables); sigma_w^2 = 1
    collapses. (The mpmath path agrees too but needs ~4 minutes for its tables.)"""
    import explicit as ex

    def leaky(v):
        return np.where(v > 0, v, 0.2 * v)

    def dleaky(v):
        return np.where(v > 0, 1.0, 0.2)

    B, eps, beta = 4, 0.1, -0.4
    r = fast_evaluate_eps("leaky_relu(0.2)", B, eps=eps, weight_var=[1.0, 2.0], beta=beta)
    assert list(r["phase"]) == ["collapsed", "bsb1"]
    mu, sw = float(r["mu"][1]), 2.0
    assert ex.eps_fixed_point(leaky, B, eps, sw, beta=beta, n=60_000) == pytest.approx(mu, rel=5e-3)
    fp = ex.eps_fixed_point_entries(leaky, B, eps, sw, mu, beta=beta, n=100_000)
    assert abs(fp["diag"].z(float(r["fixed_point.diag"][1]))) < 4.5
    assert abs(fp["offdiag"].z(float(r["fixed_point.offdiag"][1]))) < 4.5
    D = ex.test_directions(B)
    for X in "GLM":
        f = ex.eps_forward_rayleigh(leaky, B, D[X], eps, sw, mu, beta=beta, n=60_000)
        b = ex.eps_backward_rayleigh(leaky, dleaky, B, D[X], eps, sw, mu, beta=beta, n=20_000)
        assert abs(f.z(float(r[f"forward.{X}"][1]))) < 4.5, X
        assert abs(b.z(float(r[f"backward.{X}"][1]))) < 4.5, X
