"""Module attributes imported on first use (PEP 562), shared by the package and ``engine``."""

from __future__ import annotations

__all__ = ["lazy_exports"]

import importlib


def lazy_exports(namespace: dict, mapping: dict[str, str]):
    """``(__getattr__, __dir__)`` for a module whose ``mapping`` names load from submodules.

    ``namespace`` is the module's ``globals()``; ``mapping`` maps an exported name to the
    relative submodule that defines it. A loaded name is cached in ``namespace``.
    """
    module = namespace["__name__"]

    def __getattr__(name):
        if name in mapping:
            from . import backend  # noqa: F401  (quiets TensorFlow before anything imports it)

            value = getattr(importlib.import_module(mapping[name], module), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__():
        return sorted(list(namespace) + list(mapping))

    return __getattr__, __dir__
