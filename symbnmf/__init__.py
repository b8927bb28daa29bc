"""symbnmf: the mean field theory of batch-normalized networks (Yang et al., ICLR 2019), executable."""

from ._activations import Activation as Activation
from ._activations import get_activation as get_activation
from ._activations import parse_expression as parse_expression
from ._activations import x as x
from ._conventions import CONVENTIONS as CONVENTIONS
from ._conventions import QUANTITIES as QUANTITIES
from ._conventions import check_batch_size as check_batch_size
from ._errors import SymbnmfError as SymbnmfError
from .montecarlo import MonteCarloError as MonteCarloError
from .montecarlo import SimulationResult as SimulationResult
from .montecarlo import simulate as simulate
from ._fastquad import FastEvaluator as FastEvaluator
from ._fastquad import fast_evaluate as fast_evaluate
from . import codegen as codegen
from ._train import TrainConfig as TrainConfig
from ._train import TrainResult as TrainResult
from ._train import load_digits as load_digits
from ._train import train_network as train_network
from ._train import gradient_growth as gradient_growth
from ._cmd_trainability import predicted_max_depth as predicted_max_depth
from ._cmd_trainability import run_grid as trainability_grid

__version__ = "0.1.0"
from ._activations import HalfPolynomial as HalfPolynomial
from ._algebra import B as B
from ._algebra import SMatrix as SMatrix
from ._derivation import Derivation as Derivation
from ._derivation import Step as Step
from ._derive import derive as derive
from ._errors import ActivationError as ActivationError
from ._errors import BatchSizeError as BatchSizeError
from ._errors import ConvergenceError as ConvergenceError
from ._errors import NoClosedFormError as NoClosedFormError
from ._errors import OutputExistsError as OutputExistsError
from ._gaussian import LEMMAS as LEMMAS
from ._gaussian import Lemma as Lemma
from ._quantities import definitions as definitions
from ._evaluate import evaluate as evaluate
from ._quadrature import sphere_quadrature as sphere_quadrature
from ._quadrature import sphere_expectations as sphere_expectations
from ._quadrature import evaluate_quadrature as evaluate_quadrature
from ._laplace import laplace_V as laplace_V
from ._laplace import laplace_iterate as laplace_iterate
from ._certify import certify as certify
from ._limits import gaussian_limits as gaussian_limits
from ._transition import critical_alpha as critical_alpha
