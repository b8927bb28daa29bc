"""Stage 5 — montecarlo: finite-width batch-normalized networks in JAX (exact O(N·B²) Gaussian layers,
dense reference layers), sharded over devices; measured rates with standard errors beside the theory.
May import: the base modules, the front door symbnmf._evaluate (theory column), fast, JAX."""

from symbnmf.montecarlo.networks import MonteCarloError as MonteCarloError
from symbnmf.montecarlo.networks import SimulationResult as SimulationResult
from symbnmf.montecarlo.networks import precompile_simulation as precompile_simulation
from symbnmf.montecarlo.networks import simulate as simulate
from symbnmf.montecarlo.stats import extrapolate_width as extrapolate_width

__all__ = ["MonteCarloError", "SimulationResult", "extrapolate_width", "precompile_simulation", "simulate"]
