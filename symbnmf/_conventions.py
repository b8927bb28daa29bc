"""Conventions shared by every number symbnmf prints (see ``docs/theory.md``).

* BN(h) = n(G h), G = I - 11^T/B, n(y) = sqrt(B) y/|y|; gamma = 1, beta = 0, eps = 0
  (BN's gamma and beta are absorbed into the activation: phi(gamma x + beta)).
* sigma_w^2 = 1, sigma_b^2 = 0 (both drop out of every reported quantity).
* ``fixed_point.diag``/``fixed_point.offdiag``: entries of the BSB1 fixed point Sigma*,
  E[phi(y1)^2] and E[phi(y1) phi(y2)] for y uniform on the radius-sqrt(B) sphere in 1-perp.
* ``forward.{G,L,M}``: eigenvalues of Sigma -> G V(Sigma) G / mu* at Sigma = G on the pieces
  G, L, M of Sym(1-perp), mu* = Sigma*_ii - Sigma*_ij (Thm 3.6, 3.7).
* ``backward.{G,L,M}``: eigenvalues of the gradient map Pi -> E[J^T Pi J] at Sigma*
  on the same pieces (Thm 3.9, 3.10); backward.G is the per-layer growth factor of the squared
  gradient norm; depth scale xi = 1/ln backward.G.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from symbnmf._errors import BatchSizeError

CONVENTIONS = (
    "Yang et al. ICLR 2019 mean field theory of batch norm; BN(h)=n(Gh), G=I-11^T/B, "
    "n(y)=sqrt(B)y/|y|, gamma=1, beta=0, eps=0, sigma_w^2=1, sigma_b^2=0; "
    "fixed_point = BSB1 Sigma* entries; forward.X = eigenvalue of Sigma -> G V(Sigma) G/mu* at "
    "Sigma=G on piece X of Sym(1-perp) (mu* = diag-offdiag); backward.X = eigenvalue of "
    "Pi -> E[J^T Pi J] at Sigma*; depth_scale = 1/ln backward.G"
)

#: The same for the records of the eps theory (``eval --eps/--weight-var/--gamma/--beta``,
#: docs/theory.md §8); each record carries its own eps, weight_var, gamma, beta.
EPS_CONVENTIONS = (
    "Yang et al. ICLR 2019 mean field theory of batch norm with eps (docs/theory.md section 8); "
    "h = W x + b, W_ij ~ N(0, sigma_w^2/N), x = phi(gamma BN_eps(h) + beta), "
    "BN_eps(h) = Gh/sqrt(|Gh|^2/B + eps) (biased variance), G=I-11^T/B; eps, sigma_w^2 (weight_var), "
    "gamma, beta as given in each record; sigma_b^2 drops out (reported at 0); fixed_point = "
    "pre-activation BSB1 Sigma* entries (they scale with sigma_w^2), phase bsb1 | collapsed, "
    "mu = diag-offdiag; forward.X = eigenvalue of the covariance map at Sigma* on piece X of "
    "Sym(1-perp) (forward.G = F'(mu*)); backward.X = eigenvalue of Pi -> E[J^T Pi J] at Sigma* "
    "with J = sqrt(B)/n (G - Gh h^T G/n^2), n^2 = |Gh|^2 + B eps; depth_scale = 1/ln backward.G "
    "(null when backward.G <= 1)"
)

#: Names of the quantities, in the order they are reported.
QUANTITIES = (
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

MIN_BATCH = 4
#: Largest B the quadrature paths accept: their work grows with B, and beyond it every quantity
#: is within O(1/B) of its Gaussian limit (:func:`symbnmf.numeric._limits.gaussian_limits`).
MAX_QUADRATURE_BATCH = 100_000


def check_batch_size(B: Any, *, minimum: int = MIN_BATCH, what: str = "the mean field formulas") -> int:
    """Return ``B`` as an ``int`` or raise :class:`BatchSizeError` naming the fix.

    The theory (App. J) needs an integer B >= 4: B = 1 is undefined, B = 2 gives zero gradients,
    B = 3 is only conjectured. Monte Carlo accepts smaller batches by passing ``minimum``.
    """
    if isinstance(B, bool):
        raise BatchSizeError(f"batch size must be an integer, got {B!r}")
    if isinstance(B, numbers.Integral):
        b = int(B)
    else:
        try:
            f = float(B)
        except (TypeError, ValueError):
            raise BatchSizeError(f"batch size must be an integer, got {str(B)[:40]!r}") from None
        if not math.isfinite(f):
            raise BatchSizeError(f"batch size must be a finite integer, got {str(B)[:40]!r}")
        if not f.is_integer():
            raise BatchSizeError(
                f"batch size must be an integer, got {B!r}; use e.g. --batch-size {max(minimum, round(f))}"
            )
        b = int(f)
    if b < minimum:
        raise BatchSizeError(
            f"batch size B={b} is outside the theory: {what} need B >= {minimum} "
            f"(App. J: B=2 gives zero gradients, B=3 is unproven); use B >= {minimum}"
            + (" or simulate small batches with `symbnmf simulate`" if minimum >= MIN_BATCH else "")
        )
    return b


def check_quadrature_batch(B: int) -> int:
    """``B`` checked for the quadrature paths (B <= :data:`MAX_QUADRATURE_BATCH`), else a
    :class:`BatchSizeError` pointing to the closed forms and the Gaussian (B -> infinity) limits."""
    b = check_batch_size(B)
    if b > MAX_QUADRATURE_BATCH:
        raise BatchSizeError(
            f"B={b} is beyond the quadrature paths (B <= {MAX_QUADRATURE_BATCH}); at such B every quantity is "
            "within O(1/B) of its Gaussian limit: use symbnmf.numeric.gaussian_limits(phi), or a closed form "
            "(`symbnmf derive`) for piecewise-polynomial phi"
        )
    return b
