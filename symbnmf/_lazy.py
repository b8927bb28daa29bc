"""Lazy public names of a package (PEP 562), shared by ``symbnmf`` and ``symbnmf.fast`` (private).

A package lists its public names as ``name -> (module, attribute)`` (attribute "" for the module
itself); the first access imports the module and keeps the value in the package's namespace, so
``import symbnmf`` stays cheap and imports neither SymPy nor JAX until a name needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, public: Mapping[str, tuple[str, str]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose lazy names are ``public``, resolved once
    into ``namespace`` (the package's ``globals()``)."""

    def __getattr__(name: str) -> Any:
        try:
            module, attr = public[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        mod = importlib.import_module(module)
        value = getattr(mod, attr) if attr else mod
        namespace[name] = value  # resolve once
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
