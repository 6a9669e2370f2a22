"""The ``sinkhorn`` coupler: pairs noise with data through the entropic OT plan (the
``method="sinkhorn"`` plan sampler of OT-CFM, Tong et al. 2024, with our log-domain solver)."""
from __future__ import annotations

import attrs
import torch

from onestep.errors import ConfigError
from onestep.interfaces import Coupler

from .solver import SinkhornSolver, squared_cost


@attrs.define
class SinkhornCouplerConfig:
    epsilon: float = 0.05  # temperature as a fraction of the batch's mean cost |z - x|^2 / 2
    scaling: float = 0.9  # blur ratio per annealing step (epsilon shrinks by scaling**2)
    max_iters: int = 500  # iterations at the target temperature
    tol: float = 1e-3  # stop when max |log(row marginal / a)| < tol
    assignment: str = "sample"  # sample: draw x_j ~ pi(i, .) per noise row; argmax: the heaviest x_j


ASSIGNMENTS = ("sample", "argmax")


class SinkhornCoupler(Coupler):
    """Entropic-OT coupling of a noise batch with a data batch; ``plan`` exposes pi."""

    name = "sinkhorn"
    Config = SinkhornCouplerConfig

    def __init__(self, config: SinkhornCouplerConfig) -> None:
        super().__init__(config)
        if config.epsilon <= 0:
            raise ConfigError(f"coupler.epsilon: expected > 0, got {config.epsilon}")
        if config.assignment not in ASSIGNMENTS:
            raise ConfigError(f"coupler.assignment: expected one of {', '.join(ASSIGNMENTS)}, got {config.assignment!r}")
        if not 0 < config.scaling < 1:
            raise ConfigError(f"coupler.scaling: expected in (0, 1), got {config.scaling}")

    def _solve(self, a: torch.Tensor, b: torch.Tensor):
        x = a.detach().reshape(1, len(a), -1).float()
        y = b.detach().reshape(1, len(b), -1).float().to(x.device)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            cost = squared_cost(x, y)
            eps = self.config.epsilon * float(cost.mean())
        solver = SinkhornSolver(max(eps, 1e-12), self.config.scaling, self.config.max_iters, self.config.tol)
        return solver.solve(x, y, cost=cost)

    def plan(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The entropic plan [N, M] between the flattened batches (rows sum to 1/N)."""
        return self._solve(a, b).plan()[0]

    def pair(self, noise, data, y=None):
        log_pi = self._solve(noise, data).log_plan()[0]
        if self.config.assignment == "argmax":
            j = log_pi.argmax(1)
        else:
            j = torch.multinomial(torch.softmax(log_pi, 1), 1).squeeze(1)
        j = j.to(data.device)
        return noise, data[j], (y[j] if y is not None else None)
