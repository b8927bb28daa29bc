"""Stage 6 — experiments: training real BN networks (scikit-learn digits) and the trainability grid
of the paper's Fig 2, with the theory's 16ξ line.
May import: the base modules, the front door symbnmf._evaluate, symbnmf.fast, symbnmf.montecarlo, JAX."""

from symbnmf.experiments.dynamics import DynamicsConfig as DynamicsConfig
from symbnmf.experiments.dynamics import measure_dynamics as measure_dynamics
from symbnmf.experiments.train import TrainConfig as TrainConfig
from symbnmf.experiments.train import TrainResult as TrainResult
from symbnmf.experiments.train import gradient_growth as gradient_growth
from symbnmf.experiments.train import load_digits as load_digits
from symbnmf.experiments.train import train_network as train_network
from symbnmf.experiments.train import train_networks as train_networks
from symbnmf.experiments.trainability import predicted_max_depth as predicted_max_depth
from symbnmf.experiments.trainability import run_grid as run_grid

__all__ = [
    "DynamicsConfig",
    "TrainConfig",
    "TrainResult",
    "gradient_growth",
    "load_digits",
    "measure_dynamics",
    "predicted_max_depth",
    "run_grid",
    "train_network",
    "train_networks",
]
