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
from torch.utils.data import Dataset, Sampler
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
            perm = self._perm()
            while self.offset < len(perm):
                i = int(perm[self.offset])
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


def _collate(items: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*items)
    return torch.stack(xs), torch.as_tensor([int(y) for y in ys], dtype=torch.long)


class BatchStream:
    """An endless stream of :class:`Batch` on ``device`` with ``state_dict``/``load_state_dict``."""

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, device: torch.device,
        labelled: bool, rank: int = 0, world: int = 1, num_workers: int = 0,
    ) -> None:
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
