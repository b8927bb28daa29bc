"""One BN + φ layer (issue 11): exact NNGP / NTK transport against independent references.

References: ``laplace_V`` (mpmath, 30 digits, ε = 0); the radial factorisation at BSB1 inputs with
ε > 0 (mpmath χ² integral); symbnmf's closed-form fixed point and forward/backward eigenvalues
(``evaluate``); seeded Monte Carlo with Jacobians from ``jax.jacfwd`` (independent of the Stein
reduction); finite differences for gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symbnmf
from symbnmf._errors import ActivationError, BatchSizeError
from symbnmf.kernels import KernelError, MonteCarloKernel, batchnorm_nngp, batchnorm_ntk
from symbnmf.numeric._laplace import laplace_V

HOMOGENEOUS = ["relu", "identity", "leaky_relu(0.2)", "alpha_relu(1.5)"]


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def random_cov(B: int, seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rank or B + 2
    A = rng.standard_normal((B, d)) * rng.uniform(0.3, 3.0, size=(B, 1))
    return A @ A.T / d + rng.uniform(0, 1) * np.ones((B, B))


def real_matrix(M) -> np.ndarray:
    """laplace_V's degree-α wedge integrals can return mpc with a round-off imaginary part."""
    out = np.array([[complex(v) for v in row] for row in M.tolist()])
    assert np.max(np.abs(out.imag)) < 1e-12 * np.max(np.abs(out.real))
    return out.real


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@functools.cache
def theory(act: str, B: int) -> dict:
    return symbnmf.evaluate(act, [B])[0]


def bsb1(B: int, diag: float, offdiag: float) -> np.ndarray:
    return (diag - offdiag) * np.eye(B) + offdiag * np.ones((B, B))


