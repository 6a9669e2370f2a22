"""Semi-discrete optimal transport: the GLOBAL W2 map from N(0, I) onto the whole training set.

Minibatch OT pairs a noise with a different digit every time it meets a new batch (on MNIST at
batch 256 a noise's partner keeps only ~20% of the data variance across batches), so a flow map
regressed on those pairs learns their average: blur. The optimal transport map from the Gaussian
onto the empirical measure (1/N) sum_j delta_{x_j} is deterministic, so its pairs are consistent
by construction. By Brenier's theorem it is the Laguerre-cell assignment

    T(z) = x_{j(z)},   j(z) = argmin_j ( |z - x_j|^2 / 2 - psi_j )
                            = argmax_j ( <z, x_j> - |x_j|^2 / 2 + psi_j )              (1)

where the dual potentials psi maximise the concave semi-dual (Merigot 2011; Genevay et al. 2016)

    H(psi) = E_z [ min_j ( |z - x_j|^2 / 2 - psi_j ) ] + (1/N) sum_j psi_j,
    dH/dpsi_j = 1/N - P( j(z) = j ).                                                    (2)

At the optimum every Laguerre cell holds the mass 1/N of one training sample. We fit psi by
stochastic gradient ascent on (2) with fresh noise (averaged SGD, Genevay et al. 2016, Alg. 2):
each step draws ``fit_batch`` noises, assigns them by (1) and moves psi_j by
``lr * spread / sqrt(step)`` times the mass imbalance ``1 - N * share_j`` (gradient (2) in units of
the target mass 1/N, clipped below at ``-max_excess`` so that the first steps do not overshoot);
``spread = sqrt(tr Cov(x))`` of the group is the scale of the scores in (1), which makes ``lr``
unit-free (measured: the same lr fits 8-dim clusters and MNIST digits). The assignment uses the
average of the iterates weighted by their step number. Each assignment is one [B, N] matrix product plus an
argmax, so fresh noise costs the same every training step whatever the batch size, and nothing
memorises a fixed set of noises (the failure of the ``online`` coupler's kept noises).

With labelled data and ``per_class`` the coupling is one map per class (pairs within a class:
the coupling of class-conditional generation), each fitted on that class's samples.

Training: ``pair(noise, data, y)`` returns the noise with the training samples T(noise) (and the
batch's labels); the loader's data rows only pick the labels (their classes), since the map
chooses the partner. With ``refine`` every training batch's assignments also take one step of (2),
so the fit keeps improving during training at no extra cost.

**In-cell extension** (``in_cell`` = kappa > 0). The map (1) is piecewise constant: every noise of
a cell goes to the same sample. A smooth network regressed onto it learns the average of
neighbouring cells, and in a 16-dim latent with 6,000 samples per class neighbouring cells hold
quite different samples, so the learnt map keeps only part of each class's variance (under-
dispersed samples: docs/results-history.md, #2026-12-02-otnfm-in-cell). The extension adds the
first-order term of a smooth map inside each cell,

    T_kappa(z) = x_{j(z)} + kappa * S_g (z - m_{j(z)}),                                 (3)

m_j the mean of the noises in cell j (estimated once after the fit from ``cell_draws`` noises per
cell, then refined with every training batch's noises) and S_g = diag(std of group g's samples),
the slope of the Gaussian OT map between N(0, I) and a Gaussian of the group's per-dimension
spread. A local average of (3) keeps its linear part whole, so a network's smoothing loses less
variance; the price is that (3) itself pushes the noise onto the samples blurred by the cells'
shapes (kappa sets the trade). kappa = 0 is (1) exactly.

The fitted state (potentials, their average, the step count, a fingerprint of the data, the cell
means' sums and counts) is the coupler's ``state_dict``: a resumed run continues exactly, and
``prepare`` skips the fit when the loaded state matches the data.
"""
from __future__ import annotations

import math

import attrs
import torch

from onestep.config import POSITIVE, at_least
from onestep.errors import ConfigError
from onestep.interfaces import Coupler
from onestep.progress import bar as progress_bar

from .couplers import _check_batches

FINGERPRINT_SEED = 20260407


