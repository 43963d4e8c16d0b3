"""The paper's ablations as model variants (``ModelConfig.variant``, ``diffcsp train --variant``).

DiffCSP rests on three design choices, each backed by an ablation in the paper (Jiao et al.
2023, ablation table). A variant undoes exactly one of them, so a user can check each claim by
training the same budget twice:

``joint`` (default)
    The model as published: lattice L and fractional coordinates F are diffused together, the
    network sees Fourier features ψ(f_j − f_i) and the Gram matrix L·Lᵀ.
``lattice-then-coords`` / ``coords-then-lattice``
    Two-stage generation (the paper's "L → F" and "F → L"). Stage 0 generates the first
    component with the other one *absent*: the network zeroes it before computing any feature
    (coordinates → every ψ is that of f_j − f_i = 0; lattice → the zero matrix, so L·Lᵀ = 0), so
    no information about it reaches the network. Stage 1 generates the second component with the
    first one given clean (its t = 0 value, not noised). A learned stage embedding, added to every
    atom's input, tells the network which stage it is in.

    Design choice: *one* network is trained on both stages. Every crystal of a batch draws its
    stage (0 or 1, probability ½ each) and a time t; it contributes only the loss of the
    component its stage generates (stage 0 of L → F: the lattice loss; stage 1: the coordinate
    loss), each averaged over the crystals (atoms) that train it. Two separate networks would
    double the parameter count and make the comparison with ``joint`` less even; one network
    with a stage flag keeps the parameter count (plus 2·hidden for the stage embedding) and
    sees every crystal once per epoch, as ``joint`` does.

    Sampling follows the same order (:func:`diffcsp.sampler.sample`): the full reverse chain of
    the first component, then the full chain of the second with the first fixed, so these
    variants cost twice the network calls of ``joint`` at the same ``steps`` (minus the
    corrector calls of a lattice-only stage: the Langevin corrector acts on coordinates only).
    Both are defined for CSP only: in ab initio generation the atom types would need a stage of
    their own.
``no-fourier``
    The edge input is the raw relative fractional coordinate, wrapped to [−½, ½), instead of
    ψ(f_j − f_i) (3 numbers per pair instead of 6K). Wrapping keeps the network periodic and
    translation invariant; what is lost is a smooth, multi-frequency view of the torus.
``no-o3``
    The network sees the lattice matrix L (9 numbers, rows = lattice vectors) instead of the
    Gram matrix L·Lᵀ, so rotating a crystal changes the prediction: the coordinate output is no
    longer rotation invariant and the lattice output no longer co-rotates.

The default path pays nothing for the variants: the network's options are fixed at
construction, and ``joint`` builds the very same modules (same parameters and state-dict keys)
and runs the same operations as before the variants existed.
"""

from __future__ import annotations

import torch

#: all variants; the first one is the default (the published model)
VARIANTS = ("joint", "lattice-then-coords", "coords-then-lattice", "no-fourier", "no-o3")
DEFAULT_VARIANT = VARIANTS[0]
#: two-stage variants → the component generated first ("lattice" or "coords")
FIRST_COMPONENT = {"lattice-then-coords": "lattice", "coords-then-lattice": "coords"}


def check_variant(variant: str, task: str = "csp") -> None:
    """Raise ``ValueError`` (one line) for an unknown variant or one the task does not support."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; use one of {', '.join(VARIANTS)}")
    if variant in FIRST_COMPONENT and task != "csp":
        raise ValueError(f"the two-stage variant {variant!r} is defined for CSP only (task 'csp'), not {task!r}")


def first_component(variant: str) -> str | None:
    """``"lattice"`` or ``"coords"`` for the two-stage variants, ``None`` for one-stage ones."""
    return FIRST_COMPONENT.get(variant)


def network_options(variant: str) -> dict[str, str | None]:
    """Keyword arguments of :class:`diffcsp.cspnet.CSPNet` that build ``variant``."""
    check_variant(variant)
    return {"pair_features": "wrapped" if variant == "no-fourier" else "fourier",
            "lattice_features": "matrix" if variant == "no-o3" else "gram",
            "first_stage": first_component(variant)}


def num_stages(variant: str) -> int:
    """Reverse chains a sampler runs one after the other: 2 for two-stage variants, else 1."""
    return 2 if variant in FIRST_COMPONENT else 1


def stage_moves(variant: str, stage: int | None) -> tuple[bool, bool]:
    """(lattice moves, coordinates move) in a sampling stage; ``stage`` None: the joint chain."""
    first = first_component(variant)
    if first is None or stage is None:
        return True, True
    lattice_now = (first == "lattice") == (stage == 0)
    return lattice_now, not lattice_now


def wrap_differences(diff: torch.Tensor) -> torch.Tensor:
    """Relative fractional coordinates wrapped to [−½, ½) (the minimum image on each axis):
    d − ⌊d + ½⌋. Unchanged when either atom is moved by a lattice vector."""
    return diff - torch.floor(diff + 0.5)


def two_stage_inputs(first: str, stage: torch.Tensor, atom_crystal: torch.Tensor, lattice0: torch.Tensor,
                     lattice_t: torch.Tensor, frac0: torch.Tensor, frac_t: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training inputs and loss weights of the two-stage variants.

    ``stage`` (B,) holds 0 or 1 per crystal. The component being generated (stage 0: ``first``;
    stage 1: the other) is fed noised; the component generated earlier (stage 1) is fed clean;
    the component not generated yet (stage 0) is fed noised too, but the network zeroes it
    (see :class:`~diffcsp.cspnet.CSPNet`). Returns (lattice input, coordinate input, lattice
    loss weight per crystal (B,), coordinate loss weight per atom (N,)).
    """
    second = stage == 1  # (B,)
    if first == "lattice":  # stage 1: the lattice is given clean, coordinates are generated
        lattice_in = torch.where(second.view(-1, 1, 1), lattice0, lattice_t)
        frac_in = frac_t
        lattice_now = ~second
    else:  # stage 1: coordinates are given clean, the lattice is generated
        lattice_in = lattice_t
        frac_in = torch.where(second[atom_crystal].unsqueeze(-1), frac0, frac_t)
        lattice_now = second
    return lattice_in, frac_in, lattice_now.to(lattice_t.dtype), (~lattice_now)[atom_crystal].to(frac_t.dtype)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the rows with weight 1 (rows: crystals or atoms); 0 if none.

    With all weights 1 it equals ``F.mse_loss``: each row's mean over its entries, then the
    mean over rows (every row has the same number of entries)."""
    per_row = (pred - target).pow(2).flatten(1).mean(1)
    return (per_row * weight).sum() / weight.sum().clamp_min(1.0)