# --- against laplace_V (mpmath, 30 digits) ------------------------------------------------------


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(4, 8), seed=st.integers(0, 2**31 - 1), act=st.sampled_from(HOMOGENEOUS[:3]), low=st.booleans())
def test_matches_laplace_V_at_random_psd(B, seed, act, low):
    cov = random_cov(B, seed, rank=max(1, B // 2) if low else None)
    ref = np.array(laplace_V(act, cov, 30).tolist(), dtype=float)
    assert rel(batchnorm_nngp(cov, act), ref) < 1e-12


@pytest.mark.slow
def test_alpha_relu_matches_laplace_V():
    # laplace_V's degree-α wedge integrals are mpmath quadratures per entry and node: keep B small
    cov = random_cov(4, 5)
    ref = real_matrix(laplace_V("alpha_relu(1.5)", cov, 16))
    assert rel(batchnorm_nngp(cov, "alpha_relu(1.5)"), ref) < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("B", [16, 32, 64])
def test_matches_laplace_V_large_batch(B):
    cov = random_cov(B, 100 + B)
    ref = np.array(laplace_V("relu", cov, 30).tolist(), dtype=float)
    assert rel(batchnorm_nngp(cov, "relu"), ref) < 1e-12


# --- ε > 0: radial factorisation at BSB1 inputs -----------------------------------------------------


def radial_factor(B: int, q: float, eps: float, alpha: float) -> float:
    """E[(r²/(r² + Bε))^α], r² = q χ²_{B−1} (mpmath, 30 digits): V_ε(qG) = this · Σ*."""
    with mpmath.workdps(30):
        k = mpmath.mpf(B - 1) / 2
        dens = lambda x: x ** (k - 1) * mpmath.exp(-x) / mpmath.gamma(k)  # x = χ²/2 ~ Gamma(k)
        f = lambda x: dens(x) * (2 * q * x / (2 * q * x + B * eps)) ** alpha
        return float(mpmath.quad(f, [0, k, 4 * k, mpmath.inf]))


@pytest.mark.parametrize("B", [4, 16, 128])
@pytest.mark.parametrize("eps", [1e-3, 1.0])
@pytest.mark.parametrize("act", ["relu", pytest.param("leaky_relu(0.2)", marks=pytest.mark.slow)])
def test_eps_at_bsb1_matches_radial_factorisation(B, eps, act):
    fp = theory(act, B)["fixed_point"]
    star = bsb1(B, fp["diag"], fp["offdiag"])
    q = 0.7
    cov = q * np.eye(B) + 0.4  # BSB1: G cov G = q G
    want = radial_factor(B, q, eps, 1.0) * star
    assert rel(batchnorm_nngp(cov, act, eps=eps), want) < 1e-12


def test_eps_alpha_relu_radial():
    B, eps, q = 4, 0.05, 1.3
    ref0 = real_matrix(laplace_V("alpha_relu(1.5)", np.eye(B), 15))  # Σ* (ε = 0)
    want = radial_factor(B, q, eps, 1.5) * ref0
    assert rel(batchnorm_nngp(q * np.eye(B), "alpha_relu(1.5)", eps=eps), want) < 1e-12


# --- the fixed point and the forward / backward eigenvalues symbnmf derives ------------------------


@pytest.mark.parametrize("B", [4, 16, 128])
@pytest.mark.parametrize("act", ["relu", "identity", "leaky_relu(0.2)"])
def test_bsb1_input_gives_the_fixed_point(act, B):
    fp = theory(act, B)["fixed_point"]
    V = batchnorm_nngp(2.0 * np.eye(B) + 0.5, act)
    assert rel(V, bsb1(B, fp["diag"], fp["offdiag"])) < 1e-12


def directions(B: int) -> dict[str, np.ndarray]:
    G = np.eye(B) - 1.0 / B
    D = np.zeros((B, B))
    D[0, 0], D[1, 1] = 1, -1
    M = np.zeros((B, B))
    for (i, j), v in {(0, 1): 1, (2, 3): 1, (0, 2): -1, (1, 3): -1}.items():
        M[i, j] = M[j, i] = v
    return {"L": G @ D @ G, "M": M, "G": G}


@pytest.mark.parametrize("B", [4, 8, 64])
def test_forward_eigenvalues_by_jvp(B):
    """jax.jvp of V at Σ = G along the L and M test directions gives λ↑_L, λ↑_M (Thm 3.6)."""
    t = theory("relu", B)
    mu = t["fixed_point"]["diag"] - t["fixed_point"]["offdiag"]
    G = np.eye(B) - 1.0 / B
    f = lambda S: batchnorm_nngp(S, "relu")
    for name in ("L", "M"):
        D = directions(B)[name]
        _, dV = jax.jvp(f, (jnp.asarray(G),), (jnp.asarray(D),))
        lam = np.sum(D * (G @ np.asarray(dV) @ G)) / (mu * np.sum(D * D))
        assert abs(lam - t["forward"][name]) < 1e-11 * abs(t["forward"][name])


@pytest.mark.parametrize("B", [4, 8, 64])
@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)"])
def test_ntk_transport_has_the_backward_eigenvalues(act, B):
    """Θ ↦ E[J Θ Jᵀ] is the adjoint of the backward map Π ↦ E[Jᵀ Π J]: same λ↓_G, λ↓_L, λ↓_M at Σ*."""
    t = theory(act, B)
    fp = t["fixed_point"]
    star = bsb1(B, fp["diag"], fp["offdiag"])
    G = np.eye(B) - 1.0 / B
    for name, D in directions(B).items():
        _, T = batchnorm_ntk(star, D, act)
        lam = np.sum(D * (G @ np.asarray(T) @ G)) / np.sum(D * D)
        assert abs(lam - t["backward"][name]) < 1e-11 * abs(t["backward"][name]), name


# --- Monte Carlo (independent Jacobians) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("act", "B", "eps"),
    [("relu", 6, 0.0), ("leaky_relu(0.2)", 4, 0.5), pytest.param("identity", 7, 0.01, marks=pytest.mark.slow)],
)
def test_ntk_against_monte_carlo(act, B, eps):
    cov = random_cov(B, 7 * B)
    theta = random_cov(B, 11 * B)
    V, T = batchnorm_ntk(cov, theta, act, eps=eps)
    mv, mt = batchnorm_ntk(cov, theta, act, eps=eps, exact=False, samples=200_000, key=jax.random.PRNGKey(B))
    for exact, mc in ((V, mv), (T, mt)):
        z = (np.asarray(exact) - np.asarray(mc.mean)) / np.maximum(np.asarray(mc.stderr), 1e-300)
        assert np.max(np.abs(z)) < 4.5


