"""User-facing errors.

Every error a user can provoke by bad input is a :class:`SymbnmfError` (or a subclass) whose
message is one line that names the fix. The CLI prints it and exits with status 2.
"""

from __future__ import annotations


class SymbnmfError(ValueError):
    """Bad input or an impossible request; the message says how to fix it."""


class BatchSizeError(SymbnmfError):
    """A batch size outside the domain of the theory (formulas need an integer B >= 4)."""


class ActivationError(SymbnmfError):
    """Unknown activation, unparsable expression, or unbound parameters."""


class NoClosedFormError(SymbnmfError):
    """A closed form was demanded for an activation that has none in symbnmf."""


class ConvergenceError(SymbnmfError):
    """A quadrature or iteration did not reach the requested accuracy."""


class OutputExistsError(SymbnmfError):
    """An output file exists and ``--force`` was not given."""


class OutputPathError(SymbnmfError):
    """An output path that cannot be written: missing directory, not a regular file, no permission."""