@attrs.define
class SemiDiscreteOTConfig:
    per_class: bool = True  # labelled data: one map per class (the objective must pass labels)
    fit_steps: int = attrs.field(default=300, validator=at_least(0))
    """averaged-SGD steps of the potentials in prepare (before the training clock)"""
    fit_batch: int = attrs.field(default=4096, validator=at_least(1))
    """fresh noises per fitting step (per class when per_class)"""
    lr: float = attrs.field(default=0.25, validator=POSITIVE)
    """step of psi per unit of mass imbalance, in units of the group's data spread; decays as 1 / sqrt(step)"""
    max_excess: float = 10.0  # clip of a cell's excess mass (in units of 1/N) per step: no early overshoot
    refine: bool = True  # keep fitting the potentials with each training batch's assignments
    chunk: int = attrs.field(default=16384, validator=at_least(1))
    """training samples per block of the [B, N] score matrix (memory)"""
    max_points: int = attrs.field(default=2_000_000, validator=at_least(1))
    """refuse larger training sets (memory: the set lives on the device)"""
    seed: int = 0  # noise of the fit in prepare (its own generator: the training RNG is untouched)
    in_cell: float = attrs.field(default=0.0, validator=at_least(0, "no in-cell extension"))
    """kappa of (3): slope of the in-cell extension (0: the piecewise-constant map (1))"""
    cell_draws: int = attrs.field(default=64, validator=at_least(1))
    """noises per cell that estimate the cell means after the fit (in_cell > 0)"""