def test_non_homogeneous_is_monte_carlo_with_stderr():
    B = 5
    est = batchnorm_nngp(np.eye(B), "tanh", samples=100_000, key=jax.random.PRNGKey(3))
    assert isinstance(est, MonteCarloKernel)
    fp = theory("tanh", B)["fixed_point"]
    z = (np.asarray(est.mean) - bsb1(B, fp["diag"], fp["offdiag"])) / np.asarray(est.stderr)
    assert np.max(np.abs(z)) < 4.5
    # the exact path refuses it
    with pytest.raises(ActivationError, match="exact=False"):
        batchnorm_nngp(np.eye(B), "tanh", exact=True)
    with pytest.raises(ActivationError):
        batchnorm_ntk(np.eye(B), np.eye(B), "alpha_relu(1.5)", exact=True)


# --- jit / vmap / grad -----------------------------------------------------------------------------


def test_batched_jit_and_vmap_agree_with_single_calls():
    covs = np.stack([random_cov(6, s) for s in range(3)])
    batched = np.asarray(batchnorm_nngp(covs, "relu", nodes=129))
    single = np.stack([np.asarray(batchnorm_nngp(c, "relu", nodes=129)) for c in covs])
    assert rel(batched, single) < 1e-14
    jitted = jax.jit(lambda c: batchnorm_nngp(c, "relu", nodes=129))
    assert rel(jitted(covs), single) < 1e-14
    vm = jax.vmap(lambda c, e: batchnorm_nngp(c, "relu", eps=e, nodes=129), in_axes=(0, None))
    assert rel(vm(covs, 0.0), single) < 1e-14


def test_grad_against_finite_differences():
    B = 5
    cov = random_cov(B, 1)
    R = random_cov(B, 2)
    Dir = random_cov(B, 3)
    f = lambda S, e: jnp.sum(R * batchnorm_nngp(S, "relu", eps=e, nodes=257))
    gS, ge = jax.grad(f, argnums=(0, 1))(jnp.asarray(cov), 0.1)
    h = 1e-4
    fd = lambda g: (8 * (g(h) - g(-h)) - (g(2 * h) - g(-2 * h))) / (12 * h)  # O(h⁴)
    dS = fd(lambda t: float(f(jnp.asarray(cov + t * Dir), 0.1)))
    de = fd(lambda t: float(f(jnp.asarray(cov), 0.1 + t)))
    assert abs(float(jnp.sum(gS * Dir)) - dS) < 1e-8 * max(1.0, abs(dS))
    assert abs(float(ge) - de) < 1e-8 * max(1.0, abs(de))


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cov", "err", "match"),
    [
        (np.eye(3), BatchSizeError, "B >= 4"),
        (np.array([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), KernelError, "symmetric"),
        (np.diag([1.0, 1.0, 1.0, -1.0]), KernelError, "positive semidefinite"),
        (np.full((4, 4), np.nan), KernelError, "NaN"),
        (np.ones((4, 4)), KernelError, "G Σ G = 0"),
        (np.ones((4, 5)), KernelError, "shape"),
    ],
)
def test_bad_covariance(cov, err, match):
    with pytest.raises(err, match=match):
        batchnorm_nngp(cov, "relu")


def test_bad_eps_and_nodes():
    with pytest.raises(KernelError, match="eps"):
        batchnorm_nngp(np.eye(4), "relu", eps=-1e-3)
    with pytest.raises(KernelError, match="nodes"):
        batchnorm_nngp(np.eye(4), "relu", nodes=64)
    with pytest.raises(KernelError, match="theta"):
        batchnorm_ntk(np.eye(4), np.eye(5), "relu")


# --- the Gauss–Jacobi s-rule at ε = 0 -----------------------------------------------------------------


def gauss_families(B: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + B)
    A = rng.standard_normal((B, B + 3))
    A[1] = A[0] + 1e-3 * rng.standard_normal(B + 3)
    return {
        "bsb1": bsb1(B, 1.4, 0.4),
        "near_bsb1": bsb1(B, 1.3, 0.3) + 0.05 * random_cov(B, 7, 4 * B),
        "wide": random_cov(B, 8, 4 * B),
        "wishart": random_cov(B, 9),
        "rank3": random_cov(B, 10, 3) + 0.1,
        "near_duplicate": A @ A.T / (B + 3),
    }


