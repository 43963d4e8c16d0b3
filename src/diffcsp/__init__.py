"""diffcsp: crystal structure prediction and generation with DiffCSP (Jiao et al., NeurIPS 2023).

``diffcsp.predict`` and ``diffcsp.load_model`` are the functions, loaded on first use so that
``import diffcsp`` stays cheap (torch and pymatgen load only when needed).

``predict`` is also the name of a submodule. Importing a submodule makes Python bind it as an
attribute of the package (``diffcsp.predict = <module>``), which used to replace the function
after its first call, or before it when anything had run ``from diffcsp.predict import ...``.
The package therefore refuses that one rebinding and keeps the function: ``diffcsp.predict``,
``from diffcsp import predict`` and even ``import diffcsp.predict as m`` give the function.
The module's other contents are imported as usual (``from diffcsp.predict import predict_split``)
and the module object itself is ``sys.modules["diffcsp.predict"]``.
"""

from __future__ import annotations

import sys
import types

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "predict"]

#: public name → submodule defining it
_API = {"load_model": "diffcsp.checkpoint", "predict": "diffcsp.predict"}


def _resolve(name: str) -> object:
    import importlib

    return getattr(importlib.import_module(_API[name]), name)


class _Package(types.ModuleType):
    """The package's module type: its public API names always stay bound to the functions."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            # The import system binding the submodule `diffcsp.predict` after loading it:
            # the module is fully executed by then, so the function can be taken from it.
            value = getattr(value, name)
        super().__setattr__(name, value)


def __getattr__(name: str) -> object:
    # Lazy: first access imports the defining submodule, then the function is cached here.
    if name in _API:
        function = _resolve(name)
        setattr(sys.modules[__name__], name, function)
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
