"""CSPNet: the periodic-E(3)-equivariant denoiser of DiffCSP (docs/method.md §Network).

The only geometric inputs are the Gram matrix G = L·Lᵀ (rotation invariant) and Fourier
features of fractional differences f_j − f_i (translation invariant, periodic), so invariance
holds by construction; the lattice head multiplies by L so its output co-rotates.

Speed. The graph is fully connected inside each crystal (N² pairs). The reference formulation
applies the first edge layer to the concatenation [h_i, h_j, G, ψ_ij] for every pair. Since a
linear layer of a concatenation is the sum of linear layers of the parts,
W·[h_i, h_j, G, ψ_ij] = W_1 h_i + W_2 h_j + W_3 G + W_4 ψ_ij, the node terms are computed once
per atom (N instead of N² rows), the lattice term once per crystal, and ψ_ij once per forward
pass for all layers. The weights are still stored as one ``nn.Linear`` over the concatenation,
so the straightforward formulation (kept in the tests) runs on the very same parameters.

The pair term W_4 ψ_ij is the largest product left, and half of it is redundant: ψ's sine part
is odd in f_j − f_i and its cosine part even, so with P = S_ij W_s (sines) and Q = C_ij W_c
(cosines) computed for i < j only, pair (j, i) gets Q − P and every self-pair the constant sum
of W_c's columns (ψ_ii = [0…, 1…]). That is n(n−1)/2 products per crystal instead of n² (2.5×
fewer for Perov-5's n = 5); see :class:`HalfPairs`.

Variants (:mod:`diffcsp.variants`): the paper's ablations swap ψ for wrapped raw differences,
G for L itself, or hide one component in the first stage of two-stage generation. They are
options fixed at construction; the defaults build and run exactly the network described above.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from diffcsp.variants import wrap_differences

NUM_ELEMENTS = 100


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of (integer) diffusion times, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=-1)


def fourier_features(diff: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """ψ(d) = [sin(2πk d), cos(2πk d)], k = 0..K−1, per axis → (E, 6K). Periodic in d."""
    k = torch.arange(num_freqs, device=diff.device, dtype=diff.dtype)
    args = 2 * math.pi * diff.unsqueeze(-1) * k  # (E, 3, K)
    return torch.cat([args.sin(), args.cos()], dim=-1).reshape(diff.shape[0], -1)


def fully_connected_edges(num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, dst) of all ordered pairs inside each crystal, self-pairs included, src-major."""
    device = num_atoms.device
    offsets = torch.cumsum(num_atoms, 0) - num_atoms
    sq = num_atoms * num_atoms
    edge_crystal = torch.repeat_interleave(torch.arange(len(num_atoms), device=device), sq)
    local = torch.arange(int(sq.sum()), device=device) - torch.repeat_interleave(torch.cumsum(sq, 0) - sq, sq)
    n = num_atoms[edge_crystal]
    src = offsets[edge_crystal] + local // n
    dst = offsets[edge_crystal] + local % n
    return src, dst


