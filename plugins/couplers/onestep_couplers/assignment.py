"""Exact and near-exact solvers of the square assignment problem behind minibatch OT.

Between two batches of n equally weighted points the optimal transport plan for a cost matrix
C [n, n] is a permutation matrix (Birkhoff-von Neumann), so minibatch OT is the linear
assignment problem  min_sigma sum_i C[sigma(i), i].

Two solvers:

- :func:`scipy_assignment`: scipy's shortest-augmenting-path solver (exact, CPU, O(n^3)).
- :func:`auction_assignment`: Bertsekas' auction algorithm with epsilon-scaling, written with
  batched torch ops so it runs on the GPU (and on the CPU). Every unassigned column bids in
  parallel (the Jacobi variant). At termination epsilon-complementary slackness holds, which
  bounds the total cost by  OPT + n * eps  (Bertsekas 1988, Prop. 1). We pick the final eps as
  ``rel_gap * LB / n`` with LB a lower bound on OPT (the larger of the sums of row and column
  minima), so the returned cost is within a factor ``1 + rel_gap`` of the optimum. We chose the
  auction over entropic Sinkhorn + rounding because its gap is bounded a priori and it returns a
  permutation directly, and over a GPU Hungarian method because its rounds are dense, branch-free
  tensor ops. It is still slower than scipy on the host CPU for hundreds to thousands of points
  in 784 dimensions (many small bidding rounds, each a host sync; the ratio: tools/RESULTS.md,
  "Couplers and Sinkhorn"), so it is opt-in (``solver: auction``), for when the cost matrix must
  not leave the GPU.

Both return ``perm`` with ``perm[j]`` the row matched to column j.
"""
from __future__ import annotations

import numpy as np
import torch


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cost ||a_i - b_j||^2 [N, M] of flattened samples (the quadratic cost of W2)."""
    a = a.reshape(len(a), -1).float()
    b = b.reshape(len(b), -1).float()
    cost = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2.0 * a @ b.T
    return cost.clamp_min_(0.0)


def pair_costs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_i||^2 [N] of row-aligned pairs."""
    return (a.float() - b.float()).reshape(len(a), -1).pow(2).sum(1)


def assignment_cost(cost: torch.Tensor, perm: torch.Tensor) -> float:
    """Total cost sum_j C[perm[j], j] of a matching."""
    return float(cost[perm, torch.arange(cost.shape[1], device=cost.device)].double().sum())


def scipy_assignment(cost: torch.Tensor) -> torch.Tensor:
    """Optimal matching by scipy.optimize.linear_sum_assignment (cost moved to the CPU)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.detach().double().cpu().numpy())
    perm = np.empty(cost.shape[1], dtype=np.int64)
    perm[cols] = rows
    return torch.from_numpy(perm).to(cost.device)


def assignment_lower_bound(cost: torch.Tensor) -> float:
    """max(sum of row minima, sum of column minima) <= optimal assignment cost."""
    return max(float(cost.min(0).values.double().sum()), float(cost.min(1).values.double().sum()))


def auction_assignment(cost: torch.Tensor, rel_gap: float = 1e-4, scale_factor: float = 6.0) -> torch.Tensor:
    """Matching of cost at most ``(1 + rel_gap) * OPT`` by the epsilon-scaling auction.

    Columns (the "bidders") compete for rows (the "objects"); ``price`` holds the row prices.
    eps shrinks by ``scale_factor`` per phase; a new phase keeps the prices and the matches that
    still satisfy eps-complementary slackness and re-auctions the rest. After each phase the
    prices give a dual lower bound on OPT, so the loop stops as soon as the gap is certified
    below ``rel_gap`` (usually well before the a-priori final eps is reached).
    """
    n = cost.shape[0]
    if cost.shape != (n, n):
        raise ValueError(f"auction_assignment: expected a square cost matrix, got {tuple(cost.shape)}")
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=cost.device)
    value = -cost.detach().double().T.contiguous()  # [column, row]: benefit of row for column
    spread = float(value.max() - value.min())
    eps_final = max(rel_gap * assignment_lower_bound(cost) / n, 1e-12 * max(spread, 1e-30))
    eps = max(spread / 4.0, eps_final)
    price = torch.zeros(n, dtype=value.dtype, device=value.device)
    row_of = torch.full((n,), -1, dtype=torch.long, device=value.device)
    columns = torch.arange(n, device=value.device)
    while True:
        _auction_phase(value, price, eps, row_of)
        primal = -float(value[columns, row_of].sum())
        dual = -float(price.sum() + (value - price).max(1).values.sum())
        if eps <= eps_final or primal - dual <= rel_gap * max(dual, 0.0):
            return row_of
        eps = max(eps / scale_factor, eps_final)
        best = (value - price).max(1).values
        row_of[value[columns, row_of] - price[row_of] < best - eps] = -1


def _auction_phase(value: torch.Tensor, price: torch.Tensor, eps: float, row_of: torch.Tensor) -> None:
    """Auction at fixed eps until every column holds a row; updates ``price`` and ``row_of``."""
    n = value.shape[0]
    owner = torch.full((n,), -1, dtype=torch.long, device=value.device)
    held = (row_of >= 0).nonzero().squeeze(1)
    owner[row_of[held]] = held
    bidders = (row_of < 0).nonzero().squeeze(1)
    while bidders.numel():
        net = value[bidders] - price
        top = net.topk(2, dim=1)
        best_row = top.indices[:, 0]
        bid = price[best_row] + (top.values[:, 0] - top.values[:, 1]) + eps
        best_bid = torch.full_like(price, -torch.inf).scatter_reduce(0, best_row, bid, "amax")
        is_top = bid >= best_bid[best_row]
        winner = torch.full_like(owner, -1).scatter_reduce(0, best_row[is_top], bidders[is_top], "amax")
        won = (winner >= 0).nonzero().squeeze(1)
        outbid = owner[won]
        row_of[outbid[outbid >= 0]] = -1
        owner[won] = winner[won]
        row_of[winner[won]] = won
        price[won] = best_bid[won]
        bidders = (row_of < 0).nonzero().squeeze(1)


SOLVERS = {"scipy": scipy_assignment, "auction": auction_assignment}
