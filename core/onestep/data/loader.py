"""Endless, resumable batch streams over map-style datasets, through torchdata's
StatefulDataLoader.

The order of samples is a pure function of (seed, epoch, rank): each epoch is a fresh seeded
permutation, sharded across ranks. The sampler's position is part of the loader state, so a
resumed run sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ..interfaces import Batch

# torchdata 0.11 calls torch.set_vital, which torch deprecates, at every loader iterator; the
# warning is theirs and says nothing about the user's run
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


class EndlessShuffleSampler(Sampler[int]):
    """Yields indices forever: epoch e is permutation(seed, e), rank r takes every world-th one."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if n < world:
            raise ValueError(f"dataset of {n} items is smaller than the world size {world}")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch = 0
        self.offset = 0  # indices already yielded in this epoch (this rank)

    def _perm(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=g)[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        while True:
            perm = self._perm().tolist()  # Python ints: indexing a tensor per sample costs ~us each
            while self.offset < len(perm):
                i = perm[self.offset]
                self.offset += 1
                yield i
            self.epoch += 1
            self.offset = 0

    def __len__(self) -> int:  # one epoch; the iterator itself never ends
        return self.n // self.world

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


class BatchedTensors(TensorDataset):
    """A :class:`TensorDataset` whose batches are one indexing per tensor (``__getitems__``, which
    the loader calls with a batch's indices) instead of a ``__getitem__`` per sample and a stack:
    the same batches, without ~10 us of Python per sample (for an MLP on a toy or a latent at batch
    1,024, that was more time than the step itself on one CPU thread)."""

    def __init__(self, dataset: TensorDataset) -> None:
        super().__init__(*dataset.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        i = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[i] for t in self.tensors)


def _collate(items) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(items, tuple):  # already a batch (BatchedTensors)
        x, y = items
        return x, y.long()
    xs, ys = zip(*items)
    return torch.stack(xs), torch.as_tensor([int(y) for y in ys], dtype=torch.long)


class BatchStream:
    """An endless stream of :class:`Batch` on ``device`` with ``state_dict``/``load_state_dict``."""

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, device: torch.device,
        labelled: bool, rank: int = 0, world: int = 1, num_workers: int = 0,
    ) -> None:
        if type(dataset) is TensorDataset and len(dataset.tensors) == 2:
            dataset = BatchedTensors(dataset)
        self.sampler = EndlessShuffleSampler(len(dataset), seed, rank, world)
        self.loader = StatefulDataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
            collate_fn=_collate, drop_last=True,
            # its own generator: creating an iterator draws a worker base seed, which must not
            # consume the global RNG (a resumed run creates its iterator at a different time)
            generator=torch.Generator().manual_seed(seed),
        )
        self.device = device
        self.labelled = labelled
        self._it = None

    def next(self) -> Batch:
        if self._it is None:
            self._it = iter(self.loader)
        x, y = next(self._it)
        x = x.to(self.device, non_blocking=True)
        return Batch(x=x, y=y.to(self.device, non_blocking=True) if self.labelled else None)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._it = None
