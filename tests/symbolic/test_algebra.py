"""Batch-symmetric algebra with symbolic B against explicit numeric B x B matrices."""

from __future__ import annotations

import itertools

import explicit as ex
import numpy as np
import pytest
import sympy as sp

from symbnmf.symbolic._algebra import PIECE_DIMENSIONS, B, SMatrix, piece_direction
from symbnmf.symbolic._sphere import PHI, IndexTerm, U, reduce_index_sum, two_coordinate_form


def _random_smatrix(n: int, rng) -> SMatrix:
    vals = iter(rng.integers(-3, 4, size=n * n + 2 * n + 2).tolist())
    return SMatrix(
        n,
        sp.ImmutableMatrix(n, n, lambda i, j: next(vals)),
        tuple(next(vals) for _ in range(n)),
        tuple(next(vals) for _ in range(n)),
        next(vals) + 1 / B,
        next(vals) - 1 / B,
    )


@pytest.mark.parametrize("n", [0, 1, 2, 3])
@pytest.mark.parametrize("Bval", [4, 5, 8])
def test_product_inner_trace_match_explicit(n, Bval):
    rng = np.random.default_rng(n * 100 + Bval)
    A, C = _random_smatrix(n, rng), _random_smatrix(n, rng)
    An, Cn = A.to_numpy(Bval), C.to_numpy(Bval)
    np.testing.assert_allclose((A @ C).to_numpy(Bval), An @ Cn, rtol=1e-12, atol=1e-12)
    assert float(A.inner(C).subs(B, Bval)) == pytest.approx((An * Cn).sum(), rel=1e-12)
    assert float(A.trace().subs(B, Bval)) == pytest.approx(np.trace(An), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(A.T.to_numpy(Bval), An.T)


@pytest.mark.parametrize("piece", ["G", "L", "M"])
def test_test_directions_lie_in_their_pieces(piece):
    D = piece_direction(piece)
    G = SMatrix.centering(D.n)
    assert (G @ D @ G).equals(D)  # in Sym(1-perp)
    if piece == "G":
        assert D.equals(G)
    else:
        assert sp.simplify(D.trace()) == 0  # orthogonal to G
    if piece == "M":
        assert D.diagonal_is_zero()
    if piece == "L":
        # L = {G D G : D diagonal, tr D = 0}; orthogonal to M: <L, M> = 0
        assert sp.simplify(D.inner(piece_direction("M"))) == 0
    for Bval in (4, 6):
        np.testing.assert_allclose(D.to_numpy(Bval), ex.test_directions(Bval)[piece], atol=1e-12)


def test_piece_dimensions_add_up():
    assert sp.expand(sum(PIECE_DIMENSIONS.values()) - B * (B - 1) / 2) == 0


@pytest.mark.parametrize("Bval", [4, 5, 6, 8])
def test_directions_are_eigenvectors_of_the_explicit_backward_operator(Bval):
    """Thm 3.6: the spectrum of the explicit operator on Sym(1-perp) clusters in three values with
    multiplicities 1, B-1, B(B-3)/2, and the Rayleigh quotients of the test directions sit on them."""
    relu = lambda y: np.maximum(y, 0.0)
    drelu = lambda y: (y > 0).astype(float)
    spec = ex.backward_operator_spectrum(relu, drelu, Bval, n=40_000, seed=Bval)
    dims = [int(PIECE_DIMENSIONS[p].subs(B, Bval)) for p in ("M", "L", "G")]
    groups = np.split(spec, np.cumsum(dims)[:-1])
    dirs = ex.test_directions(Bval)
    for grp, piece in zip(groups, ("M", "L", "G")):
        r = ex.backward_rayleigh(relu, drelu, Bval, dirs[piece], n=40_000, seed=Bval)
        spread = max(grp.max() - grp.min(), 1e-12)
        assert abs(grp.mean() - r.value) < 2 * spread + 5 * r.stderr
    # the clusters are separated by more than their noise
    assert groups[0].max() < groups[1].min() and groups[1].max() < groups[2].min()


@pytest.mark.parametrize("Bval", [4, 6, 8])
def test_explicit_forward_jacobian_spectrum_matches_closed_forms(Bval):
    """The explicit forward Jacobian of Sigma -> G V(Sigma) G / mu* (central differences of V with
    common random numbers) has eigenvalue 0 on G, and clusters of multiplicity B-1 and B(B-3)/2
    at the derived lambda_L and lambda_M (Thm 3.6/3.7)."""
    import symbnmf

    relu = lambda y: np.maximum(y, 0.0)
    spec = ex.forward_operator_spectrum(relu, Bval, n=60_000, seed=Bval)
    rec = symbnmf.evaluate("relu", [Bval])[0]["forward"]
    dims = {p: int(PIECE_DIMENSIONS[p].subs(B, Bval)) for p in "GLM"}
    assert abs(spec[0]) < 1e-6  # the G direction: BN removes the scale
    rest = spec[1:]
    lam = sorted([(rec["L"], dims["L"]), (rec["M"], dims["M"])])
    groups = np.split(rest, [lam[0][1]])
    for grp, (value, _) in zip(groups, lam):
        assert abs(grp.mean() - value) < 0.02 * value, (grp, value)
        assert grp.max() - grp.min() < 0.05


# ---- orbit counting against explicit sums -----------------------------------------------------
@pytest.mark.parametrize("Bval", [4, 6])
def test_orbit_counting_matches_explicit_sum(Bval):
    """sum_{ijkl} A_ij C_kl E[u_i u_j u_k u_l] by orbits (exact in B) vs explicit sums with
    the exact sphere moment tensor (built from Isserlis / chi moments numerically)."""
    rng = np.random.default_rng(Bval)
    A, C = _random_smatrix(2, rng), _random_smatrix(2, rng)
    term = IndexTerm(sp.S.One, ((A, "i", "j"), (C, "k", "l")), ((U, "i"), (U, "j"), (U, "k"), (U, "l")))
    red = reduce_index_sum([term], 2)
    total = sp.S.Zero
    for key, coeff in red.items():
        for c, f1, f2 in two_coordinate_form(key):
            assert f1 == 1 and f2 == 1  # purely polynomial: reduces to a constant
            total += coeff * c
    # explicit: for y uniform on the sphere in 1-perp, E[y_i y_j y_k y_l] = B^2/((B-1)(B+1)) (G_ij G_kl + G_ik G_jl + G_il G_jk)
    G = ex.centering(Bval)
    m4 = (
        Bval**2
        / ((Bval - 1) * (Bval + 1))
        * (np.einsum("ij,kl->ijkl", G, G) + np.einsum("ik,jl->ijkl", G, G) + np.einsum("il,jk->ijkl", G, G))
    )
    An, Cn = A.to_numpy(Bval), C.to_numpy(Bval)
    expl = np.einsum("ij,kl,ijkl->", An, Cn, m4)
    assert float(total.subs(B, Bval)) == pytest.approx(expl, rel=1e-12)


def test_exact_sphere_identities():
    """E[(sum_i y_i)^2] = 0 and E[sum_i y_i^2] = B hold exactly after the reduction."""
    ones = SMatrix.ones(0)
    eye = SMatrix.identity(0)
    for T, expected in ((ones, 0), (eye, B)):
        red = reduce_index_sum([IndexTerm(sp.S.One, ((T, "i", "j"),), ((U, "i"), (U, "j")))], 0)
        total = sum((coeff * c for key, coeff in red.items() for c, _, _ in two_coordinate_form(key)), sp.S.Zero)
        assert sp.simplify(total - expected) == 0


def test_more_than_two_nonlinear_coordinates_is_refused():
    with pytest.raises(NotImplementedError):
        two_coordinate_form((PHI, PHI, PHI))


def test_set_partitions_count_bell_numbers():
    from symbnmf.symbolic._sphere import _set_partitions

    for k, bell in zip(range(6), [1, 1, 2, 5, 15, 52]):
        assert sum(1 for _ in _set_partitions(list("abcdef")[:k])) == bell
        for part in _set_partitions(list("abcdef")[:k]):
            assert sorted(itertools.chain(*part)) == list("abcdef")[:k]
