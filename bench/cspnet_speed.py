"""Time CSPNet's forward paths against the straightforward per-pair formulation.

All paths run on the very same weights and batch in one process, interleaved: forward alone
(no grad, as in sampling) and forward + backward of a loss-like scalar (as in training), after
warm-up, median and minimum over repeats. The fp32 outputs are compared as well. Paths: the per-pair
concatenation (``forward_reference``), the factorised edge-list form (``forward_edges``), the
size-bucketed default (``forward``) and, on CPUs with native bf16 (AVX-512 BF16/AMX), the
default under bf16 autocast.

    python bench/cspnet_speed.py                                 # hidden 128, 4 layers, K 32
    python bench/cspnet_speed.py --dataset-like mp20 --repeats 5
    python bench/cspnet_speed.py --paper                         # also hidden 512, 6 layers, K 128

Times on a shared machine are noisy; compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csp_benchmark import hardware  # noqa: E402  (one hardware description for every report)

from diffcsp.cspnet import NUM_ELEMENTS, CSPNet  # noqa: E402

#: atoms-per-cell distributions resembling the datasets (up to the datasets' atom limits)
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


#: (label, CSPNet method, bf16 autocast)
PATHS = [("reference (per-pair concat)", "forward_reference", False), ("edge list (factorised)", "forward_edges", False),
         ("size buckets (default)", "forward", False), ("size buckets, bf16 autocast", "forward", True)]


def run_once(net: CSPNet, batch: dict[str, torch.Tensor], method: str, bf16: bool, grad: bool) -> float:
    fn = getattr(net, method)
    net.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = fn(batch["types"], batch["frac"], batch["lattice"], batch["num_atoms"], batch["t"])
        loss = sum((o.float() ** 2).mean() for o in out if o is not None)
    if grad:
        loss.backward()
    return time.perf_counter() - t0


def bench(hidden: int, layers: int, freqs: int, num_atoms: np.ndarray, args) -> list[dict]:
    from diffcsp.precision import bf16_native

    torch.manual_seed(args.seed)
    net = CSPNet(hidden=hidden, num_layers=layers, num_freqs=freqs, predict_types=args.gen)
    batch = make_batch(num_atoms, args.gen, args.seed)
    N, E = int(num_atoms.sum()), int((num_atoms**2).sum())
    print(f"\nCSPNet hidden={hidden} layers={layers} K={freqs} {'gen' if args.gen else 'csp'} | "
          f"{len(num_atoms)} crystals, {N} atoms, {E} pairs | {sum(p.numel() for p in net.parameters()):,} params")
    with torch.no_grad():
        outs = {m: getattr(net, m)(batch["types"], batch["frac"], batch["lattice"], batch["num_atoms"], batch["t"])
                for m in ("forward_reference", "forward_edges", "forward")}
    for m in ("forward_edges", "forward"):
        diff = max(float((a - b).abs().max()) for a, b in zip(outs[m], outs["forward_reference"]) if a is not None)
        print(f"  max |{m} − reference| over outputs (fp32): {diff:.2e}  ({'OK' if diff < 1e-4 else 'MISMATCH'})")
    paths = [p for p in PATHS if not p[2] or bf16_native("cpu")]
    if len(paths) < len(PATHS):
        print("  (no native bf16 on this CPU: bf16 row skipped)")
    rows = []
    for grad in (False, True):
        times: dict[str, list[float]] = {label: [] for label, _, _ in paths}
        for label, method, bf16 in paths:  # warm-up
            for _ in range(args.warmup):
                run_once(net, batch, method, bf16, grad)
        for _ in range(args.repeats):  # interleaved, so every path sees the same background load
            for label, method, bf16 in paths:
                times[label].append(run_once(net, batch, method, bf16, grad))
        # Two estimates: the median, and the minimum (the least disturbed repeat, which on a
        # machine shared with other jobs is the steadier of the two).
        ref, ref_min = statistics.median(times[paths[0][0]]), min(times[paths[0][0]])
        print(f"  {'forward + backward' if grad else 'forward (no grad)'}:")
        for label, _, _ in paths:
            med, fastest = statistics.median(times[label]), min(times[label])
            print(f"    {label:30s} median {med * 1e3:8.1f} ms  speed-up {ref / med:4.2f}x | "
                  f"min {fastest * 1e3:8.1f} ms  speed-up {ref_min / fastest:4.2f}x")
            rows.append({"hidden": hidden, "layers": layers, "freqs": freqs, "crystals": len(num_atoms), "atoms": N,
                         "pairs": E, "pass": "fwd+bwd" if grad else "fwd", "path": label,
                         "median_ms": round(med * 1e3, 2), "speedup_vs_reference": round(ref / med, 3),
                         "min_ms": round(fastest * 1e3, 2), "speedup_by_min": round(ref_min / fastest, 3)})
    return rows


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
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--paper", action="store_true", help="also run the paper size (hidden 512, 6 layers, K 128)")
    p.add_argument("--paper-only", action="store_true", help="run only the paper size")
    p.add_argument("--csv", default=None, help="append the rows to this CSV")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    if args.dataset_like:
        num_atoms = DATASET_SIZES[args.dataset_like](rng, args.crystals).astype(np.int64)
    else:
        num_atoms = np.full(args.crystals, args.atoms, dtype=np.int64)
    cpu = hardware()
    print(f"{cpu}; {torch.get_num_threads()} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}")
    rows = []
    if not args.paper_only:
        rows += bench(args.hidden, args.layers, args.freqs, num_atoms, args)
    if args.paper or args.paper_only:
        rows += bench(512, 6, 128, num_atoms, args)
    if args.csv:
        import csv

        new = not Path(args.csv).exists()
        with open(args.csv, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["cpu", "threads", "dataset_like", *rows[0]])
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({"cpu": cpu, "threads": torch.get_num_threads(), "dataset_like": args.dataset_like or f"{args.atoms} atoms", **row})


if __name__ == "__main__":
    main()
