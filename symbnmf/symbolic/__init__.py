"""Stage 2 — symbolic: batch-symmetric algebra, exact-in-B sphere reduction, named Gaussian lemmas,
the quantity definitions (fixed point, forward Jacobian, gradient map) and their closed forms + LaTeX.
May import: the top-level base modules (_activations, _conventions, _errors), SymPy, mpmath. Never JAX."""

from symbnmf.symbolic._algebra import PIECE_DIMENSIONS as PIECE_DIMENSIONS
from symbnmf.symbolic._algebra import B as B
from symbnmf.symbolic._algebra import SMatrix as SMatrix
from symbnmf.symbolic._algebra import piece_direction as piece_direction
from symbnmf.symbolic._derivation import Derivation as Derivation
from symbnmf.symbolic._derivation import Step as Step
from symbnmf.symbolic._derive import derive as derive
from symbnmf.symbolic._epsforms import derive_eps as derive_eps
from symbnmf.symbolic._gaussian import LEMMAS as LEMMAS
from symbnmf.symbolic._gaussian import Lemma as Lemma
from symbnmf.symbolic._quantities import QuantityDefinition as QuantityDefinition
from symbnmf.symbolic._quantities import definitions as definitions
from symbnmf.symbolic._sphere import SphereIntegral as SphereIntegral

__all__ = [
    "LEMMAS",
    "PIECE_DIMENSIONS",
    "B",
    "Derivation",
    "Lemma",
    "QuantityDefinition",
    "SMatrix",
    "SphereIntegral",
    "Step",
    "definitions",
    "derive",
    "derive_eps",
    "piece_direction",
]