def test_choose_rule_follows_the_spectrum():
    from symbnmf.kernels.nngp import SRule, choose_rule

    assert choose_rule(bsb1(16, 1.4, 0.4)) == SRule("gauss", 8, 1.0)  # κ = 1: one node would be exact
    near = choose_rule(bsb1(64, 1.3, 0.3) + 0.05 * random_cov(64, 7, 256))
    assert near.kind == "gauss" and near.nodes <= 16
    assert choose_rule(random_cov(16, 1), eps=0.1).kind == "de"  # e^{-sBε} is not analytic at x = 1
    ill = np.diag(np.logspace(0, 12, 16))  # κ ~ 1e12: no Gauss size is predicted to reach the target
    assert choose_rule(ill).kind == "de"
    flat = random_cov(8, 3, 2) + 0.1  # rank(Σ_G) = 2: the NTK integral needs the DE rule (a ≤ -1)
    assert choose_rule(flat, tail=1.0).kind == "de"


@pytest.mark.parametrize("B", [4, pytest.param(16, marks=pytest.mark.slow), pytest.param(64, marks=pytest.mark.slow)])
def test_gauss_rule_matches_a_fine_de_rule(B):
    """Every family (BSB1, near-BSB1, well- and ill-conditioned, low rank, near-duplicate inputs): the
    automatic rule agrees with a 1025-node double-exponential rule (itself checked against laplace_V
    above) for the NNGP of relu and alpha_relu(0.5) and for the NTK transport."""
    from symbnmf.kernels.nngp import choose_rule

    theta = bsb1(B, 1.2, 0.2)
    for name, cov in gauss_families(B).items():
        for act, beta in (("relu", 1.0), ("alpha_relu(0.5)", 0.5)):
            got, est = batchnorm_nngp(cov, act, return_error=True)
            ref = batchnorm_nngp(cov, act, nodes=1025)
            err = rel(got, ref)
            assert err < 1e-12, (name, act, choose_rule(cov, beta=beta), err)
            assert float(est) < 1e-6 or float(est) >= 0.1 * err  # an estimate, never far below the error
        _, T = batchnorm_ntk(cov, theta, "relu")
        _, Tref = batchnorm_ntk(cov, theta, "relu", nodes=1025)
        assert rel(T, Tref) < 1e-12, (name, choose_rule(cov, tail=1.0), rel(T, Tref))


def test_gauss_rule_converges_at_the_predicted_rate():
    """Fit the convergence order: the n-point Gauss–Jacobi error decays like ρ^{-2n} with
    ρ = (κ^{1/4} + 1)/(κ^{1/4} − 1) for the map x = s/(s + c) (module docstring)."""
    from symbnmf.kernels.nngp import SRule

    B = 12
    lam = np.linspace(1.0, 40.0, B - 1)  # κ = 40 on the range of G
    G = np.eye(B) - 1.0 / B
    Q = np.linalg.qr(np.random.default_rng(4).standard_normal((B, B)) @ G)[0][:, : B - 1]
    Q = np.linalg.qr(G @ Q)[0]
    cov = (Q * lam) @ Q.T + 0.3
    ref = np.asarray(batchnorm_nngp(cov, "relu", nodes=2049))
    ns = np.array([3, 5, 7, 9, 11])
    errs = np.array([rel(batchnorm_nngp(cov, "relu", rule=SRule("gauss", int(n))), ref) for n in ns])
    slope = np.polyfit(ns, np.log(errs), 1)[0]
    p = 40.0**0.25
    predicted = -2.0 * np.log((p + 1.0) / (p - 1.0))
    assert 1.25 * predicted < slope < 0.8 * predicted, (slope, predicted, errs)