class SemiDiscreteOT(Coupler):
    """Global OT map from the Gaussian onto the training set by Laguerre cells (semi-discrete OT)."""

    name = "semidiscrete-ot"
    Config = SemiDiscreteOTConfig

    def __init__(self, config) -> None:
        super().__init__(config)
        self.points: torch.Tensor | None = None  # [N, D] training samples, grouped by class
        self.half_sq: torch.Tensor | None = None  # [N] |x_j|^2 / 2
        self.groups: list[tuple[int, int]] = []  # (start, end) rows of each class (one group if unlabelled)
        self.group_of_label: dict[int, int] = {}
        self.shape: tuple[int, ...] = ()
        self.psi = torch.empty(0)  # [N] current SGD iterate
        self.psi_avg = torch.empty(0)  # [N] average of the iterates: the potentials (1) uses
        self.steps = torch.zeros((), dtype=torch.long)  # SGD steps taken (fit + refinement)
        self.fingerprint = torch.zeros(3, dtype=torch.float64)  # the data the potentials belong to
        self.cell_sum = torch.empty(0)  # [N, D] sum of the noises assigned to each cell (in_cell > 0)
        self.cell_count = torch.empty(0)  # [N] how many
        self._loaded = False

    # ------------------------------------------------------------------------------- fitting
    def prepare(self, source, device) -> None:
        """Load the training split onto ``device`` and fit the potentials (skipped when a resumed
        checkpoint's potentials belong to the same data)."""
        x, y = _training_arrays(source)
        if len(x) > self.config.max_points:
            raise ConfigError(f"coupler.max_points: the training set has {len(x)} samples, more than "
                              f"{self.config.max_points}; raise it (memory: the set lives on the device)")
        labelled = source.spec().num_classes > 0 and self.config.per_class
        self.set_points(x.to(device), y.to(device) if labelled else None)
        if self._loaded:
            if not torch.equal(self.fingerprint, self._fingerprint()):
                raise ConfigError(f"coupler {self.name!r}: the checkpoint's potentials were fitted to other training "
                                  "data (data section or split changed); start a new run")
            if self.config.in_cell > 0 and len(self.cell_count) != len(self.points):
                raise ConfigError("coupler.in_cell: the checkpoint holds no cell means (saved with in_cell=0); "
                                  "resume with coupler.in_cell=0 or start a new run")
            return
        generator = torch.Generator(device=device).manual_seed(self.config.seed)
        self.fit(self.config.fit_steps, generator)
        if self.config.in_cell > 0:
            self.estimate_cell_means(self.config.cell_draws, generator)

    def set_points(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Use samples ``x`` [N, *shape] (labels ``y`` [N] or None: one group) as the target set."""
        flat = x.reshape(len(x), -1).float()
        if y is None:
            order, labels = torch.arange(len(x), device=x.device), [None]
            self.groups, self.group_of_label = [(0, len(x))], {}
        else:
            order = torch.argsort(y, stable=True)
            labels, counts = torch.unique(y, return_counts=True)
            ends = torch.cumsum(counts, 0).tolist()
            self.groups = list(zip([0] + ends[:-1], ends))
            self.group_of_label = {int(c): g for g, c in enumerate(labels.tolist())}
        self.points = flat[order].contiguous()
        self.half_sq = 0.5 * self.points.pow(2).sum(1)
        group_var = torch.stack([self.points[a:b].var(0, unbiased=False) for a, b in self.groups])
        self.spread = [float(v.sum().sqrt()) for v in group_var]
        self.group_std = group_var.sqrt()  # S_g of (3)
        sizes = torch.tensor([b - a for a, b in self.groups], device=x.device)
        self.column_group = torch.repeat_interleave(torch.arange(len(self.groups), device=x.device), sizes)
        self.column_size = sizes[self.column_group].float()  # N_g of each cell's group
        self.column_spread = torch.tensor(self.spread, device=x.device)[self.column_group]
        self.shape = tuple(x.shape[1:])
        if not self._loaded:
            self.psi = torch.zeros(len(x), device=x.device)
            self.psi_avg = torch.zeros(len(x), device=x.device)
        else:
            if len(self.psi) != len(x):
                raise ConfigError(f"coupler {self.name!r}: the checkpoint holds {len(self.psi)} potentials but the "
                                  f"training set has {len(x)} samples; start a new run")
            self.psi, self.psi_avg = self.psi.to(x.device), self.psi_avg.to(x.device)
            self.cell_sum, self.cell_count = self.cell_sum.to(x.device), self.cell_count.to(x.device)
        if not self._loaded:
            self.fingerprint = self._fingerprint()

    def fit(self, steps: int, generator: torch.Generator) -> None:
        """``steps`` averaged-SGD steps of (2) with ``fit_batch`` fresh noises per group each
        (``generator`` lives on the points' device: the noise is drawn where it is used)."""
        dim = self.points.shape[1]
        with progress_bar(steps, "OT potentials", "step") as bar:
            for _ in range(steps):
                for g in range(len(self.groups)):
                    z = torch.randn(self.config.fit_batch, dim, generator=generator, device=generator.device).to(self.points.device)
                    self._sgd_step(self.assign_group(z, g, self.psi), torch.full((len(z),), g, device=z.device))
                self._average()
                bar.update()

    def _sgd_step(self, rows: torch.Tensor, groups: torch.Tensor) -> None:
        """psi_j += lr * spread_g / sqrt(k) * max(1 - N_g * share_j, -max_excess) for every cell j
        of every group g with rows in the batch, share_j the fraction of g's ``rows`` (assigned
        noises) in cell j; a group without rows keeps its potentials. One pass over all groups,
        with no host synchronisation, so a training step's refinement does not stall the device
        queue."""
        counts = torch.bincount(rows, minlength=len(self.psi)).float()
        per_group = torch.bincount(groups, minlength=len(self.groups)).float()[self.column_group]
        share = counts / per_group.clamp_min(1.0)
        step = self.config.lr * self.column_spread / math.sqrt(float(self.steps) + 1.0)
        update = step * (1.0 - self.column_size * share).clamp_min(-self.config.max_excess)
        self.psi += torch.where(per_group > 0, update, torch.zeros_like(update))

    def _average(self) -> None:
        """Average of the iterates weighted by their step number (iterate k has weight ~ k), so
        the poor early iterates fade (Lacoste-Julien et al. 2012)."""
        self.steps += 1
        self.psi_avg += (self.psi - self.psi_avg) * (2.0 / (float(self.steps) + 1.0))

    @torch.no_grad()
    def estimate_cell_means(self, draws: int, generator: torch.Generator) -> None:
        """The noise means m_j of (3) from ``draws * N_g`` fresh noises per group, assigned with
        the averaged potentials (the ones :meth:`pair` uses)."""
        dim = self.points.shape[1]
        self.cell_sum = torch.zeros_like(self.points)
        self.cell_count = torch.zeros(len(self.points), device=self.points.device)
        block = self.config.fit_batch
        for g, (start, end) in enumerate(self.groups):
            for left in range(draws * (end - start), 0, -block):
                z = torch.randn(min(block, left), dim, generator=generator, device=generator.device).to(self.points.device)
                self._accumulate(z, self.assign_group(z, g))

    def _accumulate(self, z: torch.Tensor, rows: torch.Tensor) -> None:
        self.cell_sum.index_add_(0, rows, z.reshape(len(z), -1).float())
        self.cell_count += torch.bincount(rows, minlength=len(self.cell_count)).float()

    def extension(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """kappa * S_g (z - m_j) of (3) for noise rows ``z`` assigned to cells ``rows`` (a cell no
        noise has reached yet contributes nothing)."""
        count = self.cell_count[rows].clamp_min(1.0)[:, None]
        z = z.reshape(len(z), -1).float()
        mean = torch.where(self.cell_count[rows, None] > 0, self.cell_sum[rows] / count, z)
        return self.config.in_cell * self.group_std[self.column_group[rows]] * (z - mean)

    # ------------------------------------------------------------------------------- pairing
    @torch.no_grad()
    def assign(self, z: torch.Tensor, groups: torch.Tensor, potentials: torch.Tensor | None = None) -> torch.Tensor:
        """Row index j(z) of (1) in ``points`` for each noise row, within the row's group.
        Scores in fp32 even under the trainer's bf16 autocast (bf16 would blur the argmax:
        scores of hundreds with ~3 significant digits)."""
        with torch.autocast(z.device.type, enabled=False):
            return self._assign(z, groups, self.psi_avg if potentials is None else potentials)

    def _assign(self, z: torch.Tensor, groups: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """(1) for a batch of mixed groups. On a GPU every row is scored against every training
        sample, other groups' samples masked out: more arithmetic than one product per group, but
        no host synchronisation (no data-dependent shapes). On a CPU, where a synchronisation costs
        nothing and arithmetic is the cost, one product per group present (``groups`` times less
        arithmetic)."""
        if z.device.type != "cpu" or len(self.groups) == 1:
            return self._best(z, 0, len(self.points), psi, groups)
        out = torch.empty(len(z), dtype=torch.long)
        for g in groups.unique().tolist():
            rows = (groups == g).nonzero().squeeze(1)
            out[rows] = self._best(z[rows], *self.groups[g], psi)
        return out

    @torch.no_grad()
    def assign_group(self, z: torch.Tensor, g: int, psi: torch.Tensor | None = None) -> torch.Tensor:
        """(1) for rows all of group ``g`` (the g-th class in label order): scored against that
        group's samples only, so 1/groups of the arithmetic of :meth:`assign` (which suits mixed
        batches on a GPU). ``psi``: the averaged potentials unless given."""
        psi = self.psi_avg if psi is None else psi
        with torch.autocast(z.device.type, enabled=False):
            return self._best(z, *self.groups[g], psi)

    def _best(self, z: torch.Tensor, start: int, end: int, psi: torch.Tensor,
              groups: torch.Tensor | None = None) -> torch.Tensor:
        """argmax_j of the scores of (1) over the samples ``start:end`` (and, with ``groups``, only
        the row's own group's), in blocks of ``chunk`` samples (memory)."""
        z = z.reshape(len(z), -1).float()
        best_val = torch.full((len(z),), -torch.inf, device=z.device)
        best_idx = torch.zeros(len(z), dtype=torch.long, device=z.device)
        for a in range(start, end, self.config.chunk):
            b = min(a + self.config.chunk, end)
            score = z @ self.points[a:b].T - self.half_sq[a:b] + psi[a:b]
            if groups is not None:
                score = score.masked_fill(self.column_group[a:b] != groups[:, None], -torch.inf)
            val, idx = score.max(1)
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + a, best_idx)
        return best_idx

    def pair(self, noise, data, y=None):
        _check_batches(self.name, noise, data, y)
        if self.points is None:
            raise RuntimeError(f"coupler {self.name!r}: not prepared (the trainer calls prepare(source, device) in fit; "
                               "outside a run call prepare or set_points first)")
        if tuple(data.shape[1:]) != self.shape:
            raise ValueError(f"coupler {self.name!r}: data rows of shape {tuple(data.shape[1:])}, fitted to {self.shape}")
        groups = self._groups_of(y, len(data), data.device)
        rows = self.assign(noise, groups)
        if self.config.refine:
            self._sgd_step(self.assign(noise, groups, potentials=self.psi), groups)
            self._average()
        target = self.points[rows]
        if self.config.in_cell > 0:
            if len(self.cell_count) != len(self.points):
                raise RuntimeError(f"coupler {self.name!r}: in_cell > 0 needs the cell means (prepare estimates them; "
                                   "outside a run call estimate_cell_means after fit)")
            target = target + self.extension(noise, rows)
            if self.config.refine:
                self._accumulate(noise, rows)
        return noise, target.reshape(data.shape).to(data.dtype), y

    def _groups_of(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor:
        if len(self.groups) == 1 and not self.group_of_label:
            if y is not None:
                raise ConfigError(f"coupler {self.name!r}: fitted without classes (coupler.per_class=false or unlabelled "
                                  "data) but the objective pairs within classes; set coupler.per_class=true")
            return torch.zeros(n, dtype=torch.long, device=device)
        if y is None:
            raise ConfigError(f"coupler {self.name!r}: fitted per class (coupler.per_class=true) but the objective pairs "
                              "without labels (e.g. objective.class_conditional=false); set coupler.per_class=false")
        lut = torch.full((int(y.max()) + 1,), -1, dtype=torch.long, device=device)
        for c, g in self.group_of_label.items():
            if c < len(lut):
                lut[c] = g
        groups = lut[y]
        if (groups < 0).any():
            raise ValueError(f"coupler {self.name!r}: labels {sorted(set(y[groups < 0].tolist()))} have no training samples")
        return groups

    # ------------------------------------------------------------------------------- diagnostics
    @torch.no_grad()
    def mass_imbalance(self, samples_per_cell: int, generator: torch.Generator) -> float:
        """Pearson chi^2 of the cell counts of ``samples_per_cell * N`` fresh noises against equal
        masses, over its expectation N - 1 under exactly equal masses: ~1 when converged, larger
        when some cells hold too much or too little mass."""
        dim = self.points.shape[1]
        total, dof = 0.0, 0
        for g, (start, end) in enumerate(self.groups):
            n = end - start
            counts = torch.zeros(n, device=self.points.device)
            for _ in range(samples_per_cell):
                z = torch.randn(n, dim, generator=generator).to(self.points.device)
                counts += torch.bincount(self.assign(z, torch.full((n,), g, device=z.device)) - start, minlength=n)
            expected = float(samples_per_cell)
            total += float(((counts - expected) ** 2).sum()) / expected
            dof += n - 1
        return total / max(dof, 1)

    # ------------------------------------------------------------------------------- state
    def _fingerprint(self) -> torch.Tensor:
        """Three numbers that change with the data set: N, a fixed random projection of all
        samples and of their squares (float64 sums)."""
        g = torch.Generator().manual_seed(FINGERPRINT_SEED)
        w = torch.randn(self.points.shape[1], generator=g, dtype=torch.float64).to(self.points.device)
        p = self.points.double()
        return torch.stack([torch.tensor(float(len(p)), dtype=torch.float64, device=p.device),
                            (p @ w).sum(), (p.pow(2) @ w).sum()]).cpu()

    def state_dict(self):
        return {"psi": self.psi.cpu(), "psi_avg": self.psi_avg.cpu(), "steps": self.steps.clone(),
                "fingerprint": self.fingerprint.clone(), "cell_sum": self.cell_sum.cpu(), "cell_count": self.cell_count.cpu()}

    def load_state_dict(self, state):
        missing = {"psi", "psi_avg", "steps", "fingerprint"} - set(state)
        if missing:
            raise ValueError(f"coupler {self.name!r}: checkpoint state lacks {sorted(missing)}")
        self.psi, self.psi_avg = state["psi"].clone().float(), state["psi_avg"].clone().float()
        self.steps, self.fingerprint = state["steps"].clone(), state["fingerprint"].clone()
        self.cell_sum = state.get("cell_sum", torch.empty(0)).clone().float()  # absent: saved before in_cell existed
        self.cell_count = state.get("cell_count", torch.empty(0)).clone().float()
        self._loaded = True


def _training_arrays(source) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole ``train`` split as tensors (x [N, *shape], y [N])."""
    ds = source.dataset("train")
    if isinstance(ds, torch.utils.data.TensorDataset):
        x, y = ds.tensors[0], ds.tensors[1]
    else:
        items = [ds[i] for i in range(len(ds))]
        x = torch.stack([a for a, _ in items])
        y = torch.as_tensor([int(b) for _, b in items], dtype=torch.long)
    return x.float(), y.long()
