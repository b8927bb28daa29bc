"""Stage 3 — numeric: independent mpmath evaluations of the symbolic stage's definitions (2-D sphere
quadrature, the Laplace method at any Σ), certification of closed forms, large-B limits, α-ReLU transition.
May import: the base modules, symbnmf.symbolic (definitions, closed forms), SymPy, mpmath. Never JAX."""

from symbnmf.numeric._certify import Certificate as Certificate
from symbnmf.numeric._certify import certify as certify
from symbnmf.numeric._epsforms import certify_eps as certify_eps
from symbnmf.numeric._epsilon import evaluate_eps as evaluate_eps
from symbnmf.numeric._laplace import laplace_iterate as laplace_iterate
from symbnmf.numeric._laplace import laplace_V as laplace_V
from symbnmf.numeric._limits import gaussian_limits as gaussian_limits
from symbnmf.numeric._quadrature import evaluate_quadrature as evaluate_quadrature
from symbnmf.numeric._quadrature import sphere_expectations as sphere_expectations
from symbnmf.numeric._quadrature import sphere_quadrature as sphere_quadrature
from symbnmf.numeric._transition import critical_alpha as critical_alpha

__all__ = [
    "Certificate",
    "certify",
    "certify_eps",
    "critical_alpha",
    "evaluate_eps",
    "evaluate_quadrature",
    "gaussian_limits",
    "laplace_V",
    "laplace_iterate",
    "sphere_expectations",
    "sphere_quadrature",
]
