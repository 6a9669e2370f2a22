"""Couplers that pair a noise batch with a data batch by a permutation of the noise rows.

:class:`PermutationCoupler` is the base: ``pair`` reorders the noise by ``match`` (the one
method a variant overrides) and ``plan`` shows the coupling as a matrix. Data rows never move,
so labels stay aligned; with labelled data every match is solved within each class (the
coupling of class-conditional generation is a coupling per class).

- ``independent``: the identity match; the batch is a draw from the product measure.
- ``minibatch-ot``: the exact W2 assignment of each batch (Tong et al. 2024, OT-CFM; the
  "minibatch OT" coupling of OT-NFM, arXiv 2604.06413).
"""
from __future__ import annotations

import attrs
import torch

from onestep.config import POSITIVE, one_of
from onestep.interfaces import Coupler

from .assignment import SOLVERS, pair_costs, squared_distances

SOLVER_CHOICES = tuple(SOLVERS)


@attrs.define
class NoConfig:
    pass


@attrs.define
class MinibatchOTConfig:
    solver: str = attrs.field(default="scipy", validator=one_of(SOLVER_CHOICES))
    """scipy (exact, CPU) | auction (GPU-resident, within auction_gap; slower: tools/RESULTS.md)"""
    auction_gap: float = attrs.field(default=1e-4, validator=POSITIVE)
    """auction: certified bound on (cost - optimum) / optimum"""


class PermutationCoupler(Coupler):
    """Base: ``match(noise, data, y) -> perm`` with ``noise[perm[j]]`` coupled to ``data[j]``."""

    def pair(self, noise, data, y=None):
        _check_batches(self.name, noise, data, y)
        return noise[self.match(noise, data, y)], data, y

    def match(self, noise: torch.Tensor, data: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def plan(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The batch coupling [N, N] of ``a`` (noise) and ``b`` (data): a permutation / N."""
        _check_batches(self.name, a, b, None)
        n = len(b)
        p = torch.zeros(n, n, device=b.device)
        p[self.match(a, b, None), torch.arange(n, device=b.device)] = 1.0 / n
        return p


class Independent(PermutationCoupler):
    """Independent pairs: row i of the noise with row i of the data (flow matching's default)."""

    name = "independent"
    Config = NoConfig

    def match(self, noise, data, y):
        return torch.arange(len(data), device=data.device)

    def plan(self, a, b):
        """The product coupling 1 / (N M) that independent row pairs sample from."""
        return torch.full((len(a), len(b)), 1.0 / (len(a) * len(b)), device=b.device)


class MinibatchOT(PermutationCoupler):
    """Exact W2 optimal transport within each batch (within each class for labelled data)."""

    name = "minibatch-ot"
    Config = MinibatchOTConfig

    def __init__(self, config) -> None:
        super().__init__(config)

    def match(self, noise, data, y):
        perm = torch.empty(len(data), dtype=torch.long, device=data.device)
        for rows in class_groups(y, len(data), data.device):
            perm[rows] = rows[self.solve(squared_distances(noise[rows], data[rows]))]
        return perm

    def solve(self, cost: torch.Tensor) -> torch.Tensor:
        """``perm`` minimising sum_j cost[perm[j], j] with the configured solver."""
        if self.config.solver == "auction":
            return SOLVERS["auction"](cost, self.config.auction_gap)
        return SOLVERS["scipy"](cost)

    def batch_cost(self, noise: torch.Tensor, data: torch.Tensor, y: torch.Tensor | None = None) -> float:
        """Mean squared distance of the pairs this coupler forms (for benchmarks and logs)."""
        z, x, _ = self.pair(noise, data, y)
        return float(pair_costs(z, x).double().mean())


def class_groups(y: torch.Tensor | None, n: int, device: torch.device) -> list[torch.Tensor]:
    """Row indices per class (one group of all rows when unlabelled)."""
    if y is None:
        return [torch.arange(n, device=device)]
    return [(y == c).nonzero().squeeze(1) for c in torch.unique(y)]


def _check_batches(name: str, noise: torch.Tensor, data: torch.Tensor, y: torch.Tensor | None) -> None:
    if noise.shape != data.shape:
        raise ValueError(f"coupler {name!r}: noise {tuple(noise.shape)} and data {tuple(data.shape)} must have one shape")
    if y is not None and y.shape != (len(data),):
        raise ValueError(f"coupler {name!r}: labels y must have shape [{len(data)}], got {tuple(y.shape)}")
