"""Coupling cost per batch: independent vs exact minibatch OT (scipy on the CPU, auction on the
GPU) vs the online coupler, for batch sizes 256..8192, on every device available.

    python tools/bench_couplers.py                      # CPU (and CUDA when present), up to 8192
    python tools/bench_couplers.py --max-batch 1024     # a ~1 minute CPU run

Data: a 10-cluster Gaussian mixture in ``--dim`` dimensions (784 = MNIST's pixel count; cluster
centres N(0, 0.5^2 I), spread 0.5) paired with N(0, I) noise, so the cost matrices look like a
digits batch against noise. Each row times one ``pair`` call of a coupler (cost matrix + solve +
reordering; for the online coupler also the table look-up) and reports, besides milliseconds:

- ``gap``: the auction's transport cost over the exact (scipy) optimum of the same batch, minus 1;
- ``online/exact``: the online coupler's time per batch over exact minibatch OT's on the same device;
- ``W2^2 kept/minibatch``: the online coupler's kept-coupling mean squared distance after
  ``--epochs`` passes over a data set of 4 batches, over minibatch OT's mean pair cost on fresh
  noise (below 1: the kept coupling is closer to the global optimum than per-batch OT).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from onestep_couplers.assignment import assignment_cost, pair_costs, scipy_assignment, squared_distances
from onestep_couplers.couplers import Independent, MinibatchOT
from onestep_couplers.online import OnlineOT

SIZES = (256, 512, 1024, 2048, 4096, 8192)


def mixture(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    centres = torch.randn(10, dim, generator=g) * 0.5
    return centres[torch.randint(0, 10, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA synchronised)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def online_after_epochs(data: torch.Tensor, batch: int, epochs: int, g: torch.Generator) -> OnlineOT:
    coupler = OnlineOT(OnlineOT.Config(solver="auction" if data.is_cuda else "scipy"))
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g).to(data.device)
        for i in range(0, len(data), batch):
            rows = order[i:i + batch]
            coupler.pair(torch.randn(len(rows), data.shape[1], generator=g).to(data.device), data[rows])
    return coupler


def bench(device: torch.device, batch: int, dim: int, epochs: int, g: torch.Generator) -> dict:
    data = mixture(4 * batch, dim, g).to(device)
    x = data[:batch]
    z = torch.randn(batch, dim, generator=g).to(device)
    repeats = 3 if batch <= 2048 else 1
    cost = squared_distances(z, x)
    exact = assignment_cost(cost, scipy_assignment(cost))
    row = {"device": device.type, "batch": batch, "dim": dim,
           "independent_ms": timed(lambda: Independent(Independent.Config()).pair(z, x), device, repeats),
           "cost_matrix_ms": timed(lambda: squared_distances(z, x), device, repeats)}
    scipy_ot = MinibatchOT(MinibatchOT.Config(solver="scipy"))
    row["scipy_ms"] = timed(lambda: scipy_ot.pair(z, x), device, repeats)
    auction_ot = MinibatchOT(MinibatchOT.Config(solver="auction"))
    paired = []
    row["auction_ms"] = timed(lambda: paired.append(auction_ot.pair(z, x)[0]), device, repeats)
    row["auction_gap"] = float(pair_costs(paired[-1], x).double().sum()) / exact - 1
    exact_ms = row["auction_ms"] if device.type == "cuda" else row["scipy_ms"]
    online = online_after_epochs(data, batch, epochs, g)
    fresh = [torch.randn(batch, dim, generator=g).to(device) for _ in range(repeats)]
    calls = iter(fresh)
    row["online_ms"] = timed(lambda: online.pair(next(calls), x), device, repeats)
    row["online_over_exact"] = row["online_ms"] / exact_ms
    exact_solver = auction_ot if device.type == "cuda" else scipy_ot
    minibatch_cost = statistics.mean(
        float(pair_costs(*exact_solver.pair(torch.randn(batch, dim, generator=g).to(device), data[i:i + batch])[:2])
              .double().mean()) for i in range(0, len(data), batch))
    row["kept_over_minibatch_w2"] = online.mean_cost / minibatch_cost
    return row


COLUMNS = [("device", "{}"), ("batch", "{}"), ("dim", "{}"), ("independent_ms", "{:.2f}"),
           ("cost_matrix_ms", "{:.2f}"), ("scipy_ms", "{:.1f}"), ("auction_ms", "{:.1f}"),
           ("auction_gap", "{:.1e}"), ("online_ms", "{:.1f}"), ("online_over_exact", "{:.2f}"),
           ("kept_over_minibatch_w2", "{:.3f}")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-batch", type=int, default=8192, help="largest batch size (CPU: 1024 runs in ~1 minute)")
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--epochs", type=int, default=2, help="online coupler passes over its 4-batch data set")
    p.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu and cuda if present")
    args = p.parse_args()
    devices = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    devices = [torch.device(d) for d in devices if d != "cuda" or torch.cuda.is_available()]
    g = torch.Generator().manual_seed(0)
    print("| " + " | ".join(c for c, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for device in devices:
        for batch in (b for b in SIZES if b <= args.max_batch):
            if device.type == "cuda":  # warm-up: kernels and allocator
                bench(device, 256, args.dim, 1, g)
            row = bench(device, batch, args.dim, args.epochs, g)
            print("| " + " | ".join(f.format(row[c]) for c, f in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    main()
