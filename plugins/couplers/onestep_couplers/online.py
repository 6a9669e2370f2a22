"""Online coupling: one noise vector kept per training sample, refined by exact OT each batch.

OT-NFM (arXiv 2604.06413) shows that a flow map regressed on inconsistent noise/data pairs
collapses to the data mean, and that the pairs must be consistent across training: the same
data point should meet the same noise. Minibatch OT re-pairs fresh noise every batch, so a data
point meets a different noise each epoch; a global OT plan is consistent but costs O(N^3) once.

This coupler keeps a coupling of the whole training set and improves it online:

1. the first time a data point is seen it is given the fresh noise row drawn for it;
2. every batch, the noise vectors stored for the batch's data points are re-permuted among
   them by the exact assignment (within classes) and written back, but only when that lowers the
   batch's cost (so it never rises, whatever the solver).

Step 2 is block-coordinate descent on the global assignment problem over the table: the total
transport cost of the kept coupling never increases, and as reshuffled batches meet, it falls
towards the optimal coupling between the stored noise and the data set (a fixed point is a
coupling that no single batch can improve). Pairs are consistent by construction: a data point
keeps its noise until a swap lowers the cost. The cost per batch is one minibatch assignment.

Data points are recognised by a 64-bit hash of their float32 bits (random odd weights, integer
arithmetic modulo 2^64, so it is exact and the same on every device and batch size). A point that
occurs twice in one batch (the loader's epoch boundary can do that) is one point: both rows get
its one kept noise, and the assignment runs over the batch's distinct points. The table holds one
noise vector per distinct training sample: it suits finite data sets (toy sets, MNIST, CIFAR,
latent sets up to ``max_points`` samples). Augmented data (random flips/crops) never repeats and
grows the table: use ``minibatch-ot`` for it.

Measured limitation (docs/results-history.md, #2026-11-23-couplers): the network only ever sees
the N kept noise vectors. On 2D toys that is plenty; on MNIST digits the one-step map fitted to
them generalised worse to fresh noise than minibatch OT did.

Deviation note: the paper's text (beyond its abstract: "scalable minibatch and online coupling
strategies") was not available to us, so the update rule above is our reading of "a coupling kept
and refined across batches", built to approach the paper's global OT coupling (its best one) at
the cost of one minibatch assignment per batch. Checked again 2026-11-30 and 2026-12-02 (issue
15): no HTML or PDF text of arXiv 2604.06413 was reachable; the public summaries (pith.science/paper/2604.06413,
arxivlens.com's summary page) say only that it studies global OT, minibatch OT and online
couplings, that global and minibatch OT give the best trajectories, and that exact coupling costs
O(B^3) per batch. The online rule remains unverified against the method section. Its pairs keep
less of a noise's partner across batches than minibatch OT does, and ``semidiscrete-ot`` (the
global map) keeps all of them (consistency across batches: tools/RESULTS.md, "Couplers and Sinkhorn").
"""
from __future__ import annotations

import attrs
import torch

from onestep.config import at_least

from .assignment import pair_costs
from .couplers import MinibatchOT, MinibatchOTConfig, _check_batches

HASH_SEED = 20260407


@attrs.define
class OnlineOTConfig(MinibatchOTConfig):
    max_points: int = attrs.field(default=200_000, validator=at_least(1))
    """table size limit (memory: max_points x one sample's floats)"""


