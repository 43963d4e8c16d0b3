"""Reduced precision where the hardware computes it natively, and nowhere else.

bfloat16 matrix products are about twice as fast as float32 on CPUs with AVX-512 BF16 or AMX
and on recent GPUs; elsewhere they are emulated and slower. ``"auto"`` therefore picks
bfloat16 only on such hardware. Only the network runs in reduced precision (``torch.autocast``);
the diffusion updates, schedules and losses stay float32.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "auto")


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # private helpers, present in torch ≥ 2.3; absent → assume no native support
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except AttributeError:
            return False
    return False


def resolve(precision: str, device: torch.device | str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"`` for a requested precision (``"auto"`` decides by hardware)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """Context for the network's forward pass in the resolved precision."""
    device = torch.device(device)
    if resolve(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
