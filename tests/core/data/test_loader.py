"""Batch streams: endless, seeded, sharded, and resumable mid-epoch and across epochs."""
import torch
from torch.utils.data import TensorDataset

from onestep.data.loader import BatchStream


def _stream(n=10, bs=3, seed=0, rank=0, world=1):
    ds = TensorDataset(torch.arange(n).float(), torch.arange(n))
    return BatchStream(ds, bs, seed, torch.device("cpu"), labelled=True, rank=rank, world=world)


def test_each_epoch_visits_every_item_once():
    s = _stream(n=12, bs=4)
    seen = torch.cat([s.next().x for _ in range(3)])
    assert sorted(seen.tolist()) == list(range(12))
    assert sorted(torch.cat([s.next().x for _ in range(3)]).tolist()) == list(range(12))


def test_resumed_stream_continues_exactly_across_epoch_boundaries():
    a = _stream()
    for _ in range(5):
        a.next()
    state = a.state_dict()
    expected = [a.next().x.tolist() for _ in range(6)]
    b = _stream()
    b.load_state_dict(state)
    assert [b.next().x.tolist() for _ in range(6)] == expected


def test_ranks_see_disjoint_shards_and_stream_does_not_touch_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    r0, r1 = _stream(n=12, bs=3, rank=0, world=2), _stream(n=12, bs=3, rank=1, world=2)
    x0 = torch.cat([r0.next().x for _ in range(2)])
    x1 = torch.cat([r1.next().x for _ in range(2)])
    assert not set(x0.tolist()) & set(x1.tolist())
    assert torch.equal(before, torch.get_rng_state())


class PerSample(torch.utils.data.Dataset):
    """A map-style dataset with only ``__getitem__``: the loader's per-sample path."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def test_tensor_datasets_batch_by_indexing_and_give_the_per_sample_batches():
    """In-memory data is fetched one indexing per batch; the batches, across epochs and after a
    resume, are exactly those of the per-sample path (checkpoints of either path continue alike)."""
    ds = TensorDataset(torch.randn(10, 2, 3), torch.arange(10) % 4)
    fast = BatchStream(ds, 4, 7, torch.device("cpu"), labelled=True)
    slow = BatchStream(PerSample(ds), 4, 7, torch.device("cpu"), labelled=True)
    assert type(fast.loader.dataset).__name__ == "BatchedTensors"
    for _ in range(3):
        a, b = fast.next(), slow.next()
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.y.dtype == b.y.dtype == torch.long
    resumed = BatchStream(ds, 4, 7, torch.device("cpu"), labelled=True)
    resumed.load_state_dict(slow.state_dict())
    for _ in range(4):
        a, b = resumed.next(), slow.next()
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