def test_rule_under_jit_and_grad():
    from symbnmf.kernels.nngp import choose_rule

    cov = random_cov(8, 5, 32)
    rule = choose_rule(cov)
    assert rule.kind == "gauss"
    direct = np.asarray(batchnorm_nngp(cov, "relu"))
    jitted = jax.jit(lambda c: batchnorm_nngp(c, "relu", rule=rule))
    assert rel(jitted(jnp.asarray(cov)), direct) < 1e-14
    R, Dir = random_cov(8, 6), random_cov(8, 11)
    f = lambda S: jnp.sum(R * batchnorm_nngp(S, "relu", rule=rule))
    g = jax.grad(f)(jnp.asarray(cov))
    h = 1e-4
    fd = lambda k: float(f(jnp.asarray(cov + k * Dir)))
    d = (8 * (fd(h) - fd(-h)) - (fd(2 * h) - fd(-2 * h))) / (12 * h)
    assert abs(float(jnp.sum(g * Dir)) - d) < 1e-8 * max(1.0, abs(d))


def test_gauss_rule_refuses_eps():
    from symbnmf.kernels.nngp import SRule

    with pytest.raises(KernelError, match="eps = 0"):
        batchnorm_nngp(np.eye(4) + 0.1, "relu", eps=0.1, rule=SRule("gauss", 8))
    with pytest.raises(KernelError, match="SRule"):
        batchnorm_nngp(np.eye(4) + 0.1, "relu", rule=("gauss", 8))


def test_batch_is_evaluated_per_matrix_rule():
    """A concrete batch mixing near-BSB1 and ill-conditioned Σ: each matrix gets its own s-rule (groups
    called in blocks), and the batched result equals the one-matrix calls and a fine DE rule."""
    from symbnmf.kernels.nngp import _rule_groups

    B = 8
    covs = np.stack([bsb1(B, 1.3, 0.3) + 0.01 * random_cov(B, s, 4 * B) for s in range(3)] + [random_cov(B, 20)] * 2)
    groups = _rule_groups(covs, 0.0, 1.0, 0.0)
    assert len(groups) >= 2 and sorted(i for ix in groups.values() for i in ix) == list(range(5))
    V = np.asarray(batchnorm_nngp(covs, "relu"))
    single = np.stack([np.asarray(batchnorm_nngp(c, "relu")) for c in covs])
    assert rel(V, single) < 1e-13
    assert rel(V, batchnorm_nngp(covs, "relu", nodes=1025)) < 1e-12
    V2, T2 = batchnorm_ntk(covs.reshape(5, 1, B, B), np.eye(B), "relu")
    assert V2.shape == (5, 1, B, B)
    _, Tref = batchnorm_ntk(covs, np.eye(B), "relu", nodes=1025)
    assert rel(np.asarray(T2)[:, 0], Tref) < 1e-12


def test_host_spectrum_path_matches_the_traced_path():
    """Concrete calls take λ and Q of Σ_G from one host ``eigh`` (which also chooses each matrix's rule) and
    skip the kernel's own ``eigh``; traced calls (the caller's jit) do the ``eigh`` in the kernel. Both agree
    to 1e-13 (NNGP and NTK), on a batch of several rule groups."""
    from symbnmf.kernels.nngp import _BLOCK, _blocks, choose_rule

    assert _blocks(2 * _BLOCK + 5) == [_BLOCK, _BLOCK, 8] and _blocks(5) == [8] and _blocks(1) == [1]
    B = 8
    covs = np.stack(
        [bsb1(B, 1.3, 0.3) + 0.01 * random_cov(B, s, 4 * B) for s in range(3)]
        + [random_cov(B, 20 + s) for s in range(6)]
        + [random_cov(B, 30, 3) + 0.1]
    )
    theta = bsb1(B, 1.2, 0.2)
    V = np.asarray(batchnorm_nngp(covs, "relu"))
    V2, T = (np.asarray(x) for x in batchnorm_ntk(covs, theta, "relu"))
    nngp_jit = jax.jit(lambda c, r: batchnorm_nngp(c, "relu", rule=r), static_argnums=1)
    ntk_jit = jax.jit(lambda c, r: batchnorm_ntk(c, theta, "relu", rule=r), static_argnums=1)
    for i, c in enumerate(covs):
        assert rel(nngp_jit(jnp.asarray(c), choose_rule(c)), V[i]) < 1e-13, i
        Vt, Tt = ntk_jit(jnp.asarray(c), choose_rule(c, tail=1.0))
        assert rel(Vt, V2[i]) < 1e-13 and rel(Tt, T[i]) < 1e-13, i
