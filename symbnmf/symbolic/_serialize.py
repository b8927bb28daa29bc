"""Reading SymPy expressions back from text without evaluating anything.

:func:`read_srepr` is the inverse of :func:`sympy.srepr` for the expressions symbnmf stores
(closed forms, limits, activations). The text is parsed by Python's :mod:`ast` and walked; only
calls of whitelisted SymPy constructors (:data:`_CONSTRUCTORS`) with literal, bounded arguments
are built (functions and relations with ``evaluate=False``; ``Add``/``Mul``/``Pow`` are
re-evaluated, so that a closed form comes back in one canonical form whether it was derived or
read: a warm cache prints what a cold derivation printed). With ``exact=True``, ``Add``/``Mul``/
``Pow`` too are built unevaluated with their arguments in the order written, the inverse of
:func:`write_exact` (``srepr`` in argument order): the expression comes back structurally equal
to the one written (``==``, same hash), as the cached quantity definitions need. Anything else,
a name, an attribute, a subscript, a lambda, a too long or too deep text, raises
:class:`UnsafeExpressionError`: nothing in the text is ever executed.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import sympy as sp

from symbnmf._errors import SymbnmfError

#: Upper bounds on a stored expression (the largest committed closed form is ~10 kB, depth ~20).
MAX_TEXT = 2_000_000
MAX_DEPTH = 200
MAX_INT_DIGITS = 2000


class UnsafeExpressionError(SymbnmfError):
    """Text that is not the ``srepr`` of a whitelisted SymPy expression."""


def _evaluated_false(cls: Any) -> Callable[..., sp.Basic]:
    def build(*args: Any) -> sp.Basic:
        return cls(*args, evaluate=False)

    return build


def _symbol(name: Any, **assumptions: Any) -> sp.Symbol:
    return _named_symbol(name, frozenset(), assumptions)


def _named_symbol(name: Any, allowed: frozenset[str], assumptions: dict[str, Any]) -> sp.Symbol:
    """A Symbol named by an identifier (or a name in ``allowed``) with True/False assumptions."""
    if not isinstance(name, str) or len(name) > 100 or not (name.isidentifier() or name in allowed):
        raise UnsafeExpressionError(f"bad symbol name {name!r}")
    if not all(isinstance(v, bool) for v in assumptions.values()):
        raise UnsafeExpressionError("symbol assumptions must be True/False")
    if set(assumptions) - _ASSUMPTIONS:
        raise UnsafeExpressionError(f"unknown symbol assumptions {sorted(set(assumptions) - _ASSUMPTIONS)}")
    return sp.Symbol(name, **assumptions)


def _integer(v: Any) -> sp.Integer:
    if isinstance(v, bool) or not isinstance(v, int):
        raise UnsafeExpressionError(f"Integer takes an integer literal, got {v!r}")
    return sp.Integer(v)


def _rational(p: Any, q: Any) -> sp.Rational:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (p, q)) or q == 0:
        raise UnsafeExpressionError(f"bad Rational({p!r}, {q!r})")
    return sp.Rational(p, q)


def _float(v: Any, precision: Any = 53) -> sp.Float:
    if not isinstance(v, str) or len(v) > 5000 or not isinstance(precision, int) or not 1 <= precision <= 20000:
        raise UnsafeExpressionError(f"bad Float({v!r}, precision={precision!r})")
    try:
        return sp.Float(v, precision=precision)
    except (ValueError, TypeError):
        raise UnsafeExpressionError(f"bad Float literal {v!r}") from None


_ASSUMPTIONS = {
    "real",
    "positive",
    "negative",
    "nonnegative",
    "nonpositive",
    "integer",
    "finite",
    "nonzero",
    "extended_real",
    "commutative",
}

#: srepr constructor name -> builder. Nothing else can be called.
_CONSTRUCTORS: dict[str, Callable[..., Any]] = {
    "Symbol": _symbol,
    "Integer": _integer,
    "Rational": _rational,
    "Float": _float,
    "Add": sp.Add,
    "Mul": sp.Mul,
    "Pow": sp.Pow,
    "Piecewise": lambda *a: sp.Piecewise(*a, evaluate=False),
    "ExprCondPair": lambda e, c: sp.functions.elementary.piecewise.ExprCondPair(e, c),
    "StrictGreaterThan": lambda a, b: sp.StrictGreaterThan(a, b, evaluate=False),
    "StrictLessThan": lambda a, b: sp.StrictLessThan(a, b, evaluate=False),
    "GreaterThan": lambda a, b: sp.GreaterThan(a, b, evaluate=False),
    "LessThan": lambda a, b: sp.LessThan(a, b, evaluate=False),
    "Equality": lambda a, b: sp.Eq(a, b, evaluate=False),
    "Unequality": lambda a, b: sp.Ne(a, b, evaluate=False),
    "And": lambda *a: sp.And(*a, evaluate=False),
    "Or": lambda *a: sp.Or(*a, evaluate=False),
    "Not": lambda a: sp.Not(a),
    "Max": lambda *a: sp.Max(*a, evaluate=False),
    "Min": lambda *a: sp.Min(*a, evaluate=False),
}
_FUNCTION_NAMES = (
    "acos asin atan cos sin tan cosh sinh tanh exp log sqrt erf erfc Abs sign Heaviside gamma loggamma "
    "polygamma digamma atan2 besselk besseli"
)
for _name in _FUNCTION_NAMES.split():
    _CONSTRUCTORS[_name] = _evaluated_false(getattr(sp, _name))


def _expint_scaled(*args: Any) -> sp.Basic:
    """symbnmf's own P_nu(z) = e^z E_nu(z) (the eps > 0 closed forms), imported when first read."""
    from symbnmf.symbolic._epsforms import expint_scaled

    return expint_scaled(*args, evaluate=False)


