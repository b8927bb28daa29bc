"""Independent Monte Carlo of the *explicit* B x B mean-field maps (numpy only).

Nothing here uses symbnmf's reduction, lemmas or closed forms: the maps are built from their
definitions with explicit numeric B x B matrices, so they test the whole symbolic pipeline.

* fixed point: y uniform on the radius-sqrt(B) sphere in 1-perp (normalised centred Gaussians);
* forward: V(Sigma) = E phi(n(G h)) phi(n(G h))^T with h = (G + t Delta)^{1/2} w, differentiated
  by central differences with common random numbers (pathwise derivative, no score formula);
* backward: T(Pi) = E[B/|Gh|^2] E_y[P D Pi D P] with D = diag phi'(y), P = G - y y^T/B; the
  radial factor E[B/|Gh|^2] = B/((B-3) mu*) (inverse chi-square moment, certified separately)
  replaces the heavy-tailed radial sampling, which has infinite variance for B <= 5.

Every estimate comes with a standard error from batch means (``n_batches`` independent
batches); ratios are formed per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: float

    def z(self, exact: float) -> float:
        return (self.value - exact) / self.stderr if self.stderr > 0 else (0.0 if self.value == exact else np.inf)


def _est(per_batch: Array) -> Estimate:
    per_batch = np.asarray(per_batch, dtype=float)
    return Estimate(float(per_batch.mean()), float(per_batch.std(ddof=1) / np.sqrt(len(per_batch))))


def centering(B: int) -> Array:
    return np.eye(B) - np.ones((B, B)) / B


def sphere_samples(B: int, n: int, rng: np.random.Generator) -> Array:
    """n points uniform on the sphere of radius sqrt(B) in 1-perp of R^B (rows)."""
    z = rng.standard_normal((n, B))
    z -= z.mean(axis=1, keepdims=True)
    return np.sqrt(B) * z / np.linalg.norm(z, axis=1, keepdims=True)


def test_directions(B: int) -> dict[str, Array]:
    """Explicit G, L, M test directions (built here in numpy, independently of symbnmf)."""
    G = centering(B)
    D = np.zeros((B, B))
    D[0, 0], D[1, 1] = 1.0, -1.0
    a = np.zeros(B)
    b = np.zeros(B)
    a[0], a[1], b[2], b[3] = 1, -1, 1, -1
    return {"G": G, "L": G @ D @ G, "M": np.outer(a, b) + np.outer(b, a)}


def _mu_per_sample(F: Array) -> Array:
    """Per-sample unbiased contributions to diag - offdiag of E phi phi^T (exchangeable coordinates)."""
    B = F.shape[1]
    sq = (F**2).sum(axis=1)
    tot = F.sum(axis=1) ** 2
    diag = sq / B
    off = (tot - sq) / (B * (B - 1))
    return diag - off


def fixed_point(
    phi: Callable[[Array], Array], B: int, n: int = 200_000, seed: int = 0, n_batches: int = 40
) -> dict[str, Estimate]:
    rng = np.random.default_rng(seed)
    y = sphere_samples(B, n, rng)
    F = phi(y)
    sq = (F**2).sum(axis=1) / B
    off = ((F.sum(axis=1)) ** 2 - (F**2).sum(axis=1)) / (B * (B - 1))
    return {
        "diag": _est(sq.reshape(n_batches, -1).mean(axis=1)),
        "offdiag": _est(off.reshape(n_batches, -1).mean(axis=1)),
    }


def _psd_sqrt(S: Array) -> Array:
    w, V = np.linalg.eigh((S + S.T) / 2)
    w = np.clip(w, 0.0, None)
    return (V * np.sqrt(w)) @ V.T


def _bn(h: Array) -> Array:
    B = h.shape[1]
    g = h - h.mean(axis=1, keepdims=True)
    return np.sqrt(B) * g / np.linalg.norm(g, axis=1, keepdims=True)


def forward_rayleigh(
    phi: Callable[[Array], Array],
    B: int,
    Delta: Array,
    n: int = 200_000,
    seed: int = 0,
    t: float = 1e-3,
    n_batches: int = 40,
) -> Estimate:
    """<Delta, G dV[Delta] G> / (mu* |Delta|^2) at Sigma = G, by central differences (Thm 3.6)."""
    rng = np.random.default_rng(seed)
    G = centering(B)
    w = rng.standard_normal((n, B))
    Fp = phi(_bn(w @ _psd_sqrt(G + t * Delta)))
    Fm = phi(_bn(w @ _psd_sqrt(G - t * Delta)))
    F0 = phi(_bn(w @ G))
    GDG = G @ Delta @ G
    num = (np.einsum("ni,ij,nj->n", Fp, GDG, Fp) - np.einsum("ni,ij,nj->n", Fm, GDG, Fm)) / (2 * t)
    mu = _mu_per_sample(F0)
    nb = num.reshape(n_batches, -1).mean(axis=1)
    mb = mu.reshape(n_batches, -1).mean(axis=1)
    return _est(nb / (mb * (Delta * Delta).sum()))


def backward_rayleigh(
    phi: Callable[[Array], Array],
    dphi: Callable[[Array], Array],
    B: int,
    Delta: Array,
    n: int = 200_000,
    seed: int = 0,
    n_batches: int = 40,
) -> Estimate:
    """<Delta, T(Delta)> / |Delta|^2 for the gradient map T (Thm 3.9), explicit B x B algebra."""
    rng = np.random.default_rng(seed)
    y = sphere_samples(B, n, rng)
    G = centering(B)
    Dp = dphi(y)  # n x B
    # <P Delta P, D Delta D> with P = G - y y^T/B, expanded (G Delta = Delta for Delta in Sym(1-perp)
    # is NOT assumed: the G parts are kept explicitly) in O(n B^2) without n x B x B arrays
    GDG = G @ Delta @ G
    GD = G @ Delta
    yd = y * Dp
    t1 = np.einsum("ni,ij,nj->n", Dp, GDG * Delta, Dp)
    t2 = np.einsum("ni,ij,nj->n", yd, Delta, (y @ GD.T) * Dp)  # sum_ij y_i (G Delta y)_j d_i d_j Delta_ij
    t3 = np.einsum("ni,ij,nj->n", (y @ GD.T) * Dp, Delta, yd)
    t4 = np.einsum("ni,ij,nj->n", y, Delta, y) * np.einsum("ni,ij,nj->n", yd, Delta, yd)
    val = t1 - (t2 + t3) / B + t4 / B**2
    mu = _mu_per_sample(phi(y))
    vb = val.reshape(n_batches, -1).mean(axis=1)
    mb = mu.reshape(n_batches, -1).mean(axis=1)
    return _est(B / ((B - 3) * mb) * vb / (Delta * Delta).sum())


def sym_basis(B: int) -> list[Array]:
    """An orthonormal basis of Sym(1-perp) (B(B-1)/2 matrices)."""
    Q = np.linalg.qr(np.vstack([np.ones(B), np.eye(B)[:-1]]).T)[0][:, 1:]  # B x (B-1), orthonormal, _|_ 1
    out = []
    for a in range(B - 1):
        for b in range(a, B - 1):
            E = np.zeros((B - 1, B - 1))
            E[a, b] = E[b, a] = 1.0
            E /= np.linalg.norm(E)
            out.append(Q @ E @ Q.T)
    return out


def backward_operator_spectrum(phi, dphi, B: int, n: int = 100_000, seed: int = 0) -> Array:
    """Eigenvalues of the Monte Carlo gradient map restricted to Sym(1-perp), sorted."""
    rng = np.random.default_rng(seed)
    y = sphere_samples(B, n, rng)
    G = centering(B)
    Dp = dphi(y)
    mu = _mu_per_sample(phi(y)).mean()
    c = B / ((B - 3) * mu)
    basis = sym_basis(B)
    Py = G[None] - y[:, :, None] * y[:, None, :] / B
    M = Py * Dp[:, None, :]  # P D (rows scaled on the right by d): (P D)_{ij} = P_ij d_j
    A = np.empty((len(basis), len(basis)))
    for k, E in enumerate(basis):
        TE = c * np.einsum("nij,jk,nlk->il", M, E, M) / n  # E[P D E D P]
        for m, F in enumerate(basis):
            A[m, k] = (F * TE).sum()
    return np.sort(np.linalg.eigvals(A).real)


def forward_operator_spectrum(phi, B: int, n: int = 100_000, seed: int = 0, t: float = 1e-3) -> Array:
    """Eigenvalues of the Monte Carlo forward Jacobian of Sigma -> G V(Sigma) G / mu* on Sym(1-perp)."""
    rng = np.random.default_rng(seed)
    G = centering(B)
    w = rng.standard_normal((n, B))
    mu = _mu_per_sample(phi(_bn(w @ G))).mean()
    basis = sym_basis(B)
    A = np.empty((len(basis), len(basis)))
    for k, E in enumerate(basis):
        Fp = phi(_bn(w @ _psd_sqrt(G + t * E)))
        Fm = phi(_bn(w @ _psd_sqrt(G - t * E)))
        dV = (Fp.T @ Fp - Fm.T @ Fm) / (2 * t * n)
        for m, F in enumerate(basis):
            A[m, k] = (F * (G @ dV @ G)).sum() / mu
    return np.sort(np.linalg.eigvals(A).real)


# ---------------------------------------------------------------------------------------------
# BN with eps > 0 (issue 12): explicit maps, sigma_w^2, gamma, beta
# ---------------------------------------------------------------------------------------------
def bn_eps(h: Array, eps: float) -> Array:
    """(h - mean)/sqrt(biased var + eps) per row (the BN layer as written, no reduction)."""
    g = h - h.mean(axis=1, keepdims=True)
    return g / np.sqrt((g**2).mean(axis=1, keepdims=True) + eps)


def bn_eps_jacobian(h: Array, eps: float) -> Array:
    """d bn_eps(h)/dh per row (n x B x B), by plain calculus of g/s with g = G h,
    s = sqrt(|g|^2/B + eps): dg/dh = G, ds/dh = g^T G/(B s)."""
    n, B = h.shape
    G = centering(B)
    g = h @ G
    s = np.sqrt((g**2).sum(axis=1) / B + eps)
    return G[None] / s[:, None, None] - g[:, :, None] * (g @ G)[:, None, :] / (B * s[:, None, None] ** 3)


def eps_fixed_point(
    phi: Callable[[Array], Array],
    B: int,
    eps: float,
    weight_var: float,
    gamma: float = 1.0,
    beta: float = 0.0,
    n: int = 200_000,
    seed: int = 0,
    iterations: int = 200,
    mu0: float = 1.0,
) -> float:
    """mu* by iterating mu -> sigma_w^2 (E x1^2 - E x1 x2), x = phi(gamma bn_eps(h) + beta),
    h ~ N(0, mu G) (common random numbers: the sampled map is iterated to its fixed point)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, B)) @ centering(B)
    mu = mu0
    for _ in range(iterations):
        mu = weight_var * _mu_per_sample(phi(gamma * bn_eps(np.sqrt(mu) * w, eps) + beta)).mean()
    return float(mu)


