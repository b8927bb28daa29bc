"""Stage 1 of the pipeline: activations.

An :class:`Activation` is a SymPy expression in the real symbol ``x`` (optionally with named
parameters such as a leaky slope ``a`` or BN's ``g``/``b`` in ``tanh(g*x + b)``), together
with what decides which closed-form route applies:

* its derivative (``phi'``, used by the backward gradient map);
* whether it is *piecewise polynomial with its only kink at 0*, i.e.
  ``phi(x) = p(x) + H(x) q(x)`` with polynomials ``p, q`` and the Heaviside step ``H``
  (identity, ReLU, leaky ReLU, integer-alpha ReLU, |x|): then every mean-field quantity has a
  closed form in B (see :mod:`symbnmf.symbolic._sphere`);
* whether it is positive-homogeneous, ``phi(lambda x) = lambda^alpha phi(x)`` for lambda > 0, and
  of which degree (the Laplace method, Thm 3.2, applies).

Expressions are parsed from strings with Python's :mod:`ast` and a whitelist of names; nothing
is ever ``eval``-ed.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from symbnmf._errors import ActivationError

#: The variable every activation is a function of.
x = sp.Symbol("x", real=True)
_t = sp.Symbol("t", positive=True)


def _relu(arg: sp.Expr) -> sp.Expr:
    return sp.Piecewise((arg, arg > 0), (0, True))


def _heaviside(arg: sp.Expr) -> sp.Expr:
    return sp.Piecewise((1, arg > 0), (0, True))


def _sigmoid(arg: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-arg))


def _softplus(arg: sp.Expr) -> sp.Expr:
    return sp.log(1 + sp.exp(arg))


def _gelu(arg: sp.Expr) -> sp.Expr:
    return arg / 2 * (1 + sp.erf(arg / sp.sqrt(2)))


def _swish(arg: sp.Expr) -> sp.Expr:
    return arg / (1 + sp.exp(-arg))


_SLOPE = sp.Symbol("a", real=True)


def _leaky(arg: sp.Expr, a: Any = _SLOPE) -> sp.Expr:
    return sp.Piecewise((arg, arg > 0), (sp.sympify(a) * arg, True))


#: Functions allowed in expression strings: name -> (number of arguments, builder).
_FUNCTIONS: dict[str, tuple[tuple[int, ...], Callable[..., sp.Expr]]] = {
    "tanh": ((1,), sp.tanh),
    "sinh": ((1,), sp.sinh),
    "cosh": ((1,), sp.cosh),
    "sin": ((1,), sp.sin),
    "cos": ((1,), sp.cos),
    "atan": ((1,), sp.atan),
    "arctan": ((1,), sp.atan),
    "exp": ((1,), sp.exp),
    "log": ((1,), sp.log),
    "sqrt": ((1,), sp.sqrt),
    "erf": ((1,), sp.erf),
    "erfc": ((1,), sp.erfc),
    "abs": ((1,), sp.Abs),
    "Abs": ((1,), sp.Abs),
    "sign": ((1,), sp.sign),
    "relu": ((1,), _relu),
    "heaviside": ((1,), _heaviside),
    "step": ((1,), _heaviside),
    "sigmoid": ((1,), _sigmoid),
    "softplus": ((1,), _softplus),
    "gelu": ((1,), _gelu),
    "swish": ((1,), _swish),
    "silu": ((1,), _swish),
    "leaky_relu": ((1, 2), _leaky),
    "max": ((2,), sp.Max),
    "min": ((2,), sp.Min),
    "Max": ((2,), sp.Max),
    "Min": ((2,), sp.Min),
}
_CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi, "E": sp.E, "e": sp.E}
_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


#: Bounds on what an activation expression may ask for (each refused with a one-line error):
#: characters, AST nodes and nesting depth of the text, size of its numbers, and exponents.
MAX_TEXT = 2000
MAX_NODES = 400
MAX_DEPTH = 60
MAX_EXPONENT = 32
MAX_MAGNITUDE = 10**12
MAX_CONSTANT_BITS = 256
#: Names that look like numbers but are not finite ones: never read as parameter names.
_RESERVED = {"inf", "infinity", "Infinity", "nan", "NaN", "oo", "zoo", "I", "j", "None", "True", "False"}


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


def _number(value: Any) -> sp.Expr:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ActivationError(f"unsupported constant {_shorten(repr(value))} in activation expression")
    if isinstance(value, float) and not math.isfinite(value):
        raise ActivationError("a number in the activation is not finite (e.g. 1e400 overflows); use finite numbers")
    if abs(value) > MAX_MAGNITUDE:
        raise ActivationError(f"number {_shorten(repr(value))} too large in activation (limit {MAX_MAGNITUDE:.0e})")
    if isinstance(value, int):
        return sp.Integer(value)
    # Decimal literals are read exactly ("0.1" -> 1/10) so that closed forms stay exact.
    return sp.nsimplify(sp.Float(repr(value), 30), rational=True)


def parse_expression(text: str) -> sp.Expr:
    """Parse ``text`` (e.g. ``"tanh(0.5*x + 0.2)"``) into a SymPy expression in :data:`x`.

    Only numbers, ``x``, parameter names, ``+ - * / **`` (``^`` is read as ``**``) and the
    whitelisted functions (``tanh, erf, relu, gelu, swish, exp, ...``) are accepted; the string
    is walked as a Python AST and never evaluated. Other identifiers become real parameter
    symbols (e.g. ``g`` and ``b`` in ``tanh(g*x + b)``) that must be bound before evaluation.
    """
    if not isinstance(text, str) or not text.strip():
        raise ActivationError("activation expression is empty; give e.g. 'tanh(x)'")
    if len(text) > MAX_TEXT:
        raise ActivationError(f"activation expression too long ({len(text)} characters, limit {MAX_TEXT})")
    shown = _shorten(text.strip())
    src = text.strip().replace("^", "**")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as exc:
        raise ActivationError(f"cannot parse activation {shown!r}: {exc.msg}; write e.g. 'tanh(0.5*x + 0.2)'") from None
    except (ValueError, RecursionError, MemoryError):
        raise ActivationError(f"cannot parse activation {shown!r}: too large or too deeply nested") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_NODES:
        raise ActivationError(
            f"activation expression too large ({nodes} syntax nodes, limit {MAX_NODES}); simplify it, "
            "e.g. write 1200*x rather than x + x + ... + x"
        )

    def build(node: ast.AST, depth: int = 0) -> sp.Expr:
        if depth > MAX_DEPTH:
            raise ActivationError(f"activation expression nested too deeply (limit {MAX_DEPTH} levels)")
        out = _build(node, depth)
        _check_value(out, shown)
        return out

    def _build(node: ast.AST, depth: int) -> sp.Expr:
        if isinstance(node, ast.Expression):
            return build(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            return _number(node.value)
        if isinstance(node, ast.Name):
            name = node.id
            if name == "x":
                return x
            if name in _CONSTANTS:
                return _CONSTANTS[name]
            if name in _FUNCTIONS:
                raise ActivationError(f"{name!r} is a function; call it, e.g. {name}(x)")
            if name in _RESERVED:
                raise ActivationError(
                    f"{name!r} is not allowed in an activation: use finite numbers and names like g, b"
                )
            if not name.isidentifier() or name.startswith("_") or len(name) > 30:
                raise ActivationError(f"bad parameter name {_shorten(name)!r}")
            return sp.Symbol(name, real=True)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            base, exponent = build(node.left, depth + 1), build(node.right, depth + 1)
            _check_power(base, exponent)
            return base**exponent
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](build(node.left, depth + 1), build(node.right, depth + 1))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = build(node.operand, depth + 1)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            name = node.func.id
            if name not in _FUNCTIONS:
                raise ActivationError(
                    f"unknown function {_shorten(name)!r} in {shown!r}; allowed: {', '.join(sorted(_FUNCTIONS))}"
                )
            arities, fn = _FUNCTIONS[name]
            if len(node.args) not in arities:
                raise ActivationError(f"{name} takes {' or '.join(map(str, arities))} argument(s)")
            return fn(*[build(a, depth + 1) for a in node.args])
        raise ActivationError(
            f"unsupported syntax in activation {shown!r}: only numbers, x, parameters, + - * / ** "
            "and whitelisted functions are allowed"
        )

    try:
        expr = build(tree)
    except RecursionError:
        raise ActivationError(f"activation {shown!r} is too deeply nested to process") from None
    if not isinstance(expr, sp.Expr):
        raise ActivationError(f"{shown!r} is not an expression")
    return expr


def _check_power(base: sp.Expr, exponent: sp.Expr) -> None:
    """Refuse powers whose size would explode: x**(10**100), 10**4000, x**a with a unbound is fine."""
    if not exponent.is_Number:
        return
    if base.is_Number:
        if base == 0 or abs(base) == 1:
            return
        bits = abs(float(exponent)) * abs(math.log2(abs(float(base)))) if base.is_finite else math.inf
        if bits > MAX_CONSTANT_BITS:
            raise ActivationError(
                f"constant {_shorten(str(base))}**{_shorten(str(exponent))} too large for an activation; "
                "use numbers below 1e12"
            )
        return
    if abs(exponent) > MAX_EXPONENT:
        raise ActivationError(f"exponent {_shorten(str(exponent))} too large in activation (limit {MAX_EXPONENT})")


def _check_value(expr: sp.Expr, shown: str = "") -> None:
    """Refuse infinite or undefined values (``sin(x)/0``) and numbers too large to use."""
    if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise ActivationError(
            f"activation {shown!r} is undefined or infinite (division by zero?); write a finite expression"
        )
    for a in sp.preorder_traversal(expr):
        if isinstance(a, sp.Rational) and max(abs(a.p).bit_length(), a.q.bit_length()) > MAX_CONSTANT_BITS:
            raise ActivationError(f"a constant in activation {shown!r} is too large; use numbers below 1e12")
        if isinstance(a, sp.Pow) and a.exp.is_Number and not a.base.is_Number and abs(a.exp) > MAX_EXPONENT:
            raise ActivationError(f"exponent {_shorten(str(a.exp))} too large in activation (limit {MAX_EXPONENT})")


@dataclass(frozen=True)
class HalfPolynomial:
    """``phi(x) = p(x) + H(x) q(x)``: piecewise polynomial with its only kink at 0.

    ``p`` is the polynomial valid for x < 0 and ``p + q`` the one valid for x > 0.
    """

    p: sp.Poly
    q: sp.Poly

    def derivative(self) -> HalfPolynomial:
        return HalfPolynomial(self.p.diff(x), self.q.diff(x))

    def __mul__(self, other: HalfPolynomial) -> HalfPolynomial:
        # H^2 = H
        return HalfPolynomial(self.p * other.p, self.p * other.q + self.q * other.p + self.q * other.q)


def _restrict(expr: sp.Expr, sign: int) -> sp.Expr:
    """``expr`` on the half line ``sign * x > 0``, as an expression in x (or NaN if undecidable)."""
    e = expr.subs(x, sign * _t)
    e = e.rewrite(sp.Piecewise) if e.has(sp.Max, sp.Min, sp.Heaviside) else e
    e = sp.piecewise_fold(e)
    e = sp.simplify(e) if e.has(sp.Piecewise, sp.Abs, sp.sign) else e
    return sp.expand(e.subs(_t, sign * x))


def _half_polynomial(expr: sp.Expr, params: tuple[sp.Symbol, ...]) -> HalfPolynomial | None:
    try:
        pos = _restrict(expr, 1)
        neg = _restrict(expr, -1)
    except Exception:  # pragma: no cover - SymPy could not decide the branches
        return None
    if pos.has(sp.Piecewise, sp.Abs, sp.sign, sp.Max, sp.Min) or neg.has(sp.Piecewise, sp.Abs, sp.sign, sp.Max, sp.Min):
        return None
    if not (pos.is_polynomial(x) and neg.is_polynomial(x)):
        return None
    # Both branches are polynomials on their half lines (a kink elsewhere would have left a
    # Piecewise behind), so phi = neg + H(x) (pos - neg). Parameters force the EX domain.
    opts = {"domain": sp.EX} if params else {}
    try:
        pn = sp.Poly(neg, x, **opts)
        pq = sp.Poly(sp.expand(pos - neg), x, **opts)
    except sp.PolynomialError:
        return None
    return HalfPolynomial(pn, pq)


def _homogeneity(expr: sp.Expr) -> sp.Expr | None:
    """Degree alpha with phi(lam x) = lam^alpha phi(x) for all lam > 0, else None."""
    if expr.is_zero:
        return None
    lam = sp.Symbol("lam", positive=True)
    pos, neg = _restrict(expr, 1), _restrict(expr, -1)
    degrees = set()
    for branch, sgn in ((pos, 1), (neg, -1)):
        b = sp.expand(branch.subs(x, sgn * _t))
        if b == 0:
            continue
        ratio = sp.simplify(sp.powsimp(b.subs(_t, lam * _t) / b, force=True))
        if ratio.has(_t):
            return None
        if ratio == 1:
            degrees.add(sp.Integer(0))
            continue
        deg = sp.simplify(sp.log(ratio) / sp.log(lam))
        if deg.has(lam) or deg.has(_t):
            return None
        degrees.add(sp.nsimplify(deg))
    if len(degrees) != 1:
        return None
    (deg,) = degrees
    return deg


def _parameter_value(name: str, v: Any) -> sp.Expr:
    """A bound parameter value: a finite real number of magnitude at most :data:`MAX_MAGNITUDE`."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            raise ActivationError(f"parameter {name}: {_shorten(v)!r} is not a number") from None
        if not math.isfinite(f):
            raise ActivationError(f"parameter {name} must be a finite number, got {_shorten(v)!r}")
        try:
            val = sp.Rational(v.strip())  # exact decimal ("0.1" -> 1/10)
        except (TypeError, ValueError):
            val = sp.nsimplify(f, rational=True)
    elif isinstance(v, bool):
        raise ActivationError(f"parameter {name} must be a number, got {v!r}")
    elif isinstance(v, (int, float)):
        if not math.isfinite(v):
            raise ActivationError(f"parameter {name} must be a finite number, got {v!r}")
        val = sp.nsimplify(v, rational=True)
    else:
        val = sp.sympify(v)
    if val.free_symbols or not val.is_real or not val.is_finite:
        raise ActivationError(f"parameter {name} must be a finite real number, got {_shorten(str(val))}")
    if abs(val) > MAX_MAGNITUDE:
        raise ActivationError(f"parameter {name} = {_shorten(str(val))} too large (limit {MAX_MAGNITUDE:.0e})")
    return val


