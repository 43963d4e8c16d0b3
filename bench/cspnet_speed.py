"""Time CSPNet's fast forward against the straightforward per-pair formulation.

Both run on the very same weights and batch in one process: forward + backward of a
loss-like scalar, after warm-up, median over repeats. The outputs are compared as well.

    python bench/cspnet_speed.py                                 # hidden 128, 4 layers, K 32
    python bench/cspnet_speed.py --dataset-like mp20 --repeats 5
    python bench/cspnet_speed.py --paper                         # also hidden 512, 6 layers, K 128

Times on a shared machine are noisy; compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from diffcsp.cspnet import NUM_ELEMENTS, CSPNet

#: atoms-per-cell distributions resembling the datasets (SPEC §1 maxima)
DATASET_SIZES = {
    "perov": lambda rng, n: np.full(n, 5),
    "carbon": lambda rng, n: rng.choice([6, 8, 10, 12, 16, 20, 24], n),
    "mp20": lambda rng, n: rng.integers(1, 21, n),
    "mpts52": lambda rng, n: rng.integers(1, 53, n),
}


def make_batch(num_atoms: np.ndarray, gen: bool, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    na = torch.as_tensor(num_atoms, dtype=torch.long)
    N, B = int(na.sum()), len(na)
    types = torch.randn(N, NUM_ELEMENTS, generator=g) if gen else torch.randint(1, NUM_ELEMENTS + 1, (N,), generator=g)
    lengths = 3 + 4 * torch.rand(B, 1, generator=g)
    return {
        "types": types,
        "frac": torch.rand(N, 3, generator=g),
        "lattice": lengths.unsqueeze(-1) * torch.eye(3) + 0.5 * torch.randn(B, 3, 3, generator=g),
        "num_atoms": na,
        "t": torch.randint(1, 1001, (B,), generator=g),
    }


def step(net: CSPNet, batch: dict[str, torch.Tensor], reference: bool):
    fn = net.forward_reference if reference else net.forward
    net.zero_grad(set_to_none=True)
    out = fn(batch["types"], batch["frac"], batch["lattice"], batch["num_atoms"], batch["t"])
    loss = sum((o**2).mean() for o in out if o is not None)
    loss.backward()
    return out


def time_it(net, batch, reference: bool, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step(net, batch, reference)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(net, batch, reference)
        times.append(time.perf_counter() - t0)
    return times


def bench(hidden: int, layers: int, freqs: int, num_atoms: np.ndarray, args) -> None:
    torch.manual_seed(args.seed)
    net = CSPNet(hidden=hidden, num_layers=layers, num_freqs=freqs, predict_types=args.gen)
    batch = make_batch(num_atoms, args.gen, args.seed)
    N, E = int(num_atoms.sum()), int((num_atoms**2).sum())
    print(f"\nCSPNet hidden={hidden} layers={layers} K={freqs} {'gen' if args.gen else 'csp'} | "
          f"{len(num_atoms)} crystals, {N} atoms, {E} pairs | {sum(p.numel() for p in net.parameters()):,} params")

    with torch.no_grad():
        fast = net(batch["types"], batch["frac"], batch["lattice"], batch["num_atoms"], batch["t"])
        ref = net.forward_reference(batch["types"], batch["frac"], batch["lattice"], batch["num_atoms"], batch["t"])
    diffs = [float((a - b).abs().max()) for a, b in zip(fast, ref) if a is not None]
    print(f"  max |fast − reference| over outputs: {max(diffs):.2e}  ({'OK' if max(diffs) < 1e-4 else 'MISMATCH'})")

    results = {}
    # interleave so both see the same background load as far as possible
    order = [False, True] if not args.reference_first else [True, False]
    for ref_flag in order:
        results[ref_flag] = time_it(net, batch, ref_flag, args.warmup, args.repeats)
    for ref_flag, name in [(False, "fast forward     "), (True, "forward_reference")]:
        ts = results[ref_flag]
        print(f"  {name}: median {statistics.median(ts) * 1e3:9.1f} ms  (min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f}, n={len(ts)})")
    ratio = statistics.median(results[True]) / statistics.median(results[False])
    print(f"  speed-up (reference / fast), forward+backward: {ratio:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--freqs", type=int, default=32)
    p.add_argument("--crystals", type=int, default=256)
    p.add_argument("--atoms", type=int, default=5, help="atoms per crystal (ignored with --dataset-like)")
    p.add_argument("--dataset-like", choices=sorted(DATASET_SIZES), default=None,
                   help="draw atoms per crystal like a dataset instead of --atoms")
    p.add_argument("--gen", action="store_true", help="ab initio variant (noisy one-hot types, type head)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--paper", action="store_true", help="also run the paper size (hidden 512, 6 layers, K 128)")
    p.add_argument("--paper-only", action="store_true", help="run only the paper size")
    p.add_argument("--reference-first", action="store_true", help="time forward_reference before the fast path")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    if args.dataset_like:
        num_atoms = DATASET_SIZES[args.dataset_like](rng, args.crystals).astype(np.int64)
    else:
        num_atoms = np.full(args.crystals, args.atoms, dtype=np.int64)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, CPU")
    if not args.paper_only:
        bench(args.hidden, args.layers, args.freqs, num_atoms, args)
    if args.paper or args.paper_only:
        bench(512, 6, 128, num_atoms, args)


if __name__ == "__main__":
    main()
