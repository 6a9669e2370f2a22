"""Per-class batching: lay a labelled flat batch out as padded groups ``[G, L, ...]`` so that one
batched Sinkhorn call solves every class's problem, and scatter per-group results back."""
from __future__ import annotations

import attrs
import torch


@attrs.frozen
class Groups:
    """``index[g, k]``: row of the flat batch at slot k of group g (0 where ``mask`` is False);
    ``labels[g]``: the label shared by group g."""

    index: torch.Tensor  # [G, L] long
    mask: torch.Tensor  # [G, L] bool
    labels: torch.Tensor  # [G] long

    @classmethod
    def by_label(cls, y: torch.Tensor) -> "Groups":
        """One group per distinct label in ``y`` [B] (sorted), padded to the largest group."""
        y = y.reshape(-1).long()
        labels, counts = torch.unique(y, sorted=True, return_counts=True)
        order = torch.argsort(y, stable=True)
        group = torch.repeat_interleave(torch.arange(len(labels), device=y.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(y), device=y.device) - starts[group]
        width = int(counts.max())
        index = torch.zeros(len(labels), width, dtype=torch.long, device=y.device)
        mask = torch.zeros(len(labels), width, dtype=torch.bool, device=y.device)
        index[group, slot] = order
        mask[group, slot] = True
        return cls(index, mask, labels)

    @classmethod
    def single(cls, n: int, device: torch.device | str = "cpu") -> "Groups":
        """The whole batch as one group (unlabelled data)."""
        index = torch.arange(n, device=device).unsqueeze(0)
        return cls(index, torch.ones_like(index, dtype=torch.bool), torch.zeros(1, dtype=torch.long, device=device))

    @property
    def weights(self) -> torch.Tensor:
        """[G, L] float: 1 on members, 0 on padding (the solver normalises per group)."""
        return self.mask.float()

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Flat ``x`` [B, ...] -> padded ``[G, L, ...]`` (padding rows are zeros)."""
        out = x[self.index]
        return out * self.mask.view(*self.mask.shape, *([1] * (x.dim() - 1))).to(out.dtype)

    def scatter(self, v: torch.Tensor, n: int) -> torch.Tensor:
        """Padded ``v`` [G, L, ...] -> flat [n, ...] (the inverse of :meth:`gather`)."""
        out = v.new_zeros(n, *v.shape[2:])
        out[self.index[self.mask]] = v[self.mask]
        return out
