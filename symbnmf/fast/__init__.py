"""Stage 4 — fast: JAX enters here. A table-driven JAX/numpy printer, standalone generated evaluator
modules of the closed forms (`codegen`), and jit-compiled fixed Gauss quadrature of the same definitions.
May import: the base modules, symbnmf.symbolic, symbnmf.numeric, JAX."""

from __future__ import annotations

from typing import TYPE_CHECKING

from symbnmf._lazy import lazy_exports

#: public name -> (module, attribute; "" for the module itself). Resolved lazily (PEP 562), so
#: importing one private module of this stage (``symbnmf.fast._compile_cache``, which a repeated
#: ``symbnmf simulate`` needs) does not import the printer, the code generator and SymPy.
_PUBLIC: dict[str, tuple[str, str]] = {
    "CodegenError": ("symbnmf.fast._jaxprint", "CodegenError"),
    "FastEvaluator": ("symbnmf.fast._fastquad", "FastEvaluator"),
    "codegen": ("symbnmf.fast.codegen", ""),
    "compilation_cache_dir": ("symbnmf.fast._compile_cache", "compilation_cache_dir"),
    "enable_compilation_cache": ("symbnmf.fast._compile_cache", "enable_compilation_cache"),
    "fast_evaluate": ("symbnmf.fast._fastquad", "fast_evaluate"),
    "fast_evaluate_eps": ("symbnmf.fast._epsquad", "fast_evaluate_eps"),
}

__all__ = [
    "CodegenError",
    "FastEvaluator",
    "codegen",
    "compilation_cache_dir",
    "enable_compilation_cache",
    "fast_evaluate",
    "fast_evaluate_eps",
]


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())


if TYPE_CHECKING:  # static view of the lazy names, for type checkers and IDEs
    from symbnmf.fast import codegen
    from symbnmf.fast._compile_cache import compilation_cache_dir, enable_compilation_cache
    from symbnmf.fast._epsquad import fast_evaluate_eps
    from symbnmf.fast._fastquad import FastEvaluator, fast_evaluate
    from symbnmf.fast._jaxprint import CodegenError
