"""Coupling cost per batch: independent vs exact minibatch OT (scipy; the opt-in auction on CUDA)
vs the online coupler, for batch sizes 256..8192, on every device available.

    python tools/bench_couplers.py                      # CPU (and CUDA when present), up to 8192 (minutes)
    python tools/bench_couplers.py --max-batch 1024     # a ~1 minute CPU run

Data: a 10-cluster Gaussian mixture in ``--dim`` dimensions (784 = MNIST's pixel count; cluster
centres N(0, 0.5^2 I), spread 0.5) paired with N(0, I) noise, so the cost matrices look like a
digits batch against noise. Each row times one ``pair`` call of a coupler (cost matrix + solve +
reordering; for the online coupler also the table look-up), median of 3 (1 from 4096 rows):

- ``scipy_ms``: exact assignment on the CPU (GPU tensors are copied over; up to --scipy-max-batch);
- ``auction_ms`` / ``auction_gap``: the GPU auction (CUDA rows up to --auction-max-batch) and its cost over
  the exact optimum of the same batch, minus 1 (certified <= 1e-4 by the solver);
- ``minibatch_ot_ms``: what ``minibatch-ot`` with its default solver (scipy) costs: the baseline;
- ``online_over_minibatch``: the online coupler's time per batch (default solver) over that baseline;
- ``kept_over_minibatch_w2``: the online coupler's kept-coupling mean squared distance after
  ``--epochs`` passes over a data set of 4 batches, over minibatch OT's mean pair cost on fresh
  noise (below 1: the kept coupling is cheaper, i.e. closer to the global OT coupling).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from onestep_couplers.assignment import pair_costs, squared_distances
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
    coupler = OnlineOT(OnlineOT.Config())
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g).to(data.device)
        for i in range(0, len(data), batch):
            rows = order[i:i + batch]
            coupler.pair(torch.randn(len(rows), data.shape[1], generator=g).to(data.device), data[rows])
    return coupler


def bench(device: torch.device, batch: int, dim: int, epochs: int, scipy_max: int, auction_max: int,
          g: torch.Generator) -> dict:
    data = mixture(4 * batch, dim, g).to(device)
    x = data[:batch]
    z = torch.randn(batch, dim, generator=g).to(device)
    repeats = 3 if batch <= 2048 else 1
    row = {"device": device.type, "batch": batch, "dim": dim,
           "independent_ms": timed(lambda: Independent(Independent.Config()).pair(z, x), device, repeats),
           "cost_matrix_ms": timed(lambda: squared_distances(z, x), device, repeats)}
    exact = None
    if batch <= scipy_max:
        paired = []
        scipy_ot = MinibatchOT(MinibatchOT.Config(solver="scipy"))
        row["scipy_ms"] = timed(lambda: paired.append(scipy_ot.pair(z, x)[0]), device, repeats)
        exact = float(pair_costs(paired[-1], x).double().sum())
    if device.type == "cuda" and batch <= auction_max:
        paired = []
        auction_ot = MinibatchOT(MinibatchOT.Config(solver="auction"))
        row["auction_ms"] = timed(lambda: paired.append(auction_ot.pair(z, x)[0]), device, repeats)
        if exact is not None:
            row["auction_gap"] = float(pair_costs(paired[-1], x).double().sum()) / exact - 1
    if exact is None:
        return row
    default = MinibatchOT(MinibatchOT.Config())
    row["minibatch_ot_ms"] = row["scipy_ms"]
    online = online_after_epochs(data, batch, epochs, g)
    calls = iter([torch.randn(batch, dim, generator=g).to(device) for _ in range(repeats)])
    row["online_ms"] = timed(lambda: online.pair(next(calls), x), device, repeats)
    row["online_over_minibatch"] = row["online_ms"] / row["minibatch_ot_ms"]
    minibatch_cost = statistics.mean(
        float(pair_costs(*default.pair(torch.randn(batch, dim, generator=g).to(device), data[i:i + batch])[:2])
              .double().mean()) for i in range(0, len(data), batch))
    row["kept_over_minibatch_w2"] = online.mean_cost / minibatch_cost
    return row


COLUMNS = [("device", "{}"), ("batch", "{}"), ("dim", "{}"), ("independent_ms", "{:.2f}"),
           ("cost_matrix_ms", "{:.2f}"), ("scipy_ms", "{:.1f}"), ("auction_ms", "{:.1f}"),
           ("auction_gap", "{:.1e}"), ("minibatch_ot_ms", "{:.1f}"), ("online_ms", "{:.1f}"),
           ("online_over_minibatch", "{:.2f}"), ("kept_over_minibatch_w2", "{:.3f}")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-batch", type=int, default=8192, help="largest batch size (CPU: 1024 runs in ~1 minute)")
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--epochs", type=int, default=2, help="online coupler passes over its 4-batch data set")
    p.add_argument("--scipy-max-batch", type=int, default=8192, help="largest batch solved by scipy (8192: ~1 min)")
    p.add_argument("--auction-max-batch", type=int, default=2048, help="largest batch for the CUDA auction (2048: ~5 s)")
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
                bench(device, 256, args.dim, 1, 256, 256, g)
            row = bench(device, batch, args.dim, args.epochs, args.scipy_max_batch, args.auction_max_batch, g)
            print("| " + " | ".join(f.format(row[c]) if c in row else "-" for c, f in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    main()
