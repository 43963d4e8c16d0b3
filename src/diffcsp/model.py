"""DiffCSP = CSPNet + the corruption processes + the training objective (docs/method.md).

The network (``cspnet``), the noise processes (``diffusion``) and the sampler (``sampler``)
are separate modules; this one ties them together and owns the model's configuration, which
is saved next to the weights so a checkpoint always knows what it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffcsp.batching import CrystalBatch
from diffcsp.cspnet import NUM_ELEMENTS, CSPNet
from diffcsp.diffusion import CosineDDPM, WrappedNormalVE
from diffcsp.variants import DEFAULT_VARIANT, check_variant, first_component, network_options, two_stage_inputs, weighted_mse


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    task: str = "csp"  # "csp" (types given) or "gen" (types diffused too)
    hidden: int = 512
    num_layers: int = 6
    num_freqs: int = 128
    time_dim: int = 256
    timesteps: int = 1000
    sigma_begin: float = 0.005
    sigma_end: float = 0.5
    cost_lattice: float = 1.0
    cost_coord: float = 1.0
    cost_type: float = 20.0
    dataset: str = ""
    max_atoms: int = 20
    #: histogram of atoms per cell in the training set (index = atom count), for generation.
    num_atoms_hist: list[int] = field(default_factory=list)
    #: bound on the lattice-vector lengths (Å) of the sampler's clipped x̂_0 (0: use 100 Å).
    lattice_bound: float = 0.0
    #: elements seen in training (atomic numbers); predict() warns outside them.
    elements: list[int] = field(default_factory=list)
    #: "joint" (the published model) or one of the paper's ablations, see :mod:`diffcsp.variants`
    variant: str = DEFAULT_VARIANT

    def __post_init__(self) -> None:
        if self.task not in ("csp", "gen"):
            raise ValueError(f"task must be 'csp' or 'gen', not {self.task!r}")
        check_variant(self.variant, self.task)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model settings in checkpoint: {', '.join(sorted(unknown))}")
        return cls(**d)


class DiffCSP(nn.Module):
    """Joint diffusion over (L, F[, A]) with a CSPNet denoiser."""

    def __init__(self, config: ModelConfig, compute_schedules: bool = True):
        """``compute_schedules=False`` skips the Monte Carlo estimate of λ_t (seconds of CPU)
        when the buffers are about to be overwritten by a checkpoint's stored schedules."""
        super().__init__()
        self.config = config
        self.net = CSPNet(config.hidden, config.num_layers, config.num_freqs, config.time_dim,
                          predict_types=config.task == "gen", **network_options(config.variant))
        self.lattice_process = CosineDDPM(config.timesteps)
        self.coord_process = WrappedNormalVE(config.timesteps, config.sigma_begin, config.sigma_end,
                                             mc_samples=10_000 if compute_schedules else 0)

    @property
    def is_gen(self) -> bool:
        return self.config.task == "gen"

    def loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        """Training loss (docs/method.md): sample t per crystal, noise every component, regress the noise directions."""
        B, device = batch.num_graphs, batch.frac_coords.device
        t = torch.randint(1, self.config.timesteps + 1, (B,), device=device)
        t_atom = t[batch.batch]

        eps_l = torch.randn_like(batch.lattice)
        lattice_t = self.lattice_process.add_noise(batch.lattice, t, eps_l)

        sigma = self.coord_process.sigmas[t_atom].unsqueeze(-1)
        lam = self.coord_process.lambdas[t_atom].unsqueeze(-1)
        eps_f = torch.randn_like(batch.frac_coords)
        frac_t = self.coord_process.add_noise(batch.frac_coords, sigma, eps_f)
        target_f = self.coord_process.target(sigma, eps_f, lam)

        if self.is_gen:
            onehot = F.one_hot(batch.atom_types - 1, NUM_ELEMENTS).float()
            eps_a = torch.randn_like(onehot)
            types_in = self.lattice_process.add_noise(onehot, t_atom, eps_a)
        else:
            types_in = batch.atom_types

        first = first_component(self.config.variant)
        if first is None:
            pred_l, pred_f, pred_a = self.net(types_in, frac_t, lattice_t, batch.num_atoms, t)
            losses = {
                "loss_lattice": F.mse_loss(pred_l, eps_l),
                "loss_coord": F.mse_loss(pred_f, target_f),
            }
        else:
            # two-stage variants: a stage per crystal; each trains only the component it generates
            stage = torch.randint(0, 2, (B,), device=device)
            lattice_in, frac_in, w_l, w_f = two_stage_inputs(first, stage, batch.batch, batch.lattice, lattice_t,
                                                             batch.frac_coords, frac_t)
            pred_l, pred_f, pred_a = self.net(types_in, frac_in, lattice_in, batch.num_atoms, t, stage)
            losses = {
                "loss_lattice": weighted_mse(pred_l, eps_l, w_l),
                "loss_coord": weighted_mse(pred_f, target_f, w_f),
            }
        total = self.config.cost_lattice * losses["loss_lattice"] + self.config.cost_coord * losses["loss_coord"]
        if self.is_gen:
            losses["loss_type"] = F.mse_loss(pred_a, eps_a)
            total = total + self.config.cost_type * losses["loss_type"]
        losses["loss"] = total
        return losses