_CONSTRUCTORS["expint_scaled"] = _expint_scaled

#: Bare names srepr writes for singletons.
_NAMES: dict[str, Any] = {
    "pi": sp.pi,
    "E": sp.E,
    "oo": sp.oo,
    "zoo": sp.zoo,
    "nan": sp.nan,
    "EulerGamma": sp.EulerGamma,
    "Catalan": sp.Catalan,
    "true": sp.true,
    "false": sp.false,
    "I": sp.I,
}


_EXACT: dict[str, Callable[..., Any]] = {
    "Add": _evaluated_false(sp.Add),
    "Mul": _evaluated_false(sp.Mul),
    "Pow": _evaluated_false(sp.Pow),
}


def write_exact(expr: sp.Basic) -> str:
    """``srepr`` of ``expr`` with every argument list in its stored order (``order="none"``):
    :func:`read_srepr` with ``exact=True`` rebuilds an expression structurally equal to ``expr``."""
    return sp.srepr(expr, order="none")


def read_srepr(text: str, *, exact: bool = False, symbol_names: frozenset[str] = frozenset()) -> sp.Basic:
    """Rebuild the SymPy expression whose ``sympy.srepr`` is ``text``, without evaluating the text.

    ``exact``: build ``Add``/``Mul``/``Pow`` unevaluated, in the order written (the inverse of
    :func:`write_exact`). ``symbol_names``: symbol names accepted besides identifiers (e.g.
    ``"Phi'"``). Raises :class:`UnsafeExpressionError` for anything that is not a whitelisted
    constructor applied to literals (see the module docstring).
    """
    if not isinstance(text, str):
        raise UnsafeExpressionError(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise UnsafeExpressionError(f"stored expression too long ({len(text)} characters)")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise UnsafeExpressionError("stored expression is not valid srepr text") from None

    def literal(node: ast.AST, depth: int) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, str, bool)):
            v = node.value
            if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_DIGITS * 4:
                raise UnsafeExpressionError("integer literal too large")
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            v = literal(node.operand, depth)
            if isinstance(v, bool) or not isinstance(v, int):
                raise UnsafeExpressionError("only integers can be negated")
            return -v
        return build(node, depth)

    def build(node: ast.AST, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise UnsafeExpressionError("stored expression nested too deeply")
        if isinstance(node, ast.Name) and node.id in _NAMES:
            return _NAMES[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CONSTRUCTORS:
            args = [literal(a, depth + 1) for a in node.args]
            kwargs = {}
            for k in node.keywords:
                if k.arg is None:
                    raise UnsafeExpressionError("**kwargs are not allowed")
                kwargs[k.arg] = literal(k.value, depth + 1)
            if kwargs and node.func.id not in ("Symbol", "Float"):
                raise UnsafeExpressionError(f"{node.func.id} takes no keyword arguments")
            name = node.func.id
            try:
                if name == "Symbol" and symbol_names:
                    if len(args) != 1:
                        raise UnsafeExpressionError("Symbol takes one name")
                    return _named_symbol(args[0], symbol_names, kwargs)
                return (_EXACT[name] if exact and name in _EXACT else _CONSTRUCTORS[name])(*args, **kwargs)
            except UnsafeExpressionError:
                raise
            except Exception as exc:  # a constructor refused its arguments: not our srepr
                raise UnsafeExpressionError(f"cannot rebuild {node.func.id}: {type(exc).__name__}") from None
        raise UnsafeExpressionError(f"disallowed syntax in stored expression: {ast.dump(node)[:80]}")

    try:
        out = build(tree.body, 0)
    except RecursionError:
        raise UnsafeExpressionError("stored expression nested too deeply") from None
    if not isinstance(out, sp.Basic):
        raise UnsafeExpressionError("stored expression is not a SymPy expression")
    return out


__all__ = ["UnsafeExpressionError", "read_srepr", "write_exact"]