@dataclass(frozen=True)
class Activation:
    """An activation function phi, symbolic in ``x`` (:data:`symbnmf.x`).

    * ``name``: canonical name (``"relu"``, ``"leaky_relu(a)"`` or the expression string).
    * ``expr``: SymPy expression in ``x`` and the ``parameters``.
    * ``values``: numbers bound to (some of) the parameters; unbound parameters stay symbolic in
      derivations and must be bound (:meth:`bind`) before numeric evaluation.

    BN's gamma and beta enter as ``phi(gamma x + beta)`` (docs/theory.md conventions).
    """

    name: str
    expr: sp.Expr
    parameters: tuple[sp.Symbol, ...] = ()
    values: Mapping[str, Any] = field(default_factory=dict)

    # ---- symbolic properties -------------------------------------------------
    @property
    def x(self) -> sp.Symbol:
        return x

    @functools.cached_property
    def derivative(self) -> sp.Expr:
        """phi'(x) (a.e.; the kink of a piecewise activation has measure zero)."""
        d = sp.diff(self.expr, x)
        d = d.rewrite(sp.Piecewise) if d.has(sp.Heaviside, sp.DiracDelta) else d
        return sp.piecewise_fold(d)

    @functools.cached_property
    def half_polynomial(self) -> HalfPolynomial | None:
        """``phi = p + H q`` with polynomials p, q if phi is piecewise polynomial with kink at 0."""
        return _half_polynomial(self.bound_expr, self.free_parameters)

    @property
    def is_piecewise_polynomial(self) -> bool:
        return self.half_polynomial is not None

    @functools.cached_property
    def homogeneity(self) -> sp.Expr | None:
        """alpha if phi is positive-homogeneous of degree alpha, else None."""
        return _homogeneity(self.bound_expr)

    @property
    def is_positive_homogeneous(self) -> bool:
        return self.homogeneity is not None

    @property
    def has_closed_form(self) -> bool:
        """True when symbnmf derives every quantity in closed form in B (piecewise polynomial phi)."""
        return self.is_piecewise_polynomial

    @functools.cached_property
    def kinks(self) -> tuple[float, ...]:
        """Real points where phi or phi' may be non-smooth (from Piecewise/Abs/Max/sign)."""
        pts: set[float] = set()
        for node in sp.preorder_traversal(self.bound_expr):
            if isinstance(node, sp.Piecewise):
                args = [c.lhs - c.rhs for _, c in node.args if isinstance(c, sp.core.relational.Relational)]
            elif isinstance(node, (sp.Abs, sp.sign, sp.Heaviside)):
                args = [node.args[0]]
            elif isinstance(node, (sp.Max, sp.Min)):
                args = [node.args[0] - node.args[1]] if len(node.args) == 2 else []
            else:
                continue
            for a in args:
                try:
                    for s in sp.solve(sp.Eq(a, 0), x):
                        if s.is_real and not s.free_symbols:
                            pts.add(float(s))
                except Exception:  # pragma: no cover - SymPy could not solve: no kink recorded
                    pass
        return tuple(sorted(pts))

    # ---- parameters ------------------------------------------------------------
    @property
    def free_parameters(self) -> tuple[sp.Symbol, ...]:
        return tuple(p for p in self.parameters if p.name not in self.values)

    def bind(self, **values: Any) -> Activation:
        """Return a copy with parameter values bound, e.g. ``leaky_relu().bind(a=0.1)``."""
        names = {p.name for p in self.parameters}
        unknown = set(values) - names
        if unknown:
            raise ActivationError(
                f"{self.name} has no parameter(s) {sorted(unknown)}; its parameters are {sorted(names) or 'none'}"
            )
        merged = dict(self.values)
        for k, v in values.items():
            merged[k] = _parameter_value(k, v)
        act = Activation(self.name, self.expr, self.parameters, merged)
        _check_value(act.bound_expr, act.label)
        return act

    @property
    def bindings(self) -> dict:
        """``{parameter symbol: bound value}`` for the bound parameters (a SymPy substitution)."""
        return {p: self.values[p.name] for p in self.parameters if p.name in self.values}

    @property
    def bound_expr(self) -> sp.Expr:
        """``expr`` with the bound parameter values substituted."""
        subs = self.bindings
        return self.expr.subs(subs) if subs else self.expr

    @property
    def bound_derivative(self) -> sp.Expr:
        """phi' with the bound parameter values substituted."""
        subs = self.bindings
        return self.derivative.subs(subs) if subs else self.derivative

    @property
    def label(self) -> str:
        """Name with bound parameter values, e.g. ``leaky_relu(a=1/10)``."""
        if not self.values:
            return self.name
        vals = ", ".join(f"{k}={self.values[k]}" for k in sorted(self.values))
        return f"{self.name} [{vals}]"

    def require_bound(self) -> None:
        if self.free_parameters:
            names = ", ".join(p.name for p in self.free_parameters)
            raise ActivationError(
                f"activation {self.name!r} has unbound parameter(s) {names}; bind them, e.g. "
                f"--param {self.free_parameters[0].name}=0.1 (or Activation.bind)"
            )

    @property
    def degeneracy(self) -> str | None:
        """Why the mean field theory is degenerate for this (bound) phi, or None.

        A phi that is constant (e.g. ``tanh(g*x)`` at g = 0) has mu* = Sigma*_ii - Sigma*_ij = 0:
        every normalised quantity is 0/0. A phi with phi' = 0 almost everywhere (``step(x)``)
        passes no gradient: the backward map is 0 and the depth scale 1/ln 0 is undefined.
        """
        e = self.bound_expr
        if x not in e.free_symbols:
            return f"phi(x) = {_shorten(str(e))} is constant: the BSB1 fixed point is degenerate (mu* = 0)"
        d = self.bound_derivative
        if d == 0 or (isinstance(d, sp.Piecewise) and all(piece == 0 for piece, _ in d.args)):
            return "phi' = 0 almost everywhere (a step function): no gradient passes, the depth scale is undefined"
        return None

    def require_nondegenerate(self) -> None:
        """Raise :class:`ActivationError` naming the degeneracy (see :attr:`degeneracy`)."""
        why = self.degeneracy
        if why is not None:
            raise ActivationError(f"activation {_shorten(self.label)!r} is degenerate: {why}; choose another phi")

    # ---- numeric callables -------------------------------------------------------
    def numeric(self, module: str = "mpmath", *, derivative: bool = False) -> Callable[..., Any]:
        """phi (or phi') as a callable of x for ``module`` in {"mpmath", "numpy", "jax"}.

        Parameters must be bound. The JAX version is jit/vmap/grad-safe (no ``math.*`` calls).
        """
        self.require_bound()
        return _lambdify(self.bound_derivative if derivative else self.bound_expr, module)

    def __str__(self) -> str:
        return self.label

    def _repr_latex_(self) -> str:
        return f"$\\phi(x) = {sp.latex(self.bound_expr)}$"


