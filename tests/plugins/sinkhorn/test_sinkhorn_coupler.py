"""The ``sinkhorn`` coupler through the registry: a valid entropic plan, pairs that shorten
noise-to-data distances, classes kept in place, and errors naming the field."""
import pytest
import torch

from onestep.config import structure
from onestep.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")


def build(registry, **fields):
    info = registry.get("coupler", "sinkhorn")
    return info.cls(info.cls.Config(**fields))


def test_plan_has_the_batch_marginals_and_nearly_the_exact_ot_cost(registry):
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(48, 1, 2, 2, generator=g), torch.randn(48, 1, 2, 2, generator=g) * 2 + 1
    plan = build(registry, epsilon=0.005, tol=1e-4, max_iters=2000).plan(z, x[:40])
    assert plan.shape == (48, 40)
    torch.testing.assert_close(plan.sum(1), torch.full((48,), 1 / 48), atol=0, rtol=2e-4)
    torch.testing.assert_close(plan.sum(0), torch.full((40,), 1 / 40), atol=0, rtol=1e-4)
    plan = build(registry, epsilon=0.005, tol=1e-5).plan(z, x)
    cost = torch.cdist(z.flatten(1).double(), x.flatten(1).double()).pow(2)
    rows, cols = linear_sum_assignment(cost.numpy())
    exact = float(cost[rows, cols].mean())
    assert exact <= float((plan * cost).sum()) < 1.1 * exact < 0.7 * float(cost.mean())


def test_pairs_shorten_distances_and_keep_labels(registry):
    g = torch.Generator().manual_seed(1)
    z, x = torch.randn(96, 2, generator=g), torch.randn(96, 2, generator=g) * 2 + 1
    y = torch.randint(0, 3, (96,), generator=g)
    for assignment in ("sample", "argmax"):
        zz, xx, yy = build(registry, epsilon=0.01, assignment=assignment).pair(z, x)
        assert torch.equal(zz, z) and yy is None
        assert float((zz - xx).pow(2).sum(1).mean()) < 0.6 * float((z - x).pow(2).sum(1).mean())
        zz, xx, yy = build(registry, epsilon=0.01, assignment=assignment).pair(z, x, y)
        assert torch.equal(yy, y)
        for c in range(3):
            rows = y == c
            picked = {tuple(r) for r in xx[rows].tolist()}
            assert picked <= {tuple(r) for r in x[rows].tolist()}


def test_bad_config_names_the_field(registry):
    Config = registry.get("coupler", "sinkhorn").cls.Config
    for fields, message in (({"epsilon": 0.0}, "coupler.epsilon: expected > 0, got 0.0"),
                            ({"assignment": "best"}, "coupler.assignment: expected one of sample, argmax, got 'best'"),
                            ({"scaling": 1.5}, r"coupler.scaling: expected in \(0, 1\), got 1.5")):
        with pytest.raises(ConfigError, match=f"^{message}$"):
            structure(fields, Config, "coupler")
