"""How good a coupler's pairs are, as two numbers (used by tools/bench_couplers.py and the tests).

- :func:`mean_pair_cost`: the mean ||z - x||^2 of the pairs a coupler forms from fresh noise and
  random data batches: the W2^2 cost of its coupling (lower is closer to the global OT plan).
- :func:`consistency`: the share of the data variance that a noise's partner KEEPS across
  batches, ``1 - E_z tr Cov_batches(partner of z) / tr Cov(data)``. A flow map regressed on the
  pairs learns E[partner | z], so 1 means sharp targets (a deterministic coupling) and 0 means
  that the partner is as random as an independent draw (the target is the data mean: mean
  collapse). Exact minibatch OT on MNIST keeps ~0.2 at batch 256.
- :func:`global_ot_cost`: the exact assignment of ``len(data)`` fresh noises to the whole data
  set (the global OT plan of the set; O(N^3), for reference sizes only).
"""
from __future__ import annotations

import torch

from .assignment import assignment_cost, pair_costs, scipy_assignment, squared_distances


def _batch(data: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    return data[torch.randint(0, len(data), (size,), generator=g).to(data.device)]


@torch.no_grad()
def mean_pair_cost(coupler, data: torch.Tensor, batch: int, batches: int, g: torch.Generator) -> float:
    """Mean squared distance of the coupler's pairs over ``batches`` batches of fresh noise."""
    total = 0.0
    for _ in range(batches):
        x = _batch(data, batch, g)
        z, xx, _ = coupler.pair(torch.randn(x.shape, generator=g).to(x.device), x)
        total += float(pair_costs(z, xx).double().mean())
    return total / batches


@torch.no_grad()
def consistency(coupler, data: torch.Tensor, batch: int, probes: int, repeats: int, g: torch.Generator) -> float:
    """1 - (variance of a probe noise's partner across ``repeats`` batches) / (data variance).

    Each repeat pairs a batch made of the same ``probes`` noises plus fresh ones with a fresh
    random data batch; a probe's partner is the data row paired with it."""
    shape = data.shape[1:]
    fixed = torch.randn(probes, *shape, generator=g).to(data.device)
    partners = []
    for _ in range(repeats):
        noise = torch.cat([fixed, torch.randn(batch - probes, *shape, generator=g).to(data.device)])
        z, x, _ = coupler.pair(noise, _batch(data, batch, g))
        where = torch.cdist(fixed.reshape(probes, -1).float(), z.reshape(batch, -1).float()).argmin(1)
        partners.append(x[where].reshape(probes, -1).double())
    spread = torch.stack(partners).var(0).sum(1).mean()
    return float(1.0 - spread / data.reshape(len(data), -1).double().var(0).sum())


@torch.no_grad()
def global_ot_cost(data: torch.Tensor, g: torch.Generator) -> float:
    """Mean squared distance of the exact OT assignment of len(data) fresh noises to all of data."""
    z = torch.randn(data.shape, generator=g).to(data.device)
    cost = squared_distances(z, data)
    return assignment_cost(cost, scipy_assignment(cost)) / len(data)