def _lambdify(expr: sp.Expr, module: str) -> Callable[..., Any]:
    if module == "mpmath":
        return sp.lambdify(x, expr, modules="mpmath")
    if module == "numpy":
        return sp.lambdify(x, expr, modules=["scipy", "numpy"])
    if module == "jax":
        from symbnmf.fast._jaxprint import jax_callable  # JAX enters only here (dks-style layering)

        return jax_callable(expr, x)
    raise ActivationError(f"unknown numeric module {module!r}; use mpmath, numpy or jax")


# ---------------------------------------------------------------------------------------------
# The catalog
# ---------------------------------------------------------------------------------------------
_a = sp.Symbol("a", real=True)
_alpha = sp.Symbol("alpha", positive=True)


def _catalog_entry(name: str) -> Activation:
    if name in ("identity", "linear"):
        return Activation("identity", x)
    if name == "relu":
        return Activation("relu", _relu(x))
    if name == "leaky_relu":
        return Activation("leaky_relu", _leaky(x, _a), (_a,))
    if name == "alpha_relu":
        return Activation("alpha_relu", sp.Piecewise((x**_alpha, x > 0), (0, True)), (_alpha,))
    if name == "tanh":
        return Activation("tanh", sp.tanh(x))
    if name == "erf":
        return Activation("erf", sp.erf(x))
    if name == "gelu":
        return Activation("gelu", _gelu(x))
    if name == "swish":
        return Activation("swish", _swish(x))
    raise KeyError(name)


