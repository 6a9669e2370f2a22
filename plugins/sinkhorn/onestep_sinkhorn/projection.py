"""The barycentric projection of one point cloud onto another through the entropic plan
(W-Flow, arXiv 2605.11755: ``T_{A,B}(a_i) = sum_j pi_ij b_j / sum_j pi_ij``)."""
from __future__ import annotations

from typing import Sequence

import torch

from .solver import SinkhornSolver


class SinkhornBarycentricProjection:
    """Maps every point of ``A`` to the pi-weighted mean of the points of ``B`` it is coupled
    with, pi the entropic OT plan from ``SinkhornSolver``. Batched over a leading dimension;
    zero weights mask padding. Output is float32 of shape ``A``'s."""

    def __init__(self, solver: SinkhornSolver, chunk_rows: int | None = None) -> None:
        self.solver = solver
        self.chunk_rows = chunk_rows

    def __call__(self, a_points: torch.Tensor, b_points: torch.Tensor, a_weights: torch.Tensor | None = None,
                 b_weights: torch.Tensor | None = None) -> torch.Tensor:
        squeeze = a_points.dim() == 2
        result = self.solver.solve(a_points, b_points, a_weights, b_weights)
        with torch.no_grad(), torch.autocast(a_points.device.type, enabled=False):
            b = b_points.detach().unsqueeze(0) if squeeze else b_points.detach()
            t = result.barycentric_projection(b, self.chunk_rows)
        return t[0] if squeeze else t


def project_stacked(solver: SinkhornSolver,
                    problems: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                    stats: dict | None = None) -> list[torch.Tensor]:
    """Barycentric projections ``T_{x,y}(x)`` of many independent problems, in one batched solve
    per (point dimension, reference size) instead of one per problem.

    Each problem is ``(x [G_i, N, d_i], y [G_i, M_i, d_i], b [G_i, M_i] or None)``: ``G_i``
    problems (e.g. one per class and feature location) of ``N`` points (N shared by all) onto
    ``M_i`` weighted reference points (zero weights mask missing points, e.g. empty memory-bank
    slots; None: uniform). Problems of equal ``d`` and ``M`` are concatenated along the batch
    dimension and solved together. Returns the projections ``[G_i, N, d_i]`` (float32) in the
    order given. ``stats`` (a dict), when given, receives the largest iteration count of the
    solves (``iterations``, an int) and their largest marginal violation (``marginal_error``, a
    0-dim device tensor: reading it is left to the caller)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (x, y, _) in enumerate(problems):
        if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
            raise ValueError(f"project_stacked: problem {i}: expected x [G, N, d] and y [G, M, d], "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        groups.setdefault((x.shape[2], y.shape[1]), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(problems)
    for idx in groups.values():
        x_all = torch.cat([problems[i][0].detach().float() for i in idx])
        y_all = torch.cat([problems[i][1].detach().float() for i in idx])
        weights = [problems[i][2] for i in idx]
        b_all = None
        if any(b is not None for b in weights):
            b_all = torch.cat([torch.ones(problems[i][1].shape[:2], device=y_all.device) if b is None else b.float()
                               for i, b in zip(idx, weights)])
        result = solver.solve(x_all, y_all, None, b_all)
        if stats is not None:
            stats["iterations"] = max(stats.get("iterations", 0), result.iterations)
            err = result.marginal_error
            stats["marginal_error"] = err if "marginal_error" not in stats else torch.maximum(stats["marginal_error"], err)
        with torch.no_grad(), torch.autocast(y_all.device.type, enabled=False):
            t = result.barycentric_projection(y_all)
        for i, part in zip(idx, t.split([problems[i][0].shape[0] for i in idx])):
            out[i] = part
    return out  # type: ignore[return-value]
