"""independent and minibatch-ot through the registry: pairs, plans, classes, errors."""
import pytest
import torch

from onestep.config import structure
from onestep.errors import ConfigError
from onestep_couplers.assignment import assignment_cost, scipy_assignment, squared_distances


def build(registry, name, **fields):
    info = registry.get("coupler", name)
    return info.cls(info.cls.Config(**fields))


def is_row_permutation(out: torch.Tensor, src: torch.Tensor) -> bool:
    a = sorted(map(tuple, out.flatten(1).tolist()))
    return a == sorted(map(tuple, src.flatten(1).tolist()))


def test_couplers_are_registered(registry):
    assert {"independent", "minibatch-ot", "online"} <= set(registry.names("coupler"))


def test_minibatch_ot_pairs_at_the_exact_optimum(registry):
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(128, 1, 3, 3, generator=g), torch.randn(128, 1, 3, 3, generator=g) * 2 + 1
    for solver in ("scipy", "auction"):
        zz, xx, yy = build(registry, "minibatch-ot", solver=solver).pair(z, x)
        assert yy is None and torch.equal(xx, x) and is_row_permutation(zz, z)
        cost = squared_distances(z, x)
        optimum = assignment_cost(cost, scipy_assignment(cost))
        got = float((zz - xx).pow(2).flatten(1).sum(1).double().sum())
        assert got == pytest.approx(optimum, rel=1e-4)
        independent = float((z - x).pow(2).flatten(1).sum(1).sum())
        assert got < 0.8 * independent


def test_labelled_pairs_stay_within_classes_and_are_optimal_per_class(registry):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(90, 2, generator=g)
    y = torch.randint(0, 3, (90,), generator=g)
    z = torch.randn(90, 2, generator=g)
    zz, xx, yy = build(registry, "minibatch-ot").pair(z, x, y)
    assert torch.equal(yy, y) and torch.equal(xx, x) and is_row_permutation(zz, z)
    for c in range(3):
        rows = (y == c).nonzero().squeeze(1)
        cost = squared_distances(z[rows], x[rows])
        got = float((zz[rows] - x[rows]).pow(2).sum(1).double().sum())
        # the noise rows a class receives are the noise rows at that class's positions
        assert is_row_permutation(zz[rows], z[rows])
        assert got == pytest.approx(assignment_cost(cost, scipy_assignment(cost)), rel=1e-6)


def test_plans(registry):
    g = torch.Generator().manual_seed(2)
    z, x = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    p = build(registry, "minibatch-ot").plan(z, x)
    torch.testing.assert_close(p.sum(1), torch.full((16,), 1 / 16))
    torch.testing.assert_close(p.sum(0), torch.full((16,), 1 / 16))
    assert int((p > 0).sum()) == 16
    cost = squared_distances(z, x)
    assert float((p * cost).sum() * 16) == pytest.approx(assignment_cost(cost, scipy_assignment(cost)), rel=1e-5)
    q = build(registry, "independent").plan(z, x[:8])
    torch.testing.assert_close(q, torch.full((16, 8), 1 / 128))


def test_independent_keeps_the_rows(registry):
    z, x, y = torch.randn(8, 2), torch.randn(8, 2), torch.arange(8) % 2
    zz, xx, yy = build(registry, "independent").pair(z, x, y)
    assert torch.equal(zz, z) and torch.equal(xx, x) and torch.equal(yy, y)


def test_bad_config_and_inputs_name_the_field(registry):
    Config = registry.get("coupler", "minibatch-ot").cls.Config
    with pytest.raises(ConfigError, match="^coupler.solver: expected one of scipy, auction, got 'hungarian'$"):
        structure({"solver": "hungarian"}, Config, "coupler")
    with pytest.raises(ConfigError, match="^coupler.auction_gap: expected > 0, got 0.0$"):
        structure({"auction_gap": 0.0}, Config, "coupler")
    with pytest.raises(ValueError, match="coupler 'minibatch-ot': noise .* must have one shape"):
        build(registry, "minibatch-ot").pair(torch.randn(4, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="labels y must have shape"):
        build(registry, "minibatch-ot").pair(torch.randn(4, 2), torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
