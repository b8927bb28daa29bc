"""Batch-symmetric algebra with the batch size B as a SymPy symbol.

Everything in the mean field theory of BN is invariant under permuting the batch. A B x B
matrix that is symmetric under permutations fixing ``n`` *named* indices 1..n is determined by
a handful of orbit values, whatever B is:

* ``N``   the n x n block of named-named entries,
* ``NR``  entry (named i, rest r) (the same for every rest index r),
* ``RN``  entry (rest r, named j),
* ``RRd`` a rest-diagonal entry, ``RRo`` a rest-off-diagonal entry.

:class:`SMatrix` implements +, scalar *, matrix product, trace and the Frobenius inner product
on these orbit values exactly in B, so test directions of the G/L/M pieces (Thm 3.6) such as
``G D G`` are *computed* rather than typed in. ``n = 0`` gives the BSB1 matrices
``q[(1-c) I + c 11^T]`` (Defn E.1). A numeric :meth:`SMatrix.to_numpy` exists only to test this
algebra against explicit B x B matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

Label = int | tuple  # a named index 0..n-1, or ("r", block) for an index in the rest

B = sp.Symbol("B", positive=True)


@dataclass(frozen=True)
class SMatrix:
    """A B x B matrix invariant under the permutations of the B - n unnamed indices."""

    n: int
    N: sp.ImmutableMatrix
    NR: tuple
    RN: tuple
    RRd: sp.Expr
    RRo: sp.Expr

    # ---- constructors ---------------------------------------------------------------------
    @staticmethod
    def from_rule(n: int, rule) -> SMatrix:
        """Build from ``rule(a, b)`` evaluated on orbit representatives (labels as in :meth:`entry`)."""
        N = sp.ImmutableMatrix(n, n, lambda i, j: sp.sympify(rule(int(i), int(j))))
        NR = tuple(sp.sympify(rule(i, ("r", 0))) for i in range(n))
        RN = tuple(sp.sympify(rule(("r", 0), j)) for j in range(n))
        return SMatrix(n, N, NR, RN, sp.sympify(rule(("r", 0), ("r", 0))), sp.sympify(rule(("r", 0), ("r", 1))))

    @staticmethod
    def identity(n: int = 0) -> SMatrix:
        return SMatrix.from_rule(n, lambda a, b: 1 if a == b else 0)

    @staticmethod
    def ones(n: int = 0) -> SMatrix:
        """The all-ones matrix 11^T."""
        return SMatrix.from_rule(n, lambda a, b: 1)

    @staticmethod
    def centering(n: int = 0) -> SMatrix:
        """G = I - 11^T/B, the centering projection of BN."""
        return SMatrix.identity(n) - SMatrix.ones(n) / B

    @staticmethod
    def bsb1(diag: sp.Expr, offdiag: sp.Expr, n: int = 0) -> SMatrix:
        """The BSB1 matrix with ``diag`` on the diagonal and ``offdiag`` off it."""
        return SMatrix.from_rule(n, lambda a, b: diag if a == b else offdiag)

    @staticmethod
    def named(n: int, entries: dict) -> SMatrix:
        """A matrix supported on the named indices: ``entries[(i, j)]`` for 0 <= i, j < n."""
        return SMatrix.from_rule(
            n, lambda a, b: entries.get((a, b), 0) if isinstance(a, int) and isinstance(b, int) else 0
        )

    @staticmethod
    def named_diagonal(values: list) -> SMatrix:
        n = len(values)
        return SMatrix.named(n, {(i, i): v for i, v in enumerate(values)})

    @staticmethod
    def outer(u: list, v: list) -> SMatrix:
        """u v^T for vectors supported on the named indices."""
        n = len(u)
        return SMatrix.named(n, {(i, j): u[i] * v[j] for i in range(n) for j in range(n)})

    # ---- access ---------------------------------------------------------------------------
    def entry(self, a: Label, b: Label) -> sp.Expr:
        """Entry at labels ``a, b``: an int < n is a named index, ``("r", k)`` the k-th distinct rest index."""
        if isinstance(a, int) and isinstance(b, int):
            return self.N[a, b]
        if isinstance(a, int):
            return self.NR[a]
        if isinstance(b, int):
            return self.RN[b]
        return self.RRd if a == b else self.RRo

    def with_named(self, n: int) -> SMatrix:
        """The same matrix with more named indices (n >= self.n)."""
        if n < self.n:
            raise ValueError("cannot forget named indices")
        return SMatrix.from_rule(
            n,
            lambda a, b: self.entry(
                a if (not isinstance(a, int) or a < self.n) else ("r", ("x", a)),
                b if (not isinstance(b, int) or b < self.n) else ("r", ("x", b)),
            ),
        )

    # ---- algebra --------------------------------------------------------------------------
    def _align(self, other: SMatrix) -> tuple[SMatrix, SMatrix]:
        n = max(self.n, other.n)
        return self.with_named(n), other.with_named(n)

    def __add__(self, other: SMatrix) -> SMatrix:
        a, b = self._align(other)
        return SMatrix(
            a.n,
            a.N + b.N,
            tuple(x + y for x, y in zip(a.NR, b.NR)),
            tuple(x + y for x, y in zip(a.RN, b.RN)),
            a.RRd + b.RRd,
            a.RRo + b.RRo,
        )

    def __neg__(self) -> SMatrix:
        return self * -1

    def __sub__(self, other: SMatrix) -> SMatrix:
        return self + (-other)

    def __mul__(self, c) -> SMatrix:
        c = sp.sympify(c)
        return SMatrix(
            self.n, self.N * c, tuple(v * c for v in self.NR), tuple(v * c for v in self.RN), self.RRd * c, self.RRo * c
        )

    __rmul__ = __mul__

    def __truediv__(self, c) -> SMatrix:
        return self * (1 / sp.sympify(c))

    def __matmul__(self, other: SMatrix) -> SMatrix:
        a, c = self._align(other)
        n = a.n
        m = B - n  # number of rest indices
        N = sp.ImmutableMatrix(
            n, n, lambda i, j: sum((a.N[i, k] * c.N[k, j] for k in range(n)), sp.S.Zero) + m * a.NR[i] * c.RN[j]
        )
        NR = tuple(
            sum((a.N[i, k] * c.NR[k] for k in range(n)), sp.S.Zero) + a.NR[i] * (c.RRd + (m - 1) * c.RRo)
            for i in range(n)
        )
        RN = tuple(
            sum((a.RN[k] * c.N[k, j] for k in range(n)), sp.S.Zero) + (a.RRd + (m - 1) * a.RRo) * c.RN[j]
            for j in range(n)
        )
        named = sum((a.RN[k] * c.NR[k] for k in range(n)), sp.S.Zero)
        RRd = named + a.RRd * c.RRd + (m - 1) * a.RRo * c.RRo
        RRo = named + a.RRd * c.RRo + a.RRo * c.RRd + (m - 2) * a.RRo * c.RRo
        return SMatrix(n, N, NR, RN, RRd, RRo).simplified()

    def transpose(self) -> SMatrix:
        return SMatrix(self.n, self.N.T, self.RN, self.NR, self.RRd, self.RRo)

    @property
    def T(self) -> SMatrix:
        return self.transpose()

    def trace(self) -> sp.Expr:
        return sp.factor(sp.together(sum((self.N[i, i] for i in range(self.n)), sp.S.Zero) + (B - self.n) * self.RRd))

    def inner(self, other: SMatrix) -> sp.Expr:
        """Frobenius inner product <A, C> = tr(A^T C)."""
        a, c = self._align(other)
        n, m = a.n, B - a.n
        s = sum((a.N[i, j] * c.N[i, j] for i in range(n) for j in range(n)), sp.S.Zero)
        s += m * sum((a.NR[k] * c.NR[k] + a.RN[k] * c.RN[k] for k in range(n)), sp.S.Zero)
        s += m * a.RRd * c.RRd + m * (m - 1) * a.RRo * c.RRo
        return sp.factor(sp.together(s))

    def diagonal_is_zero(self) -> bool:
        return all(sp.simplify(self.N[i, i]) == 0 for i in range(self.n)) and sp.simplify(self.RRd) == 0

    def simplified(self) -> SMatrix:
        f = lambda e: sp.factor(sp.together(e))
        return SMatrix(
            self.n, self.N.applyfunc(f), tuple(map(f, self.NR)), tuple(map(f, self.RN)), f(self.RRd), f(self.RRo)
        )

    def equals(self, other: SMatrix) -> bool:
        d = (self - other).simplified()
        return all(sp.simplify(v) == 0 for v in list(d.N) + list(d.NR) + list(d.RN) + [d.RRd, d.RRo])

    # ---- numeric --------------------------------------------------------------------------
    def to_numpy(self, Bval: int) -> np.ndarray:
        """The explicit B x B matrix at an integer B (tests only)."""
        if Bval < self.n:
            raise ValueError("B smaller than the number of named indices")
        out = np.empty((Bval, Bval))
        vals = {
            k: float(sp.sympify(v).subs(B, Bval))
            for k, v in [("RRd", self.RRd), ("RRo", self.RRo)]
            + [(("NR", i), self.NR[i]) for i in range(self.n)]
            + [(("RN", i), self.RN[i]) for i in range(self.n)]
        }
        for a in range(Bval):
            for b in range(Bval):
                if a < self.n and b < self.n:
                    out[a, b] = float(sp.sympify(self.N[a, b]).subs(B, Bval))
                elif a < self.n:
                    out[a, b] = vals[("NR", a)]
                elif b < self.n:
                    out[a, b] = vals[("RN", b)]
                else:
                    out[a, b] = vals["RRd"] if a == b else vals["RRo"]
        return out


# ---------------------------------------------------------------------------------------------
# The pieces of Sym(1-perp) (Thm 3.6) and their test directions
# ---------------------------------------------------------------------------------------------
def piece_direction(piece: str) -> SMatrix:
    """A test direction spanning part of the piece ``G``, ``L`` or ``M`` of Sym(1-perp) (Thm 3.6).

    * ``G``: the centering projection G itself (overall scale of the batch).
    * ``L``: G D G with D = diag(1, -1, 0, ..., 0) (fluctuation of the per-sample norms).
    * ``M``: a b^T + b a^T with a = e1 - e2, b = e3 - e4 (zero diagonal, rows summing to 0).

    Each piece is irreducible and appears once in Sym(1-perp), so an ultrasymmetric operator acts
    on it as a scalar: its Rayleigh quotient on one test direction is the eigenvalue.
    """
    if piece == "G":
        return SMatrix.centering(0)
    if piece == "L":
        G = SMatrix.centering(2)
        return (G @ SMatrix.named_diagonal([1, -1]) @ G).simplified()
    if piece == "M":
        a = [1, -1, 0, 0]
        b = [0, 0, 1, -1]
        return (SMatrix.outer(a, b) + SMatrix.outer(b, a)).simplified()
    raise ValueError(f"unknown piece {piece!r}; use G, L or M")


PIECE_DIMENSIONS = {"G": sp.Integer(1), "L": B - 1, "M": B * (B - 3) / 2}
