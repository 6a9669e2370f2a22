"""The ``sinkhorn`` coupler: pairs noise with data through the entropic OT plan (the
``method="sinkhorn"`` plan sampler of OT-CFM, Tong et al. 2024, with our log-domain solver)."""
from __future__ import annotations

import attrs
import torch

from onestep.config import POSITIVE, check, one_of
from onestep.interfaces import Coupler

from .groups import Groups
from .solver import SinkhornSolver, squared_cost


ASSIGNMENTS = ("sample", "argmax")


@attrs.define
class SinkhornCouplerConfig:
    epsilon: float = attrs.field(default=0.05, validator=POSITIVE)
    """temperature as a fraction of the batch's mean cost |z - x|^2 / 2"""
    scaling: float = attrs.field(default=0.9, validator=check(lambda v: 0 < v < 1, "in (0, 1)"))
    """blur ratio per annealing step (epsilon shrinks by scaling**2)"""
    max_iters: int = 500  # iterations at the target temperature
    tol: float = 1e-3  # stop when max |log(row marginal / a)| < tol
    assignment: str = attrs.field(default="sample", validator=one_of(ASSIGNMENTS))
    """sample: draw x_j ~ pi(i, .) per noise row; argmax: the heaviest x_j"""




class SinkhornCoupler(Coupler):
    """Entropic-OT coupling of a noise batch with a data batch; ``plan`` exposes pi."""

    name = "sinkhorn"
    Config = SinkhornCouplerConfig

    def __init__(self, config: SinkhornCouplerConfig) -> None:
        super().__init__(config)

    def _solve(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None):
        """Entropic OT between ``x`` [G, N, d] and ``y`` [G, M, d] (weights ``w`` [G, N] on both
        sides when given, zeros masking padding); the temperature is ``epsilon`` times the mean
        cost over the pairs the weights allow."""
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            cost = squared_cost(x, y)
            pair_w = torch.ones_like(cost) if w is None else w.unsqueeze(2) * w.unsqueeze(1)
            eps = self.config.epsilon * float((cost * pair_w).sum() / pair_w.sum())
        solver = SinkhornSolver(max(eps, 1e-12), self.config.scaling, self.config.max_iters, self.config.tol)
        return solver.solve(x, y, w, w, cost=cost)

    def plan(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The entropic plan [N, M] between the flattened batches (rows sum to 1/N, columns to 1/M)."""
        x, y = a.detach().flatten(1).float(), b.detach().flatten(1).float().to(a.device)
        return self._solve(x[None], y[None]).plan()[0]

    def pair(self, noise, data, y=None):
        """Row i of the noise gets a data row drawn from pi(i, .) (or its heaviest entry), within
        row i's class for labelled data: the noise rows at a class's positions are coupled with
        that class's data, so the labels stay in place."""
        n = len(data)
        groups = Groups.by_label(y.to(noise.device)) if y is not None else Groups.single(n, noise.device)
        x = groups.gather(noise.detach().flatten(1).float())
        d = groups.gather(data.detach().flatten(1).float().to(noise.device))
        log_pi = self._solve(x, d, groups.weights).log_plan()[groups.mask]  # [n, L], masked columns -inf
        if self.config.assignment == "argmax":
            slot = log_pi.argmax(1)
        else:
            slot = torch.multinomial(torch.softmax(log_pi, 1), 1).squeeze(1)
        group = torch.arange(len(groups.labels), device=slot.device).unsqueeze(1).expand_as(groups.mask)[groups.mask]
        perm = torch.empty(n, dtype=torch.long, device=slot.device)
        perm[groups.index[groups.mask]] = groups.index[group, slot]
        perm = perm.to(data.device)
        return noise, data[perm], (y[perm] if y is not None else None)
