"""diffcsp: crystal structure prediction and generation with DiffCSP (Jiao et al., NeurIPS 2023)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "predict"]


def __getattr__(name: str):
    # Lazy: `import diffcsp` stays cheap (torch and pymatgen load on first use).
    if name == "load_model":
        from diffcsp.checkpoint import load_model

        return load_model
    if name == "predict":
        from diffcsp.predict import predict

        return predict
    raise AttributeError(name)