def size_buckets(num_atoms: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Group crystals by atom count: (n, crystal indices (c,), atom indices (c·n,)) per size.

    Inside a bucket the N² pairs of every crystal form a dense (c, n, n) block, so the pair
    terms are broadcast sums instead of gathers over an edge list, and the mean over
    neighbours is a reduction over one axis instead of a scatter.
    """
    offsets = torch.cumsum(num_atoms, 0) - num_atoms
    buckets = []
    for n in torch.unique(num_atoms).tolist():
        crystals = torch.nonzero(num_atoms == n).flatten()
        atoms = (offsets[crystals].unsqueeze(1) + torch.arange(n, device=num_atoms.device)).flatten()
        buckets.append((int(n), crystals, atoms))
    return buckets


@dataclass
class HalfPairs:
    """Fourier features of a bucket's pairs i < j only, split into sines and cosines.

    ``sin``/``cos`` (c, P, 3K) with P = n(n−1)/2, columns ordered (axis, k) as in ψ;
    ``order`` (n²,) puts [pairs i < j, pairs i > j, self-pairs] back in src-major order.
    """

    sin: torch.Tensor
    cos: torch.Tensor
    order: torch.Tensor

    @classmethod
    def of(cls, f: torch.Tensor, num_freqs: int) -> HalfPairs:
        """From fractional coordinates ``f`` (c, n, 3) of equally sized crystals."""
        n = f.shape[1]
        up, order = _pair_order(n, f.device)
        k = torch.arange(num_freqs, device=f.device, dtype=f.dtype)
        args = 2 * math.pi * (f[:, up[1]] - f[:, up[0]]).unsqueeze(-1) * k  # (c, P, 3, K): f_j − f_i, i < j
        return cls(args.sin().flatten(2), args.cos().flatten(2), order)

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """ψ_ij · wᵀ for every ordered pair, (c, n, n, H), from ``w`` (H, 6K) in ψ's column order."""
        c, hid = self.sin.shape[0], w.shape[0]
        n = math.isqrt(self.order.numel())
        wk = w.view(hid, -1, 2, w.shape[1] // 6)  # (H, axis, sin/cos, K)
        w_sin, w_cos = wk[:, :, 0].reshape(hid, -1), wk[:, :, 1].reshape(hid, -1)
        odd = self.sin @ w_sin.T  # (c, P, H)
        even = self.cos @ w_cos.T
        diag = w_cos.sum(1).expand(c, n, hid)
        # index_select, not [:, order]: its backward is an index_add, not a (much slower) index_put
        return torch.cat([even + odd, even - odd, diag], 1).index_select(1, self.order).view(c, n, n, hid)


@lru_cache(maxsize=64)
def _pair_order(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, P) indices (i, j) of the pairs i < j, and the permutation described in :class:`HalfPairs`."""
    up = torch.triu_indices(n, n, 1)
    num = up.shape[1]
    slot = torch.empty(n, n, dtype=torch.long)
    slot[up[0], up[1]] = torch.arange(num)
    slot[up[1], up[0]] = num + torch.arange(num)
    slot[torch.arange(n), torch.arange(n)] = 2 * num + torch.arange(n)
    return up.to(device), slot.flatten().to(device)


class CSPLayer(nn.Module):
    """One message-passing layer: pre-LayerNorm, pair MLP, mean aggregation, node MLP, residual."""

    def __init__(self, hidden: int, num_freqs: int, pair_dim: int | None = None):
        """``pair_dim``: width of the pair features (default 6K, the Fourier features ψ)."""
        super().__init__()
        self.hidden = hidden
        self.norm = nn.LayerNorm(hidden)
        # edge_in acts on [h_i, h_j, G(9), ψ(6K)]; sliced in the fast path.
        self.edge_in = nn.Linear(2 * hidden + 9 + (6 * num_freqs if pair_dim is None else pair_dim), hidden)
        self.edge_out = nn.Linear(hidden, hidden)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, gram: torch.Tensor, psi: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                atom_crystal: torch.Tensor, edge_crystal: torch.Tensor, inv_count: torch.Tensor) -> torch.Tensor:
        H = self.hidden
        x = self.norm(h)
        w, b = self.edge_in.weight, self.edge_in.bias
        node_i = x @ w[:, :H].T  # (N, H)
        node_j = x @ w[:, H : 2 * H].T
        lat = gram @ w[:, 2 * H : 2 * H + 9].T + b  # (B, H)
        pair = psi @ w[:, 2 * H + 9 :].T  # (E, H)
        pre = pair + node_i[src] + node_j[dst] + lat[edge_crystal]
        msg = self.act(self.edge_out(self.act(pre)))
        agg = torch.zeros_like(x).index_add_(0, src, msg) * inv_count
        return h + self.node_mlp(torch.cat([x, agg], dim=-1))

    def forward_dense(self, h: torch.Tensor, gram: torch.Tensor,
                      blocks: list[tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor | HalfPairs]]) -> torch.Tensor:
        """The same layer on size buckets: ``blocks`` holds (n, crystals, atoms or None when the
        bucket is the whole batch in order, pair features) per crystal size; the pair features
        are :class:`HalfPairs` for ψ, or a (c, n, n, pair_dim) tensor for other pair inputs."""
        H = self.hidden
        x = self.norm(h)
        w, b = self.edge_in.weight, self.edge_in.bias
        node_i = x @ w[:, :H].T
        node_j = x @ w[:, H : 2 * H].T
        lat = gram @ w[:, 2 * H : 2 * H + 9].T + b
        w_pair = w[:, 2 * H + 9 :]
        parts = []
        for n, crystals, atoms, pairs in blocks:
            c = len(crystals)
            ni = node_i if atoms is None else node_i[atoms]
            nj = node_j if atoms is None else node_j[atoms]
            pair = pairs.project(w_pair) if isinstance(pairs, HalfPairs) else pairs @ w_pair.T
            # One (c, n, n, H) buffer instead of four: the first sum allocates it, the others add
            # in place (autograd allows it: no op here needs its output for backward). The first
            # must not be in place: ``pair`` may be a view, and in-place ops on a view cost a
            # full-size copy in backward (CopySlices).
            pre = pair + ni.view(c, n, 1, H)
            pre += nj.view(c, 1, n, H)
            pre += lat[crystals].view(c, 1, 1, H)
            hidden = F.silu(pre, inplace=not torch.is_grad_enabled())
            msg = self.edge_out(hidden)
            msg = F.silu(msg, inplace=not torch.is_grad_enabled())
            parts.append(msg.mean(2).reshape(c * n, H))
        if len(parts) == 1 and blocks[0][2] is None:
            agg = parts[0]
        else:
            agg = torch.zeros_like(x).index_copy(0, torch.cat([blk[2] for blk in blocks]), torch.cat(parts))
        return h + self.node_mlp(torch.cat([x, agg], dim=-1))

    def forward_reference(self, h, gram, diff, pair_features: Callable[[torch.Tensor], torch.Tensor], src, dst,
                          atom_crystal, edge_crystal, num_atoms):
        """Straightforward formulation: concatenate per pair, then the full linear layer.
        ``pair_features`` maps the differences f_j − f_i to the pair input (ψ by default)."""
        x = self.norm(h)
        feats = torch.cat([x[src], x[dst], gram[edge_crystal], pair_features(diff)], dim=-1)
        msg = self.act(self.edge_out(self.act(self.edge_in(feats))))
        agg = torch.zeros_like(x).index_add_(0, src, msg) / num_atoms[atom_crystal].unsqueeze(-1).to(x.dtype)
        return h + self.node_mlp(torch.cat([x, agg], dim=-1))


class CSPNet(nn.Module):
    """φ(L_t, F_t, A, t) → (ε̂_L, ε̂_F[, ε̂_A]).

    Options for the paper's ablations (:mod:`diffcsp.variants`; the defaults are the published
    network): ``pair_features`` ``"fourier"`` (ψ, 6K numbers per pair) or ``"wrapped"`` (f_j − f_i
    wrapped to [−½, ½), 3 numbers); ``lattice_features`` ``"gram"`` (L·Lᵀ) or ``"matrix"`` (L);
    ``first_stage`` ``None``, ``"lattice"`` or ``"coords"``: a two-stage network, whose forward
    takes ``stage`` (B,) and, in stage 0, zeroes the component generated second (coordinates,
    resp. the lattice) before any feature is computed.
    """

    def __init__(self, hidden: int = 512, num_layers: int = 6, num_freqs: int = 128, time_dim: int = 256,
                 predict_types: bool = False, pair_features: str = "fourier", lattice_features: str = "gram",
                 first_stage: str | None = None):
        super().__init__()
        if pair_features not in ("fourier", "wrapped"):
            raise ValueError(f"pair_features must be 'fourier' or 'wrapped', not {pair_features!r}")
        if lattice_features not in ("gram", "matrix"):
            raise ValueError(f"lattice_features must be 'gram' or 'matrix', not {lattice_features!r}")
        if first_stage not in (None, "lattice", "coords"):
            raise ValueError(f"first_stage must be None, 'lattice' or 'coords', not {first_stage!r}")
        self.hidden, self.num_freqs, self.time_dim = hidden, num_freqs, time_dim
        self.predict_types = predict_types
        self.pair_features, self.lattice_features, self.first_stage = pair_features, lattice_features, first_stage
        self.pair_dim = 6 * num_freqs if pair_features == "fourier" else 3
        # CSP embeds known types; generation sees noisy one-hot vectors, so a linear map.
        self.type_embed = nn.Linear(NUM_ELEMENTS, hidden) if predict_types else nn.Embedding(NUM_ELEMENTS + 1, hidden)
        self.input = nn.Linear(hidden + time_dim, hidden)
        self.layers = nn.ModuleList(CSPLayer(hidden, num_freqs, self.pair_dim) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.coord_out = nn.Linear(hidden, 3, bias=False)
        self.lattice_out = nn.Linear(hidden, 9, bias=False)
        self.type_out = nn.Linear(hidden, NUM_ELEMENTS, bias=False) if predict_types else None
        # two-stage variants: which stage the network is in (added to every atom's input)
        self.stage_embed = nn.Embedding(2, hidden) if first_stage is not None else None

    def _embed(self, types, t, batch, stage=None):
        emb = self.type_embed(types)
        temb = sinusoidal_embedding(t, self.time_dim)[batch]
        h = self.input(torch.cat([emb, temb], dim=-1))
        if self.stage_embed is not None:
            h = h + self.stage_embed(stage)[batch]
        return h

    def _lattice_input(self, lattice: torch.Tensor) -> torch.Tensor:
        """(B, 9): the Gram matrix L·Lᵀ (rotation invariant), or L itself for the ``no-o3`` variant."""
        if self.lattice_features == "gram":
            return (lattice @ lattice.transpose(-1, -2)).reshape(-1, 9)
        return lattice.reshape(-1, 9)

    def _pair_input(self, diff: torch.Tensor) -> torch.Tensor:
        """(E, pair_dim): ψ(f_j − f_i), or the wrapped differences for the ``no-fourier`` variant."""
        if self.pair_features == "fourier":
            return fourier_features(diff, self.num_freqs)
        return wrap_differences(diff)

    def _hide_absent(self, frac, lattice, num_atoms, stage):
        """Two-stage networks: in stage 0 the component generated second is zeroed, so nothing
        about it reaches any layer (or the lattice head). One-stage networks take no stage."""
        if self.first_stage is None:
            if stage is not None:
                raise ValueError("this network has no stages (stage must be None)")
            return frac, lattice
        if stage is None:
            raise ValueError(f"a two-stage network ({self.first_stage} first) needs the stage of every crystal")
        absent = stage == 0
        if self.first_stage == "lattice":
            frac = frac.masked_fill(torch.repeat_interleave(absent, num_atoms).unsqueeze(-1), 0.0)
        else:
            lattice = lattice.masked_fill(absent.view(-1, 1, 1), 0.0)
        return frac, lattice

    def _inputs(self, types, frac, lattice, num_atoms, t, stage=None):
        frac, lattice = self._hide_absent(frac, lattice, num_atoms, stage)
        batch = torch.repeat_interleave(torch.arange(len(num_atoms), device=frac.device), num_atoms)
        src, dst = fully_connected_edges(num_atoms)
        h = self._embed(types, t, batch, stage)
        gram = self._lattice_input(lattice)
        diff = frac[dst] - frac[src]  # ψ is periodic, so the "mod 1" of docs/method.md §Network is implicit
        return h, gram, diff, src, dst, batch, batch[src], lattice

    def _heads(self, h, lattice, batch, num_atoms):
        h = self.final_norm(h)
        pooled = torch.zeros(len(num_atoms), h.shape[-1], device=h.device, dtype=h.dtype).index_add_(0, batch, h)
        pooled = pooled / num_atoms.unsqueeze(-1).to(h.dtype)
        eps_l = self.lattice_out(pooled).view(-1, 3, 3) @ lattice
        eps_f = self.coord_out(h)
        eps_a = self.type_out(h) if self.type_out is not None else None
        return eps_l, eps_f, eps_a

    def forward(self, types: torch.Tensor, frac: torch.Tensor, lattice: torch.Tensor, num_atoms: torch.Tensor,
                t: torch.Tensor, stage: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``types``: (N,) atomic numbers (CSP) or (N, 100) noisy one-hots (generation);
        ``frac`` (N, 3); ``lattice`` (B, 3, 3); ``num_atoms`` (B,); ``t`` (B,) integer times;
        ``stage`` (B,) 0 or 1, for two-stage networks only.

        Runs on size buckets (:func:`size_buckets`); :meth:`forward_edges` is the same network
        on a flat edge list and :meth:`forward_reference` the straightforward formulation."""
        frac, lattice = self._hide_absent(frac, lattice, num_atoms, stage)
        batch = torch.repeat_interleave(torch.arange(len(num_atoms), device=frac.device), num_atoms)
        h = self._embed(types, t, batch, stage)
        gram = self._lattice_input(lattice)
        blocks = []
        buckets = size_buckets(num_atoms)
        for n, crystals, atoms in buckets:
            f = frac[atoms].view(-1, n, 3)
            if self.pair_features == "fourier":
                pairs: torch.Tensor | HalfPairs = HalfPairs.of(f, self.num_freqs)
            else:
                diff = f.unsqueeze(1) - f.unsqueeze(2)  # [c, i, j] = f_j − f_i, as in the edge list
                pairs = self._pair_input(diff.reshape(-1, 3)).view(-1, n, n, self.pair_dim)
            whole = len(buckets) == 1  # one size: atoms are 0..N−1 in order, no gather needed
            blocks.append((n, crystals, None if whole else atoms, pairs))
        for layer in self.layers:
            h = layer.forward_dense(h, gram, blocks)
        return self._heads(h, lattice, batch, num_atoms)

    def forward_edges(self, types: torch.Tensor, frac: torch.Tensor, lattice: torch.Tensor, num_atoms: torch.Tensor,
                      t: torch.Tensor, stage: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The factorised network on a flat edge list (src-major pairs), kept for comparison."""
        h, gram, diff, src, dst, batch, edge_crystal, lattice = self._inputs(types, frac, lattice, num_atoms, t, stage)
        psi = self._pair_input(diff)
        inv_count = (1.0 / num_atoms.to(h.dtype))[batch].unsqueeze(-1)
        for layer in self.layers:
            h = layer(h, gram, psi, src, dst, batch, edge_crystal, inv_count)
        return self._heads(h, lattice, batch, num_atoms)

    def forward_reference(self, types, frac, lattice, num_atoms, t, stage=None):
        """The naive per-pair-concatenation network on the same weights (tests, benchmark)."""
        h, gram, diff, src, dst, batch, edge_crystal, lattice = self._inputs(types, frac, lattice, num_atoms, t, stage)
        for layer in self.layers:
            h = layer.forward_reference(h, gram, diff, self._pair_input, src, dst, batch, edge_crystal, num_atoms)
        return self._heads(h, lattice, batch, num_atoms)
