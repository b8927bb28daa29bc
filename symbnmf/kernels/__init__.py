"""Stage 6 — kernels: exact NNGP and NTK of wide batch-normalized networks on a given batch (issue 11), in JAX.
Laplace method (Thm 3.2) with BN's ε, stax-like layer combinators whose apply_fn runs the finite network.
May import: the base modules, symbolic, numeric, fast, the front door symbnmf._evaluate, montecarlo, JAX."""

from symbnmf.kernels import stax as stax
from symbnmf.kernels.cross import batchnorm_cross_nngp as batchnorm_cross_nngp
from symbnmf.kernels.cross import batchnorm_cross_ntk as batchnorm_cross_ntk
from symbnmf.kernels.nngp import KernelError as KernelError
from symbnmf.kernels.nngp import MonteCarloKernel as MonteCarloKernel
from symbnmf.kernels.nngp import SRule as SRule
from symbnmf.kernels.nngp import batchnorm_nngp as batchnorm_nngp
from symbnmf.kernels.nngp import batchnorm_ntk as batchnorm_ntk
from symbnmf.kernels.nngp import choose_rule as choose_rule

__all__ = [
    "KernelError",
    "MonteCarloKernel",
    "SRule",
    "batchnorm_cross_nngp",
    "batchnorm_cross_ntk",
    "batchnorm_nngp",
    "batchnorm_ntk",
    "choose_rule",
    "stax",
]
