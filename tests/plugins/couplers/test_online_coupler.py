"""The online coupler: a kept noise-per-sample coupling whose cost falls across batches, that
stays consistent, and whose state round-trips exactly through a checkpoint file."""
import pytest
import torch

from onestep.statecodec import load_state, save_state
from onestep_couplers.assignment import assignment_cost, scipy_assignment, squared_distances
from onestep_couplers.online import OnlineOT


def two_blobs(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    side = torch.randint(0, 2, (n, 1), generator=g).float() * 2 - 1
    return torch.randn(n, 2, generator=g) * 0.3 + side * torch.tensor([3.0, 0.0])


def epochs(coupler, data, n_epochs, batch, seed=0, y=None):
    """Feed shuffled batches; yield the kept coupling's mean cost after each epoch."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_epochs):
        order = torch.randperm(len(data), generator=g)
        for i in range(0, len(data), batch):
            rows = order[i:i + batch]
            coupler.pair(torch.randn(len(rows), *data.shape[1:], generator=g), data[rows],
                         None if y is None else y[rows])
        yield coupler.mean_cost


def test_cost_never_rises_and_falls_below_minibatch_ot():
    data = two_blobs()
    c = OnlineOT(OnlineOT.Config())
    costs = list(epochs(c, data, 8, 64))
    assert len(c.keys) == len(data)
    assert all(b <= a + 1e-9 for a, b in zip(costs, costs[1:]))
    assert costs[-1] < 0.97 * costs[0]
    # exact minibatch OT on fresh noise, same batch size: the kept coupling ends up cheaper
    g = torch.Generator().manual_seed(5)
    fresh = []
    for i in range(0, len(data), 64):
        x = data[i:i + 64]
        cost = squared_distances(torch.randn(len(x), 2, generator=g), x)
        fresh.append(assignment_cost(cost, scipy_assignment(cost)) / len(x))
    assert costs[-1] < 0.985 * sum(fresh) / len(fresh)


def test_kept_coupling_tends_to_the_global_optimum_over_its_noise():
    data = two_blobs(256, seed=1)
    c = OnlineOT(OnlineOT.Config())
    *_, last = epochs(c, data, 25, 32)
    noise_of = c.noise[torch.searchsorted(c.keys, c._hash(data))]
    cost = squared_distances(noise_of, data)
    optimum = assignment_cost(cost, scipy_assignment(cost)) / len(data)
    assert last == pytest.approx(float(c.cost.double().mean()))
    assert optimum <= last < 1.03 * optimum


def test_pairs_are_consistent_across_batches():
    """A data point meets the same noise again unless a swap lowered the cost."""
    data = two_blobs(256, seed=2)
    c = OnlineOT(OnlineOT.Config())
    list(epochs(c, data, 30, 64))
    z1, _, _ = c.pair(torch.randn(256, 2), data)
    z2, _, _ = c.pair(torch.randn(256, 2), data.flip(0))
    assert torch.equal(z1, z2.flip(0))


def test_state_round_trips_exactly_through_a_checkpoint(tmp_path):
    data = two_blobs(300, seed=3)
    y = (data[:, 0] > 0).long()
    a = OnlineOT(OnlineOT.Config())
    list(epochs(a, data, 2, 50, y=y))
    save_state(a.state_dict(), tmp_path / "coupler.pt")
    b = OnlineOT(OnlineOT.Config())
    b.load_state_dict(load_state(tmp_path / "coupler.pt"))
    for seed in (7, 8):
        za, xa, ya = a.pair(torch.randn(50, 2), data[seed * 10:seed * 10 + 50], y[seed * 10:seed * 10 + 50])
        zb, xb, yb = b.pair(torch.randn(50, 2), data[seed * 10:seed * 10 + 50], y[seed * 10:seed * 10 + 50])
        assert torch.equal(za, zb) and torch.equal(ya, yb)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.keys, b.keys)


def test_labelled_pairs_never_cross_classes():
    data = two_blobs(200, seed=4)
    y = (data[:, 0] > 0).long()
    c = OnlineOT(OnlineOT.Config())
    list(epochs(c, data, 3, 40, y=y))
    z, _, _ = c.pair(torch.randn(200, 2), data, y)
    first_seen = OnlineOT(OnlineOT.Config())
    z0, _, _ = first_seen.pair(z.clone(), data, y)
    # the noise of each class is a permutation of the noise that class was given when first seen
    for k in (0, 1):
        assert sorted(map(tuple, z[y == k].tolist())) == sorted(map(tuple, z0[y == k].tolist()))


def test_a_point_twice_in_a_batch_gets_its_one_noise_and_the_table_limit_is_enforced():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])
    c = OnlineOT(OnlineOT.Config(max_points=2))
    z, xx, _ = c.pair(torch.randn(3, 2), x)
    assert len(c.keys) == 2 and torch.equal(z[0], z[2]) and not torch.equal(z[0], z[1]) and torch.equal(xx, x)
    z2, _, _ = c.pair(torch.randn(2, 2), x[[2, 2]])
    assert torch.equal(z2[0], z[0]) and torch.equal(z2[1], z[0])
    with pytest.raises(ValueError, match="coupler.max_points=2"):
        c.pair(torch.randn(1, 2), torch.tensor([[5.0, 6.0]]))
