"""symbnmf: the mean field theory of batch-normalized networks (Yang et al., ICLR 2019), executable."""

from ._activations import Activation as Activation
from ._activations import get_activation as get_activation
from ._activations import parse_expression as parse_expression
from ._activations import x as x
from ._conventions import CONVENTIONS as CONVENTIONS
from ._conventions import QUANTITIES as QUANTITIES
from ._conventions import check_batch_size as check_batch_size
from ._errors import SymbnmfError as SymbnmfError

__version__ = "0.1.0"
