"""The table-driven JAX printer: one test per table entry, plus the known SymPy gaps it closes."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from symbnmf.fast._jaxprint import (  # noqa: E402
    KNOWN_CONSTANTS,
    KNOWN_FUNCTIONS,
    ArrayPrinter,
    CodegenError,
    function_source,
    jax_callable,
    jax_code,
    numpy_callable,
    print_assignments,
)

u = sp.Symbol("u", real=True)
v = sp.Symbol("v", real=True)

# a point inside each function's domain, and the SymPy expression for the entry
_ARGS = {
    "acosh": 1.7,
    "cbrt": 2.3,
    "log": 1.3,
    "sqrt": 1.3,
    "gamma": 2.6,
    "loggamma": 3.4,
    "asin": 0.3,
    "acos": 0.3,
    "atanh": 0.3,
}


def _entry_expr(name: str) -> sp.Expr:
    if name in ("Min", "Max", "atan2"):
        return getattr(sp, name)(u, v)
    if name == "sqrt":
        return sp.sqrt(u)
    if name == "cbrt":
        return sp.cbrt(u)
    if name in ("log1p", "expm1"):
        from sympy.codegen import cfunctions

        return getattr(cfunctions, name)(u)
    return getattr(sp, name)(u, evaluate=False)


def _mp(expr: sp.Expr, subs: dict) -> mpmath.mpf:
    from sympy.codegen.cfunctions import expm1, log1p

    expr = expr.replace(
        lambda n: isinstance(n, (log1p, expm1)),
        lambda n: n.rewrite(sp.log) if isinstance(n, log1p) else n.rewrite(sp.exp),
    )
    return mpmath.mpf(sp.N(expr.subs(subs), 30))


@pytest.mark.parametrize("name", sorted(KNOWN_FUNCTIONS))
def test_function_table_entry(name):
    """Every table entry prints to the mapped namespace and evaluates like mpmath under jit."""
    expr = _entry_expr(name)
    code = jax_code(expr)
    ns, fname = KNOWN_FUNCTIONS[name]
    if name not in ("sqrt", "cbrt"):  # those arrive as powers: sqrt via Pow(., 1/2)
        assert f"{'jsp' if ns == 'special' else 'jnp'}.{fname}(" in code
    assert "math." not in code
    x0, y0 = _ARGS.get(name, 0.7), -0.4
    f = jax_callable(expr, u, v)
    with jax.enable_x64(True):
        got = float(jax.jit(f)(jnp.float64(x0), jnp.float64(y0)))
    want = _mp(expr, {u: sp.Float(x0, 30), v: sp.Float(y0, 30)})
    assert abs(got - float(want)) <= 4e-15 * max(1.0, abs(float(want)))


@pytest.mark.parametrize("name", sorted(KNOWN_CONSTANTS))
def test_constant_table_entry(name):
    """Constants print as the correctly rounded double, with a round-trip repr."""
    const = {"pi": sp.pi, "E": sp.E, "EulerGamma": sp.EulerGamma, "Catalan": sp.Catalan, "GoldenRatio": sp.GoldenRatio}[
        name
    ]
    lit = jax_code(const)
    assert float(lit) == float(mpmath.mpf(sp.N(const, 40)))
    assert repr(float(lit)) == lit


def test_float_round_trips_float64():
    """SymPy prints 15 digits; we print the shortest repr that round-trips the double."""
    for s in ("0.1", "0.30000000000000004", "1.2345678901234567", "2.718281828459045235360287", "1e-300"):
        f = sp.Float(s, 40)
        lit = jax_code(f * u).split("*")[0]
        assert float(lit) == float(f)
    # 15 significant digits would lose this one
    f = sp.Float("1.2345678901234567", 30)
    assert float(jax_code(f)) == 1.2345678901234567


def test_exact_rationals():
    """p/q is printed with integer literals; the denominator divides once (x/3, not x*0.333)."""
    assert jax_code(sp.Rational(1, 3) * u) == "u/3"
    assert jax_code(sp.Rational(-2, 7) * u) == "-2*u/7"
    assert jax_code(sp.Rational(1, 3)) == "(1/3)"
    with jax.enable_x64(True):
        x = jnp.float64(0.1)
        got = jax_callable(u / 3, u)(x)
        assert float(got) == 0.1 / 3  # one correctly rounded division
    # integers too large for JAX's weak int32 become exact float literals
    assert jax_code(sp.Integer(2**40) * u) == "1099511627776.0*u"


def test_piecewise_to_where_under_jit():
    expr = sp.Piecewise((u**2, u > 0), (-u / 2, u > -1), (sp.Integer(7), True))
    code = jax_code(expr)
    assert code.count("jnp.where(") == 2
    f = jax.jit(jax_callable(expr, u))
    xs = jnp.array([2.0, -0.5, -3.0], dtype=jnp.float32)
    out = f(xs)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), [4.0, 0.25, 7.0])
    # no True branch: NaN outside every condition
    g = jax_callable(sp.Piecewise((u, u > 0)), u)
    assert np.isnan(float(g(jnp.float32(-1.0))))
    # logical connectives
    h = jax_callable(sp.Piecewise((1, sp.And(u > 0, u < 1)), (0, True)), u)
    np.testing.assert_array_equal(np.asarray(h(jnp.array([-1.0, 0.5, 2.0]))), [0.0, 1.0, 0.0])


def test_integer_powers_are_multiplications():
    assert jax_code(u**3) == "u*u*u"
    assert jax_code(u**-2) == "1/(u*u)"
    assert jax_code(u ** sp.Rational(3, 2)) == "u*jnp.sqrt(u)"
    assert jax_code(u ** sp.Rational(-1, 2)) == "1/jnp.sqrt(u)"
    assert "**" not in jax_code((u + 1) ** 5 / (u - 2) ** 3)
    # compound bases are named once, not re-evaluated
    lines, outs, _ = print_assignments([(u + 1) ** 4], {u: "u"})
    assert any("u + 1" in ln for ln in lines) and "u + 1" not in outs[0]


def test_cse_shares_subexpressions():
    e1 = sp.acos(1 / (u - 1)) * sp.sqrt(u * (u - 2))
    e2 = sp.acos(1 / (u - 1)) + 1
    lines, outs, _ = print_assignments([e1, e2], {u: "B"})
    src = "\n".join(lines + outs)
    assert src.count("arccos") == 1


def test_log_near_one_uses_log1p():
    """depth_scale = 1/ln(lambda) with lambda = (B-2)/(B-3) -> 1: log1p keeps the digits."""
    B = sp.Symbol("B", positive=True)
    expr = 1 / sp.log((B - 2) / (B - 3))
    assert jax_code(expr) == "1/jnp.log1p(1/(B - 3))"
    assert jax_code(sp.log(u)) == "jnp.log(u)"
    with jax.enable_x64(True):
        got = float(jax_callable(expr, B)(jnp.float64(10**6)))
    want = float(sp.N(expr.subs(B, 10**6), 30))
    assert abs(got - want) <= 4 * np.spacing(want)


def test_numeric_subexpressions_fold_to_one_literal():
    """pi/(pi - 1) and sqrt(2)/2 are correctly rounded once, not evaluated in the array dtype."""
    assert jax_code(sp.pi / (sp.pi - 1)) == repr(float(mpmath.pi / (mpmath.pi - 1)))
    assert jax_code(sp.erf(u / sp.sqrt(2))) == "jsp.erf(0.7071067811865476*u)"


def test_erf_under_jit_where_sympy_fails():
    """SymPy's lambdify(modules='jax') prints math.erf; ours traces."""
    expr = sp.erf(u) + sp.erfc(u) * sp.gamma(u + 2) + sp.loggamma(u + 3)
    f = jax.jit(jax_callable(expr, u))
    with jax.enable_x64(True):
        got = float(f(jnp.float64(0.37)))
    assert abs(got - float(_mp(expr, {u: sp.Rational(37, 100)}))) < 1e-14


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_preserved(dtype):
    expr = sp.pi * sp.sqrt(u) / 3 + sp.Rational(1, 7) + sp.Float("0.1", 30) * u**2
    with jax.enable_x64(True):
        x = jnp.asarray([1.5, 2.5], dtype=dtype)
        out = jax_callable(expr, u)(x)
        assert out.dtype == jnp.dtype(dtype)
        grad = jax.grad(lambda t: jax_callable(expr, u)(t).sum())(x)
        assert grad.dtype == jnp.dtype(dtype)


