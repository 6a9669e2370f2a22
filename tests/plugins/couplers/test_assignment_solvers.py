"""The exact (scipy) and GPU-path (auction) assignment solvers against brute force and each other."""
import itertools

import pytest
import torch

from onestep_couplers.assignment import (assignment_cost, assignment_lower_bound, auction_assignment,
                                         scipy_assignment, squared_distances)


def brute_force_cost(cost: torch.Tensor) -> float:
    n = cost.shape[0]
    cols = torch.arange(n)
    return min(float(cost[list(p), cols].double().sum()) for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_both_solvers_reach_the_brute_force_optimum(n):
    g = torch.Generator().manual_seed(n)
    for trial in range(5):
        a, b = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) + 0.5
        cost = squared_distances(a, b)
        best = brute_force_cost(cost)
        assert assignment_cost(cost, scipy_assignment(cost)) == pytest.approx(best, rel=1e-9, abs=1e-9)
        assert assignment_cost(cost, auction_assignment(cost)) == pytest.approx(best, rel=1e-4, abs=1e-9)


def test_squared_distances_match_cdist():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(9, 1, 4, 4, generator=g), torch.randn(11, 1, 4, 4, generator=g)
    ref = torch.cdist(a.flatten(1).double(), b.flatten(1).double()) ** 2
    torch.testing.assert_close(squared_distances(a, b).double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,dim", [(64, 2), (120, 2), (120, 64)])
def test_auction_is_a_permutation_within_its_certified_gap(n, dim):
    g = torch.Generator().manual_seed(n + dim)
    cost = squared_distances(torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g) * 2 + 1)
    exact = assignment_cost(cost, scipy_assignment(cost))
    for gap in (1e-2, 1e-4):
        perm = auction_assignment(cost, rel_gap=gap)
        assert sorted(perm.tolist()) == list(range(n))
        got = assignment_cost(cost, perm)
        assert exact - 1e-6 * exact <= got <= exact * (1 + gap)


def test_auction_is_exact_on_integer_costs_with_ties():
    """Integer costs with many ties (duplicated points): the gap bound is below 1, so the
    auction must return the optimum exactly."""
    g = torch.Generator().manual_seed(3)
    pts = torch.randint(0, 4, (40, 2), generator=g).float()
    cost = squared_distances(pts[torch.randperm(40, generator=g)], pts.flip(0) + 1)
    exact = assignment_cost(cost, scipy_assignment(cost))
    assert assignment_cost(cost, auction_assignment(cost, rel_gap=0.5 / exact)) == exact


def test_lower_bound_is_below_the_optimum():
    g = torch.Generator().manual_seed(1)
    cost = squared_distances(torch.randn(50, 5, generator=g), torch.randn(50, 5, generator=g))
    assert assignment_lower_bound(cost) <= assignment_cost(cost, scipy_assignment(cost)) + 1e-9


def test_auction_rejects_a_rectangular_cost():
    with pytest.raises(ValueError, match="square"):
        auction_assignment(torch.rand(3, 4))