CATALOG: tuple[str, ...] = ("identity", "linear", "relu", "leaky_relu", "alpha_relu", "tanh", "erf", "gelu", "swish")


def get_activation(spec: str | Activation | sp.Expr, **params: Any) -> Activation:
    """Look up or parse an activation.

    ``spec`` is a catalog name (``identity``/``linear``, ``relu``, ``leaky_relu``,
    ``alpha_relu``, ``tanh``, ``erf``, ``gelu``, ``swish``), a catalog call with parameter
    values (``"leaky_relu(0.1)"``, ``"leaky_relu(a=0.1)"``, ``"alpha_relu(1.5)"``), an expression
    in ``x`` (``"tanh(g*x + b)"``), a SymPy expression, or an :class:`Activation`.
    Keyword ``params`` bind parameters (``get_activation("tanh(g*x)", g=0.5)``).
    """
    if isinstance(spec, Activation):
        return spec.bind(**params) if params else spec
    if isinstance(spec, sp.Expr):
        free = tuple(sorted((s for s in spec.free_symbols if s != x), key=lambda s: s.name))
        act = Activation(
            str(spec),
            spec.subs({s: sp.Symbol(s.name, real=True) for s in free}),
            tuple(sp.Symbol(s.name, real=True) for s in free),
        )
        return act.bind(**params) if params else act
    if not isinstance(spec, str):
        raise ActivationError(
            f"activation must be a name, an expression string or a SymPy expression, got {type(spec).__name__}"
        )
    text = spec.strip()
    if len(text) > MAX_TEXT:
        raise ActivationError(f"activation expression too long ({len(text)} characters, limit {MAX_TEXT})")
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tree = None
    # catalog name, possibly called with parameter values
    if isinstance(tree, ast.Name) and tree.id in CATALOG:
        act = _catalog_entry(tree.id)
        return act.bind(**params) if params else act
    if (
        isinstance(tree, ast.Call)
        and isinstance(tree.func, ast.Name)
        and tree.func.id in ("leaky_relu", "alpha_relu")
        and not any(_mentions_x(a) for a in list(tree.args) + [k.value for k in tree.keywords])
    ):
        act = _catalog_entry(tree.func.id)
        pname = act.parameters[0].name
        if (
            len(tree.args) == 1
            and not tree.keywords
            and isinstance(tree.args[0], ast.Name)
            and tree.args[0].id == pname
        ):
            # the family written with its own parameter name, e.g. "leaky_relu(a)": parameter unbound
            return act.bind(**params) if params else act
        vals: dict[str, Any] = {}
        if len(tree.args) > 1 or len(tree.keywords) > 1 or (tree.args and tree.keywords):
            raise ActivationError(f"{tree.func.id} takes one parameter: {tree.func.id}({pname}=...)")
        for a in tree.args:
            vals[pname] = parse_expression(ast.unparse(a))
        for k in tree.keywords:
            if k.arg != pname:
                raise ActivationError(f"{tree.func.id} has parameter {pname!r}, not {k.arg!r}")
            vals[pname] = parse_expression(ast.unparse(k.value))
        for pn, v in vals.items():
            if v.free_symbols:
                raise ActivationError(f"parameter {pn} of {tree.func.id} must be a number, got {v}")
        act = act.bind(**vals)
        return act.bind(**params) if params else act
    if isinstance(tree, ast.Name) and tree.id != "x":
        raise ActivationError(
            f"unknown activation {_shorten(text)!r}; known: {', '.join(CATALOG)}, or an expression in x such as "
            "'tanh(0.5*x + 0.2)'"
        )
    expr = parse_expression(text)
    if x not in expr.free_symbols:
        raise ActivationError(
            f"activation {_shorten(text)!r} does not depend on x; write a function of x, e.g. 'tanh(x)'"
        )
    free = tuple(sorted((s for s in expr.free_symbols if s != x), key=lambda s: s.name))
    act = Activation(text, expr, free)
    return act.bind(**params) if params else act


def _mentions_x(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "x" for n in ast.walk(node))