def test_numpy_target_matches():
    expr = sp.Piecewise((sp.acos(1 / (u - 1)), u > 3), (0, True)) + sp.erf(u)
    f = numpy_callable(expr, u)
    xs = np.array([2.0, 4.0, 9.0])
    want = [float(_mp(expr, {u: sp.Float(t, 30)})) for t in xs]
    np.testing.assert_allclose(f(xs), want, rtol=1e-15)
    assert "np.where" in jax_code(expr, target="numpy") and "_sps.erf" in jax_code(expr, target="numpy")


def test_unprintable_raises_clear_error():
    with pytest.raises(CodegenError, match="no jax translation"):
        jax_code(sp.besselj(0, u))
    with pytest.raises(CodegenError, match="complex"):
        jax_code(sp.I * u)
    with pytest.raises(CodegenError, match="unknown code-generation target"):
        ArrayPrinter("torch")


def test_function_source_is_valid_python():
    src = function_source("f", [u**2 + v, sp.exp(u)], [u, v])
    ns: dict = {"jnp": jnp}
    exec(src, ns)
    a, b = ns["f"](2.0, 1.0)
    assert float(a) == 5.0 and abs(float(b) - np.exp(2.0)) < 1e-5


def test_activation_numeric_jax_uses_printer():
    import symbnmf

    for name in ("relu", "tanh", "gelu", "leaky_relu(0.1)"):
        act = symbnmf.get_activation(name)
        f = jax.jit(act.numeric("jax"))
        df = jax.jit(act.numeric("jax", derivative=True))
        g = act.numeric("mpmath")
        for t in (-1.3, 0.4, 2.0):
            with jax.enable_x64(True):
                assert abs(float(f(jnp.float64(t))) - float(g(t))) < 1e-14
                assert np.isfinite(float(df(jnp.float64(t))))
