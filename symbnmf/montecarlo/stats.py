"""Statistics for the Monte Carlo stage (numpy only; no JAX).

* :func:`glm_pieces` splits a batch covariance's deviation from the BSB1 fixed point into the
  pieces G, L, M of Sym(1-perp) (docs/theory.md, "Forward linearisation: G / L / M").
* :func:`fit_rate` estimates a per-layer geometric growth factor from per-network, per-layer
  positive samples as the slope of log(mean over networks) against depth, with a delete-one
  jackknife standard error over networks.

Lemma (orthogonal projection onto L).  Inside Sym(1-perp) with the Frobenius inner product,
span{G E_i G} (E_i = e_i e_i^T) = G + L, the Gram matrix is <G E_i G, G E_j G> = (G_ij)^2, i.e.
G∘G = (1 - 2/B) I + 11^T/B^2, and <G D G, Δ> = sum_i D_i Δ_ii for GΔG = Δ.  So the projection
of Δ onto G + L is G diag(D) G with (G∘G) D = diag(Δ) (G∘G is invertible for B >= 3); the
G component is (tr Δ/(B-1)) G, and what remains has zero diagonal, so it lies in M.  Tested in
``tests/test_montecarlo.py`` against a brute-force least-squares projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def centering(B: int) -> np.ndarray:
    """G = I - 11^T/B."""
    return np.eye(B) - np.ones((B, B)) / B


def glm_pieces(sigma: np.ndarray) -> dict[str, np.ndarray]:
    """Split the normalised deviation of batch covariances from the BSB1 fixed point.

    ``sigma``: array (..., B, B) of batch covariances Σ (B >= 3).  With μ = tr(GΣG)/(B-1) (the
    scale, which BN makes irrelevant) and Δ = GΣG/μ - G (so tr Δ = 0), returns the Frobenius
    norms of the orthogonal components of Δ on L = {G D G : tr D = 0} and on
    M = {GΣG = Σ, diag Σ = 0}, and μ itself: ``{"mu", "L", "M"}`` (each of shape ``...``).
    The part of Σ outside Sym(1-perp) is invisible to BN and dropped.
    """
    sigma = np.asarray(sigma, dtype=float)
    B = sigma.shape[-1]
    if B < 3:
        z = np.zeros(sigma.shape[:-2])
        mu = np.einsum("...ii->...", centering(B) @ sigma @ centering(B)) / max(B - 1, 1)
        return {"mu": mu, "L": z, "M": z}
    G = centering(B)
    sg = G @ sigma @ G
    mu = np.einsum("...ii->...", sg) / (B - 1)
    delta = sg / mu[..., None, None] - G
    gg = G * G
    d = np.linalg.solve(gg, np.diagonal(delta, axis1=-2, axis2=-1)[..., None])[..., 0]
    g_plus_l = G @ (d[..., :, None] * G)
    g_part = (np.einsum("...ii->...", delta) / (B - 1))[..., None, None] * G
    l_part = g_plus_l - g_part
    m_part = delta - g_plus_l
    return {
        "mu": mu,
        "L": np.sqrt(np.sum(l_part**2, axis=(-2, -1))),
        "M": np.sqrt(np.sum(m_part**2, axis=(-2, -1))),
    }


@dataclass(frozen=True)
class RateFit:
    """A per-layer growth factor fitted over layers ``lo..hi`` (inclusive)."""

    rate: float
    stderr: float
    lo: int
    hi: int
    log_mean: np.ndarray  # log of the mean over networks, per layer


def _slope(logm: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """Least-squares slope of logm (..., n) against layers (n,)."""
    t = layers - layers.mean()
    return (logm * t).sum(-1) / (t * t).sum()


def fit_rate(samples: np.ndarray, lo: int, hi: int, *, direction: int = -1) -> RateFit:
    """Per-layer growth factor of ``mean_k samples[k, l]`` fitted on layers ``lo..hi``.

    ``samples``: (K networks, n layers), positive.  With m(l) the mean over networks,
    ``log m(l) ≈ a + direction * l * log(rate)``: direction = -1 for quantities that grow
    towards the input (backpropagated gradients), +1 for ones that grow with depth.  The rate is
    estimated from the log of the mean (the theory predicts the growth of the mean; the mean of
    logs is biased low by Jensen's inequality and small batches are heavy-tailed), and its
    standard error by the delete-one jackknife over networks.  If the mean vanishes in the
    window (B = 2: gradients are exactly zero), the rate is 0 with standard error 0.
    """
    s = np.asarray(samples, dtype=float)
    K = s.shape[0]
    seg = s[:, lo : hi + 1]
    layers = np.arange(lo, hi + 1, dtype=float)
    with np.errstate(divide="ignore"):
        logm_all = np.log(s.mean(0))
    m = seg.mean(0)
    if not np.all(m > 0) or hi <= lo:
        return RateFit(0.0, 0.0, lo, hi, logm_all)
    rate = float(np.exp(direction * _slope(np.log(m), layers)))
    if K < 2:
        return RateFit(rate, float("nan"), lo, hi, logm_all)
    loo = (seg.sum(0)[None, :] - seg) / (K - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        loo_rates = np.exp(direction * _slope(np.log(loo), layers))
    if not np.all(np.isfinite(loo_rates)):
        return RateFit(rate, float("nan"), lo, hi, logm_all)
    se = float(np.sqrt((K - 1) / K * np.sum((loo_rates - loo_rates.mean()) ** 2)))
    return RateFit(rate, se, lo, hi, logm_all)


def zscore(measured: float | None, stderr: float | None, theory: float | None) -> float | None:
    """(measured - theory)/stderr, or None when any is missing or stderr is 0/NaN."""
    if measured is None or theory is None or stderr is None:
        return None
    if not np.isfinite(stderr) or stderr <= 0 or not np.isfinite(theory):
        return None
    return float((measured - theory) / stderr)


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean over the first axis and its standard error."""
    v = np.asarray(values, dtype=float)
    if v.shape[0] < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.shape[0]))


def extrapolate_width(ns, values, ses) -> tuple[float, float]:
    """Finite-width extrapolation: weighted least squares of ``values`` (standard errors ``ses``)
    against 1/N; returns the intercept (the N -> infinity prediction) and its standard error.
    The mean field limit is N -> infinity and finite width biases rates by O(1/N) (docs/theory.md)."""
    X = np.c_[np.ones(len(ns)), 1.0 / np.asarray(ns, float)]
    w = 1.0 / np.asarray(ses, float) ** 2
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = cov @ X.T @ (w * np.asarray(values, float))
    return float(beta[0]), float(np.sqrt(cov[0, 0]))
