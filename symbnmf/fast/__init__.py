"""Stage 4 — fast: JAX enters here. A table-driven JAX/numpy printer, standalone generated evaluator
modules of the closed forms (`codegen`), and jit-compiled fixed Gauss quadrature of the same definitions.
May import: the base modules, symbnmf.symbolic, symbnmf.numeric, JAX."""

from symbnmf.fast import codegen as codegen
from symbnmf.fast._compile_cache import compilation_cache_dir as compilation_cache_dir
from symbnmf.fast._compile_cache import enable_compilation_cache as enable_compilation_cache
from symbnmf.fast._epsquad import fast_evaluate_eps as fast_evaluate_eps
from symbnmf.fast._fastquad import FastEvaluator as FastEvaluator
from symbnmf.fast._fastquad import fast_evaluate as fast_evaluate
from symbnmf.fast._jaxprint import CodegenError as CodegenError

__all__ = [
    "CodegenError",
    "FastEvaluator",
    "codegen",
    "compilation_cache_dir",
    "enable_compilation_cache",
    "fast_evaluate",
    "fast_evaluate_eps",
]