def eps_fixed_point_entries(phi, B, eps, weight_var, mu, gamma=1.0, beta=0.0, n=200_000, seed=1, n_batches=40):
    """Sigma*_ii, Sigma*_ij (sigma_b^2 = 0) at the BSB1 point mu G, with standard errors."""
    rng = np.random.default_rng(seed)
    h = np.sqrt(mu) * rng.standard_normal((n, B)) @ centering(B)
    F = phi(gamma * bn_eps(h, eps) + beta)
    sq = weight_var * (F**2).sum(axis=1) / B
    off = weight_var * ((F.sum(axis=1)) ** 2 - (F**2).sum(axis=1)) / (B * (B - 1))
    return {
        "diag": _est(sq.reshape(n_batches, -1).mean(axis=1)),
        "offdiag": _est(off.reshape(n_batches, -1).mean(axis=1)),
    }


def eps_forward_rayleigh(
    phi, B, Delta, eps, weight_var, mu, gamma=1.0, beta=0.0, n=200_000, seed=2, t=1e-3, n_batches=40
):
    """<Delta, dM[Delta]>/|Delta|^2 for M(S) = sigma_w^2 G E[x x^T] G, h ~ N(0, S), at S = mu G
    (central differences with common random numbers)."""
    rng = np.random.default_rng(seed)
    G = centering(B)
    w = rng.standard_normal((n, B))
    Fp = phi(gamma * bn_eps(w @ _psd_sqrt(mu * G + t * Delta), eps) + beta)
    Fm = phi(gamma * bn_eps(w @ _psd_sqrt(mu * G - t * Delta), eps) + beta)
    GDG = G @ Delta @ G
    num = weight_var * (np.einsum("ni,ij,nj->n", Fp, GDG, Fp) - np.einsum("ni,ij,nj->n", Fm, GDG, Fm)) / (2 * t)
    return _est(num.reshape(n_batches, -1).mean(axis=1) / (Delta * Delta).sum())


def eps_backward_rayleigh(
    phi, dphi, B, Delta, eps, weight_var, mu, gamma=1.0, beta=0.0, n=100_000, seed=3, n_batches=40
):
    """<Delta, sigma_w^2 E[J^T Delta J]>/|Delta|^2 with J = gamma diag(phi'(gamma bn + beta)) d bn/dh,
    h ~ N(0, mu G) sampled directly (finite variance for eps > 0: |d bn/dh| <= 1/sqrt(eps))."""
    del phi
    rng = np.random.default_rng(seed)
    h = np.sqrt(mu) * rng.standard_normal((n, B)) @ centering(B)
    Jbn = bn_eps_jacobian(h, eps)
    d = gamma * dphi(gamma * bn_eps(h, eps) + beta)
    J = d[:, :, None] * Jbn
    val = weight_var * np.einsum("nki,kl,nlj,ij->n", J, Delta, J, Delta)
    return _est(val.reshape(n_batches, -1).mean(axis=1) / (Delta * Delta).sum())
