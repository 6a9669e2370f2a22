"""The barycentric projection of one point cloud onto another through the entropic plan
(W-Flow, arXiv 2605.11755: ``T_{A,B}(a_i) = sum_j pi_ij b_j / sum_j pi_ij``)."""
from __future__ import annotations

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
