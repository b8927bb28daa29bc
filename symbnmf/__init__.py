"""symbnmf: the mean field theory of batch-normalized networks (Yang et al., ICLR 2019), executable.

The public names, grouped by pipeline stage (see ``docs/api.md``). They are resolved lazily
(PEP 562): ``import symbnmf`` is cheap and imports neither SymPy nor JAX until a name that needs
them is used, so the command line starts fast and the symbolic stages never pull in JAX.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import TYPE_CHECKING

from symbnmf._lazy import lazy_exports

try:
    __version__: str = _dist_version("symbnmf")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: public name -> (module, attribute), grouped by stage in pipeline order.
_PUBLIC: dict[str, tuple[str, str]] = {
    # 1. base: activations, conventions, errors
    "Activation": ("symbnmf._activations", "Activation"),
    "HalfPolynomial": ("symbnmf._activations", "HalfPolynomial"),
    "get_activation": ("symbnmf._activations", "get_activation"),
    "parse_expression": ("symbnmf._activations", "parse_expression"),
    "x": ("symbnmf._activations", "x"),
    "CONVENTIONS": ("symbnmf._conventions", "CONVENTIONS"),
    "QUANTITIES": ("symbnmf._conventions", "QUANTITIES"),
    "check_batch_size": ("symbnmf._conventions", "check_batch_size"),
    "SymbnmfError": ("symbnmf._errors", "SymbnmfError"),
    "ActivationError": ("symbnmf._errors", "ActivationError"),
    "BatchSizeError": ("symbnmf._errors", "BatchSizeError"),
    "ConvergenceError": ("symbnmf._errors", "ConvergenceError"),
    "NoClosedFormError": ("symbnmf._errors", "NoClosedFormError"),
    "OutputExistsError": ("symbnmf._errors", "OutputExistsError"),
    # 2. symbolic: algebra, lemmas, definitions, closed forms
    "B": ("symbnmf.symbolic._algebra", "B"),
    "SMatrix": ("symbnmf.symbolic._algebra", "SMatrix"),
    "LEMMAS": ("symbnmf.symbolic._gaussian", "LEMMAS"),
    "Lemma": ("symbnmf.symbolic._gaussian", "Lemma"),
    "definitions": ("symbnmf.symbolic._quantities", "definitions"),
    "Derivation": ("symbnmf.symbolic._derivation", "Derivation"),
    "Step": ("symbnmf.symbolic._derivation", "Step"),
    "derive": ("symbnmf.symbolic._derive", "derive"),
    "derive_eps": ("symbnmf.symbolic._epsforms", "derive_eps"),
    # 3. numeric: mpmath quadrature, Laplace method, certification, limits, transition
    "sphere_quadrature": ("symbnmf.numeric._quadrature", "sphere_quadrature"),
    "sphere_expectations": ("symbnmf.numeric._quadrature", "sphere_expectations"),
    "evaluate_quadrature": ("symbnmf.numeric._quadrature", "evaluate_quadrature"),
    "laplace_V": ("symbnmf.numeric._laplace", "laplace_V"),
    "laplace_iterate": ("symbnmf.numeric._laplace", "laplace_iterate"),
    "certify": ("symbnmf.numeric._certify", "certify"),
    "Certificate": ("symbnmf.numeric._certify", "Certificate"),
    "evaluate_eps": ("symbnmf.numeric._epsilon", "evaluate_eps"),
    "certify_eps": ("symbnmf.numeric._epsforms", "certify_eps"),
    "gaussian_limits": ("symbnmf.numeric._limits", "gaussian_limits"),
    "critical_alpha": ("symbnmf.numeric._transition", "critical_alpha"),
    # 4. fast: JAX code generation and jit quadrature
    "codegen": ("symbnmf.fast.codegen", ""),
    "FastEvaluator": ("symbnmf.fast._fastquad", "FastEvaluator"),
    "fast_evaluate": ("symbnmf.fast._fastquad", "fast_evaluate"),
    "fast_evaluate_eps": ("symbnmf.fast._epsquad", "fast_evaluate_eps"),
    # front door: one call, any method
    "evaluate": ("symbnmf._evaluate", "evaluate"),
    # 5. montecarlo: finite-width networks
    "simulate": ("symbnmf.montecarlo.networks", "simulate"),
    "SimulationResult": ("symbnmf.montecarlo.networks", "SimulationResult"),
    "MonteCarloError": ("symbnmf.montecarlo.networks", "MonteCarloError"),
    "precompile_simulation": ("symbnmf.montecarlo.networks", "precompile_simulation"),
    # 6. kernels: exact NNGP / NTK of wide BN networks on a batch (issue 11)
    "batchnorm_nngp": ("symbnmf.kernels.nngp", "batchnorm_nngp"),
    "batchnorm_ntk": ("symbnmf.kernels.nngp", "batchnorm_ntk"),
    "batchnorm_cross_nngp": ("symbnmf.kernels.cross", "batchnorm_cross_nngp"),
    "batchnorm_cross_ntk": ("symbnmf.kernels.cross", "batchnorm_cross_ntk"),
    "KernelError": ("symbnmf.kernels.nngp", "KernelError"),
    "choose_rule": ("symbnmf.kernels.nngp", "choose_rule"),
    "SRule": ("symbnmf.kernels.nngp", "SRule"),
    "stax": ("symbnmf.kernels.stax", ""),
    # 7. experiments: training and trainability
    "TrainConfig": ("symbnmf.experiments.train", "TrainConfig"),
    "TrainResult": ("symbnmf.experiments.train", "TrainResult"),
    "load_digits": ("symbnmf.experiments.train", "load_digits"),
    "train_network": ("symbnmf.experiments.train", "train_network"),
    "gradient_growth": ("symbnmf.experiments.train", "gradient_growth"),
    "train_networks": ("symbnmf.experiments.train", "train_networks"),
    "DynamicsConfig": ("symbnmf.experiments.dynamics", "DynamicsConfig"),
    "measure_dynamics": ("symbnmf.experiments.dynamics", "measure_dynamics"),
    "predicted_max_depth": ("symbnmf.experiments.trainability", "predicted_max_depth"),
    "trainability_grid": ("symbnmf.experiments.trainability", "run_grid"),
}

__all__ = ["__version__", *_PUBLIC]


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())


if TYPE_CHECKING:  # static view of the lazy names, for type checkers and IDEs
    from symbnmf._activations import Activation, HalfPolynomial, get_activation, parse_expression, x
    from symbnmf._conventions import CONVENTIONS, QUANTITIES, check_batch_size
    from symbnmf._errors import (
        ActivationError,
        BatchSizeError,
        ConvergenceError,
        NoClosedFormError,
        OutputExistsError,
        SymbnmfError,
    )
    from symbnmf._evaluate import evaluate
    from symbnmf.experiments.dynamics import DynamicsConfig, measure_dynamics
    from symbnmf.experiments.train import (
        TrainConfig,
        TrainResult,
        gradient_growth,
        load_digits,
        train_network,
        train_networks,
    )
    from symbnmf.experiments.trainability import predicted_max_depth
    from symbnmf.experiments.trainability import run_grid as trainability_grid
    from symbnmf.fast import codegen
    from symbnmf.fast._epsquad import fast_evaluate_eps
    from symbnmf.fast._fastquad import FastEvaluator, fast_evaluate
    from symbnmf.kernels import stax
    from symbnmf.kernels.cross import batchnorm_cross_nngp, batchnorm_cross_ntk
    from symbnmf.kernels.nngp import KernelError, SRule, batchnorm_nngp, batchnorm_ntk, choose_rule
    from symbnmf.montecarlo.networks import MonteCarloError, SimulationResult, precompile_simulation, simulate
    from symbnmf.numeric._certify import Certificate, certify
    from symbnmf.numeric._epsforms import certify_eps
    from symbnmf.numeric._epsilon import evaluate_eps
    from symbnmf.numeric._laplace import laplace_iterate, laplace_V
    from symbnmf.numeric._limits import gaussian_limits
    from symbnmf.numeric._quadrature import evaluate_quadrature, sphere_expectations, sphere_quadrature
    from symbnmf.numeric._transition import critical_alpha
    from symbnmf.symbolic._algebra import B, SMatrix
    from symbnmf.symbolic._derivation import Derivation, Step
    from symbnmf.symbolic._derive import derive
    from symbnmf.symbolic._epsforms import derive_eps
    from symbnmf.symbolic._gaussian import LEMMAS, Lemma
    from symbnmf.symbolic._quantities import definitions