class OnlineOT(MinibatchOT):
    """A kept noise-per-sample coupling, refined each batch by exact OT (OT-NFM's online coupling)."""

    name = "online"
    Config = OnlineOTConfig

    def __init__(self, config) -> None:
        super().__init__(config)
        self.keys = torch.empty(0, dtype=torch.long)  # sorted sample hashes
        self.noise = torch.empty(0)  # [N, *shape] noise kept for keys[i]
        self.cost = torch.empty(0)  # [N] current squared distance of each kept pair
        self._weights: torch.Tensor | None = None

    @property
    def mean_cost(self) -> float:
        """Mean squared distance of the kept coupling (falls as batches refine it)."""
        return float(self.cost.double().mean()) if len(self.cost) else float("nan")

    def pair(self, noise, data, y=None):
        _check_batches(self.name, noise, data, y)
        keys, row_of_key = self._hash(data).unique(return_inverse=True)
        first = torch.full((len(keys),), len(data), device=data.device).scatter_reduce(
            0, row_of_key, torch.arange(len(data), device=data.device), "amin")
        x, yx = data[first], (None if y is None else y[first])
        slots = self._slots(keys, noise[first])
        kept = self.noise[slots]
        old = self.cost[slots]
        refined = kept[self.match(kept, x, yx)]
        new = pair_costs(refined, x).to(old.dtype)
        if new.sum() <= old.sum():
            kept = refined
            self.noise[slots] = refined
            self.cost[slots] = new
        return kept[row_of_key], data, y

    def _hash(self, data: torch.Tensor) -> torch.Tensor:
        bits = data.detach().float().reshape(len(data), -1).contiguous().view(torch.int32).long()
        if self._weights is None or self._weights.shape[0] != bits.shape[1] or self._weights.device != bits.device:
            g = torch.Generator().manual_seed(HASH_SEED)
            w = torch.randint(-(2**62), 2**62, (bits.shape[1],), generator=g, dtype=torch.long) | 1
            self._weights = w.to(bits.device)
        return (bits * self._weights).sum(1)

    def _slots(self, keys: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Table rows of ``keys``, adding unseen keys with their fresh noise rows."""
        self._to(noise)
        pos = torch.searchsorted(self.keys, keys).clamp_max(max(len(self.keys) - 1, 0))
        known = (self.keys[pos] == keys) if len(self.keys) else torch.zeros_like(keys, dtype=torch.bool)
        new = (~known).nonzero().squeeze(1)
        if len(new):
            if len(self.keys) + len(new) > self.config.max_points:
                raise ValueError(
                    f"coupler 'online': {len(self.keys) + len(new)} distinct training samples exceed "
                    f"coupler.max_points={self.config.max_points}; raise it (memory: one noise per sample) "
                    "or use coupler minibatch-ot (augmented data never repeats)")
            keys_all = torch.cat([self.keys, keys[new]])
            order = keys_all.argsort()
            self.keys = keys_all[order]
            self.noise = torch.cat([self.noise, noise[new]])[order]
            fresh = torch.full((len(new),), float("inf"), dtype=self.cost.dtype, device=self.cost.device)
            self.cost = torch.cat([self.cost, fresh])[order]
            pos = torch.searchsorted(self.keys, keys)
        return pos

    def _to(self, like: torch.Tensor) -> None:
        if len(self.keys) == 0:
            self.noise = like.new_empty((0, *like.shape[1:]))
            self.cost = torch.empty(0, dtype=torch.float64, device=like.device)
            self.keys = self.keys.to(like.device)
        elif self.noise.device != like.device or self.noise.dtype != like.dtype:
            self.keys, self.cost = self.keys.to(like.device), self.cost.to(like.device)
            self.noise = self.noise.to(like.device, like.dtype)

    def state_dict(self):
        return {"keys": self.keys.cpu(), "noise": self.noise.cpu(), "cost": self.cost.cpu()}

    def load_state_dict(self, state):
        missing = {"keys", "noise", "cost"} - set(state)
        if missing:
            raise ValueError(f"coupler 'online': checkpoint state lacks {sorted(missing)}")
        if not (len(state["keys"]) == len(state["noise"]) == len(state["cost"])):
            raise ValueError("coupler 'online': checkpoint state has keys, noise and cost of different lengths")
        self.keys, self.noise, self.cost = state["keys"].clone(), state["noise"].clone(), state["cost"].clone()
