"""Benchmark: onestep_sinkhorn's barycentric projection against geomloss (tensorized backend) in
the same run, with the floor it is measured against. The W-Flow training step (feature space,
per-location plans) is tools/bench_wflow_step.py's.

    python tools/bench_sinkhorn.py                # N = M = 4096, D = 4096 (GPU)
    python tools/bench_sinkhorn.py --small        # N = M = 256, D = 64: a quick check, CPU ok

Same problem for both: cost |x - y|^2 / 2, eps = epsilon_per_element * D (W-Flow's default
temperature), geomloss ``blur = sqrt(eps)`` and the same ``scaling``. geomloss runs its own
epsilon schedule (``len(eps_list)`` iterations, one of them at the target); ours is given the
same total number of iterations (``tol = 0``: no early stop). Errors are measured against a
converged float64-checked reference (ours with a tight tolerance) and printed next to times.

Floor = cost GEMM + iterations x (row logsumexp pass + column logsumexp pass), each pass timed
alone as one fused (compiled) reduction over the N x M cost: the time any log-domain Sinkhorn
needs to read the cost twice per iteration. The column pass is the cheaper of a strided
reduction over C and a row reduction over a transposed copy of C (plus the copy, once).
"""
from __future__ import annotations

import argparse
import math

import torch
from onestep.compare.speed import median_ms

from onestep_sinkhorn import SinkhornSolver, squared_cost


def geomloss_iterations(x, y, blur, scaling) -> int:
    try:
        from geomloss.sinkhorn_divergence import epsilon_schedule, max_diameter
    except ImportError:  # geomloss >= 0.3.1 keeps SamplesLoss's helpers here
        from geomloss._legacy.sinkhorn_divergence import epsilon_schedule, max_diameter

    diameter = max_diameter(x.view(-1, x.shape[-1]), y.view(-1, y.shape[-1]))
    return len(epsilon_schedule(2, diameter, blur, scaling)) + 1  # + the final extrapolation


def geomloss_potentials(x, y, blur, scaling):
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=False, potentials=True,
                       backend="tensorized")
    return loss(x, y)


def projection_from_g(x, y, g, eps):
    """T(x_i) = softmax_j((g_j - C_ij) / eps) @ y (uniform weights), the plan's row-normalised mean."""
    c = squared_cost(x[None], y[None])[0]
    return torch.softmax((g.view(1, -1) - c) / eps, dim=1) @ y


def make_clouds(n, d, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    centres = torch.randn(16, d, generator=g) * 0.8
    data = centres[torch.randint(0, 16, (n,), generator=g)] + 0.6 * torch.randn(n, d, generator=g)
    particles = 0.9 * torch.randn(n, d, generator=g) + 0.1
    return particles.to(device), data.to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="N = M = 256, D = 64 (quick check, CPU ok)")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--epsilon", type=float, default=0.05, help="temperature per data element (W-Flow's default)")
    ap.add_argument("--scaling", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true", help="run our inner loop eagerly")
    args = ap.parse_args()
    if args.small:
        args.n, args.d = 256, 64
    device = torch.device(args.device)
    n, d = args.n, args.d
    eps = args.epsilon * d
    blur = math.sqrt(eps)
    compile_loop = False if args.no_compile else None
    x, y = make_clouds(n, d, device)
    iters = geomloss_iterations(x, y, blur, args.scaling)
    rows: list[tuple[str, float, str]] = []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={name} torch={torch.__version__} N=M={n} D={d} eps={eps:g} (blur {blur:.3g}) "
          f"scaling={args.scaling} geomloss iterations={iters}")

    # ---------------------------------------------------------------- floor
    xb, yb = x[None], y[None]
    gemm_ms = median_ms(lambda: squared_cost(xb, yb), args.repeats, device)
    cost = squared_cost(xb, yb)
    h_col, h_row = torch.zeros(1, n, device=device), torch.zeros(1, n, device=device)
    row_pass = lambda c, h: torch.logsumexp(h.unsqueeze(1) - c * (1 / eps), dim=2)  # noqa: E731
    col_pass = lambda c, h: torch.logsumexp(h.unsqueeze(2) - c * (1 / eps), dim=1)  # noqa: E731
    if device.type == "cuda":
        row_pass, col_pass = torch.compile(row_pass), torch.compile(col_pass)
    row_ms = median_ms(lambda: row_pass(cost, h_row), args.repeats, device)
    col_ms = median_ms(lambda: col_pass(cost, h_col), args.repeats, device)
    transpose_ms = median_ms(lambda: cost.transpose(1, 2).contiguous(), args.repeats, device)
    floor_ms = gemm_ms + min(iters * (row_ms + col_ms), transpose_ms + iters * 2 * row_ms)
    rows.append(("cost GEMM fp32 (squared_cost)", gemm_ms, ""))
    rows.append(("one row + one column logsumexp pass", row_ms + col_ms, f"row {row_ms:.3f} col {col_ms:.3f}"))
    rows.append(("transposed copy of the cost", transpose_ms, ""))
    rows.append((f"floor: GEMM + {iters} x (row + col pass), col read from C or from a copy of C^T", floor_ms, ""))

    # ---------------------------------------------------------------- projection
    reference = SinkhornSolver(eps, args.scaling, max_iters=5000, tol=1e-4, compile=compile_loop).solve(x, y)
    t_ref = reference.barycentric_projection(yb)[0]
    move = float((t_ref - x).norm(dim=1).mean())

    def error(t):
        return float((t - t_ref).norm(dim=1).mean()) / move

    results = {}
    for precision in ("fp32", "tf32", "bf16"):
        if precision != "fp32" and device.type != "cuda":
            continue
        solver = SinkhornSolver(eps, args.scaling, max_iters=1, tol=0.0, check_every=1, compile=compile_loop,
                                precision=precision)
        anneal = len(solver.schedule(float(cost.amax())))
        solver.max_iters = max(1, iters - anneal)

        def ours(solver=solver):
            return solver.solve(x, y).barycentric_projection(yb)[0]

        try:
            ms = median_ms(ours, args.repeats, device)
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            rows.append((f"ours projection ({precision} GEMM)", float("nan"), f"failed: {str(exc).splitlines()[0][:80]}"))
            continue
        results[precision] = ms
        res = solver.solve(x, y)
        rows.append((f"ours projection ({precision} GEMM, {res.iterations} it)", ms,
                     f"err {error(ours()):.2e} floor x{ms / floor_ms:.2f}"))

    def geomloss_projection():
        f, g = geomloss_potentials(x, y, blur, args.scaling)
        return projection_from_g(x, y, g.view(-1), eps)

    geo_ms = median_ms(geomloss_projection, args.repeats, device)
    rows.append((f"geomloss tensorized projection ({iters} it)", geo_ms, f"err {error(geomloss_projection()):.2e}"))
    rows.append(("speed-up ours fp32 vs geomloss", geo_ms / results["fp32"], ""))

    print()
    print("| what | ms (or ratio) | notes |")
    print("|---|---|---|")
    for what, value, note in rows:
        unit = f"{value:.2f}x" if what.startswith("speed-up") else f"{value:.3f}"
        print(f"| {what} | {unit} | {note} |")
    print()
    print(f"projection ratio to floor (fp32): {results['fp32'] / floor_ms:.2f}; "
          f"speed-up vs geomloss: {geo_ms / results['fp32']:.2f}x")


if __name__ == "__main__":
    main()
