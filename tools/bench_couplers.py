"""Coupling cost per batch: independent vs exact minibatch OT (scipy; the opt-in auction on CUDA)
vs the online coupler vs entropic OT (sinkhorn) vs semi-discrete OT (the global map onto a training
set of --points samples), for batch sizes 256..8192, on every device available; then the quality
of each coupler's pairs on one data set (W2 against exact minibatch OT and the global OT plan,
consistency across batches).

    python tools/bench_couplers.py                      # CPU (and CUDA when present), up to 8192 (minutes)
    python tools/bench_couplers.py --devices cpu --max-batch 512 --points 4096 --quality-points 1024  # ~2 min CPU
    # GPU (the issue-15 table, ~2 minutes on one H200):
    python tools/bench_couplers.py --devices cuda --max-batch 8192 --scipy-max-batch 4096 --auction-max-batch 0 --points 60000 --quality-points 4096

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
- ``sinkhorn_ms``: the entropic coupler (plugins/sinkhorn, argmax assignment, epsilon 0.05) at this batch;
- ``semidiscrete_ms``: one ``pair`` of ``semidiscrete-ot`` (B noises against all --points training
  samples: a [B, N] matrix product and an argmax, plus its refinement step), fitted once before
  (``fit_s`` in the header line); ``semidiscrete_over_minibatch``: its time over the baseline's;
- ``in_cell_ms``: the same with the in-cell extension (``coupler.in_cell``, --in-cell; the OT-NFM
  latent preset's coupler): the assignment plus a gather of the cell means and one add.

Second table (``--quality-points`` samples of the same mixture, the couplers' training set): per
coupler the mean squared distance of its pairs over the exact global OT assignment of as many
fresh noises to the whole set (``w2_over_global``, >= ~1) and over exact minibatch OT's at batch
256 (``w2_over_minibatch256``), and ``consistency``: the share of the data variance that a fixed
noise's partner keeps across batches (1: a deterministic coupling; the regression target of a flow
map is then sharp; exact minibatch OT keeps ~0.2 on MNIST at batch 256).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import attrs
import torch

from onestep.compare.speed import median_ms
from onestep_couplers.assignment import pair_costs, squared_distances
from onestep_couplers.couplers import Independent, MinibatchOT
from onestep_couplers.diagnostics import consistency, global_ot_cost, mean_pair_cost
from onestep_couplers.online import OnlineOT
from onestep_couplers.semidiscrete import SemiDiscreteOT
from onestep_sinkhorn.coupler import SinkhornCoupler

SIZES = (256, 512, 1024, 2048, 4096, 8192)


def mixture(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    centres = torch.randn(10, dim, generator=g) * 0.5
    return centres[torch.randint(0, 10, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)


def online_after_epochs(data: torch.Tensor, batch: int, epochs: int, g: torch.Generator) -> OnlineOT:
    coupler = OnlineOT(OnlineOT.Config())
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g).to(data.device)
        for i in range(0, len(data), batch):
            rows = order[i:i + batch]
            coupler.pair(torch.randn(len(rows), data.shape[1], generator=g).to(data.device), data[rows])
    return coupler


def semidiscrete(points: torch.Tensor, g: torch.Generator, fit_steps: int) -> tuple[SemiDiscreteOT, float]:
    """The coupler fitted to ``points`` (unlabelled) and the seconds the fit took."""
    coupler = SemiDiscreteOT(SemiDiscreteOT.Config(per_class=False))
    coupler.set_points(points, None)
    start = time.perf_counter()
    coupler.fit(fit_steps, g)
    if points.device.type == "cuda":
        torch.cuda.synchronize(points.device)
    return coupler, time.perf_counter() - start


def with_cell_means(fitted: SemiDiscreteOT, in_cell: float, draws: int, g: torch.Generator) -> SemiDiscreteOT:
    """A copy of ``fitted`` (same potentials, no refit) with the in-cell extension ``in_cell`` and
    its cell means from ``draws`` noises per cell."""
    coupler = copy.deepcopy(fitted)
    coupler.config = attrs.evolve(fitted.config, in_cell=in_cell, cell_draws=draws)
    coupler.estimate_cell_means(draws, g)
    return coupler


def sinkhorn() -> SinkhornCoupler:
    return SinkhornCoupler(SinkhornCoupler.Config(assignment="argmax"))


def bench(device: torch.device, batch: int, dim: int, epochs: int, scipy_max: int, auction_max: int,
          g: torch.Generator, sd: SemiDiscreteOT, sinkhorn_max: int, sd_cell: SemiDiscreteOT | None = None) -> dict:
    data = mixture(4 * batch, dim, g).to(device)
    x = data[:batch]
    z = torch.randn(batch, dim, generator=g).to(device)
    repeats = 3 if batch <= 2048 else 1
    row = {"device": device.type, "batch": batch, "dim": dim,
           "independent_ms": median_ms(lambda: Independent(Independent.Config()).pair(z, x), repeats, device, warmup=0),
           "cost_matrix_ms": median_ms(lambda: squared_distances(z, x), repeats, device, warmup=0)}
    calls = iter([torch.randn(batch, dim, generator=g).to(device) for _ in range(repeats)])
    row["semidiscrete_ms"] = median_ms(lambda: sd.pair(next(calls), x), repeats, device, warmup=0)
    if sd_cell is not None:
        calls = iter([torch.randn(batch, dim, generator=g).to(device) for _ in range(repeats)])
        row["in_cell_ms"] = median_ms(lambda: sd_cell.pair(next(calls), x), repeats, device, warmup=0)
    if batch <= sinkhorn_max:
        row["sinkhorn_ms"] = median_ms(lambda: sinkhorn().pair(z, x), repeats, device, warmup=0)
    exact = None
    if batch <= scipy_max:
        paired = []
        scipy_ot = MinibatchOT(MinibatchOT.Config(solver="scipy"))
        row["scipy_ms"] = median_ms(lambda: paired.append(scipy_ot.pair(z, x)[0]), repeats, device, warmup=0)
        exact = float(pair_costs(paired[-1], x).double().sum())
    if device.type == "cuda" and batch <= auction_max:
        paired = []
        auction_ot = MinibatchOT(MinibatchOT.Config(solver="auction"))
        row["auction_ms"] = median_ms(lambda: paired.append(auction_ot.pair(z, x)[0]), repeats, device, warmup=0)
        if exact is not None:
            row["auction_gap"] = float(pair_costs(paired[-1], x).double().sum()) / exact - 1
    if exact is None:
        return row
    default = MinibatchOT(MinibatchOT.Config())
    row["minibatch_ot_ms"] = row["scipy_ms"]
    row["semidiscrete_over_minibatch"] = row["semidiscrete_ms"] / row["minibatch_ot_ms"]
    online = online_after_epochs(data, batch, epochs, g)
    calls = iter([torch.randn(batch, dim, generator=g).to(device) for _ in range(repeats)])
    row["online_ms"] = median_ms(lambda: online.pair(next(calls), x), repeats, device, warmup=0)
    row["online_over_minibatch"] = row["online_ms"] / row["minibatch_ot_ms"]
    minibatch_cost = statistics.mean(
        float(pair_costs(*default.pair(torch.randn(batch, dim, generator=g).to(device), data[i:i + batch])[:2])
              .double().mean()) for i in range(0, len(data), batch))
    row["kept_over_minibatch_w2"] = online.mean_cost / minibatch_cost
    return row


COLUMNS = [("device", "{}"), ("batch", "{}"), ("dim", "{}"), ("independent_ms", "{:.2f}"),
           ("cost_matrix_ms", "{:.2f}"), ("scipy_ms", "{:.1f}"), ("auction_ms", "{:.1f}"),
           ("auction_gap", "{:.1e}"), ("minibatch_ot_ms", "{:.1f}"), ("online_ms", "{:.1f}"),
           ("online_over_minibatch", "{:.2f}"), ("kept_over_minibatch_w2", "{:.3f}"), ("sinkhorn_ms", "{:.1f}"),
           ("semidiscrete_ms", "{:.2f}"), ("semidiscrete_over_minibatch", "{:.4f}"), ("in_cell_ms", "{:.2f}")]
QUALITY_COLUMNS = [("device", "{}"), ("coupler", "{}"), ("batch", "{}"), ("w2_over_global", "{:.4f}"),
                   ("w2_over_minibatch256", "{:.4f}"), ("consistency", "{:.3f}")]


def quality(device: torch.device, n: int, dim: int, fit_steps: int, scipy_max: int, sinkhorn_max: int,
            g: torch.Generator, in_cell: float = 0.0) -> list[dict]:
    """W2 of each coupler's pairs against the global OT plan and minibatch OT at 256, and their consistency."""
    data = mixture(n, dim, g).to(device)
    glob = global_ot_cost(data, g)
    batches = max(2, min(8, n // 256))
    reference = mean_pair_cost(MinibatchOT(MinibatchOT.Config()), data, 256, batches, g)
    online = online_after_epochs(data, 256, 4, g)
    sd, _ = semidiscrete(data, g, fit_steps)
    candidates = [("minibatch-ot", MinibatchOT(MinibatchOT.Config()), b) for b in (256, 1024, 4096) if b <= min(n, scipy_max)]
    candidates += [("sinkhorn (argmax)", sinkhorn(), b) for b in (1024, 4096) if b <= min(n, sinkhorn_max)]
    candidates += [("online (4 epochs)", online, 256), ("semidiscrete-ot", sd, 256)]
    if in_cell > 0:
        sd_cell = with_cell_means(sd, in_cell, 32, g)
        candidates.append((f"semidiscrete-ot, in_cell {in_cell:g}", sd_cell, 256))
    rows = []
    for name, coupler, batch in candidates:
        cost = mean_pair_cost(coupler, data, batch, max(1, min(batches, n // batch)), g)
        rows.append({"device": device.type, "coupler": name, "batch": batch, "w2_over_global": cost / glob,
                     "w2_over_minibatch256": cost / reference,
                     "consistency": consistency(coupler, data, batch, 32, 6 if batch < 4096 else 4, g)})
    return rows


def header(columns) -> None:
    print("| " + " | ".join(c for c, _ in columns) + " |")
    print("|" + "---|" * len(columns))


def line(columns, row: dict) -> None:
    print("| " + " | ".join(f.format(row[c]) if c in row else "-" for c, f in columns) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-batch", type=int, default=8192, help="largest batch size (CPU: 1024 runs in ~1 minute)")
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--epochs", type=int, default=2, help="online coupler passes over its 4-batch data set")
    p.add_argument("--scipy-max-batch", type=int, default=8192, help="largest batch solved by scipy (8192: ~1 min)")
    p.add_argument("--auction-max-batch", type=int, default=2048, help="largest batch for the CUDA auction (2048: ~5 s)")
    p.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu and cuda if present")
    p.add_argument("--points", type=int, default=60000, help="training-set size of semidiscrete-ot in the timing table")
    p.add_argument("--in-cell", type=float, default=0.2, help="kappa of the in-cell rows (0: none)")
    p.add_argument("--fit-steps", type=int, default=300, help="semidiscrete-ot fitting steps (its default)")
    p.add_argument("--sinkhorn-max-batch", type=int, default=4096, help="largest batch for the sinkhorn coupler")
    p.add_argument("--quality-points", type=int, default=4096,
                   help="data-set size of the pair-quality table (its global OT is one exact assignment of this size)")
    args = p.parse_args()
    devices = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    devices = [torch.device(d) for d in devices if d != "cuda" or torch.cuda.is_available()]
    g = torch.Generator().manual_seed(0)
    for device in devices:
        points = mixture(args.points, args.dim, g).to(device)
        sd, fit_s = semidiscrete(points, g, args.fit_steps)
        sd_cell = with_cell_means(sd, args.in_cell, 4, g) if args.in_cell > 0 else None
        print(f"{device.type}: semidiscrete-ot fitted to {args.points} points x {args.dim} dims in {fit_s:.1f} s "
              f"({args.fit_steps} steps of {sd.config.fit_batch} noises)", flush=True)
        header(COLUMNS)
        for batch in (b for b in SIZES if b <= args.max_batch):
            if device.type == "cuda":  # warm-up: kernels and allocator
                bench(device, 256, args.dim, 1, 256, 256, g, sd, 256)
            line(COLUMNS, bench(device, batch, args.dim, args.epochs, args.scipy_max_batch, args.auction_max_batch, g,
                                sd, args.sinkhorn_max_batch, sd_cell))
        print()
        header(QUALITY_COLUMNS)
        for row in quality(device, args.quality_points, args.dim, args.fit_steps, args.scipy_max_batch,
                           args.sinkhorn_max_batch, g, args.in_cell):
            line(QUALITY_COLUMNS, row)


if __name__ == "__main__":
    main()
