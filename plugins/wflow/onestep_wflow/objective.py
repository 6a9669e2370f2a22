"""W-Flow: one-step generation by compressing a Sinkhorn-divergence Wasserstein gradient flow
(Han, Li, Guo, Xu, Ermon, Candes; arXiv 2605.11755). The whole method is this module.

**Velocity.** The Wasserstein gradient flow of F(q) = S_eps(q, p) (the debiased Sinkhorn
divergence) moves a particle a with velocity ``-grad (f_{q,p} - f_{q,q})(a)``. For the cost
|a - b|^2 / 2 the gradient of an entropic potential is ``a - T(a)`` with T the barycentric
projection through the entropic plan, ``T_{A,B}(a_i) = sum_j pi_ij b_j / sum_j pi_ij``, so::

    V(a_i) = T_{q,p}(a_i) - T_{q,q'}(a_i)                                   (pull - debias)

The self term uses a SECOND independent batch of particles ``q' = f(z')`` (``self_term =
"two-batch"``); ``"one-batch"`` (q onto itself: each particle is coupled with itself at zero
cost, a bias toward contraction) and ``"none"`` (V = T_{q,p}(a) - a) are kept for ablation.

**Feature space.** As the authors train it, the flow runs on the features of a frozen network phi
(``features`` section of the run; none: the samples themselves, pixel space). phi returns maps
``[B, C, H, W]`` (or vectors ``[B, D]``); from every map the particles are read per location
(a C-vector at each of H*W places), as mean and standard deviation over ``patch_stats`` x
``patch_stats`` patches, and as mean and standard deviation over the whole map
(``global_stats``). Each such *family* of C-vectors at L places gives one OT problem per
(class x place); all of them are solved in one batched Sinkhorn call per vector size.

**Step rule** (per family f). Coordinates are rescaled so that the RMS distance per dimension
between generated and real points is 1: ``u = phi_f / s_f`` with
``s_f^2 = S_f / d_f``, ``S_f`` the mean squared gen-data distance (no gradient). The plan is
``pi ~ exp(-|a - b|^2 / (R S_f))`` for each R in ``relative_temperatures`` (R = 0.05 and 0.01 in the paper),
i.e. the temperature is R times the mean squared distance, whatever the feature size (capped at
the data's local scale, ``local_k``: the median squared distance from a particle to its k-th
nearest real point; a cap that only binds in low dimension, where S measures the distance
between modes rather than their width). Each R
gives V_R in u-coordinates; with ``normalize_velocity`` each is divided by its RMS (over all
classes, places, points and dimensions), and they are summed::

    V_f = sum_R V_R / rms(V_R),   target_f = stopgrad(u_f + eta V_f)
    loss = mean_f mean (u_f(G(z)) - target_f)^2

so the gradient reaches the generator through phi's Jacobian. Without normalisation the target
is ``u + eta V`` (pixel space with one R and no normalisation is the pre-feature W-Flow).

**Plans.** The authors run a fixed 10 log-domain Sinkhorn iterations from zero potentials per plan
(1 at scale). The projection normalises each plan over its rows, so what few iterations leave
loose are the column marginals: data points that are light and far from the particles (minority
modes) receive less than their mass and stop pulling particles to them. Here the 10 iterations
are the first chunk, and further chunks run only while the worst data point of any plan misses
its mass by more than ``sinkhorn_tol`` (in log ratio), up to ``sinkhorn_max_iters``; one host
sync per solve reads the error. Training logs the error and the iterations
(``sinkhorn_error``, ``sinkhorn_iters``); ``sinkhorn_tol=0`` is the authors' fixed budget.

**Against the authors' code** (their OT loss, read in a public fork of hanjq17/W-Flow): the same
row-normalised projection of a plan whose last Sinkhorn update is the column one, and the same
per-R normalisation by the RMS over the whole batch of plans. Two differences: with their
quadratic cost ``|a - b|^2 / 2`` at ``reg = R d`` on coordinates of mean squared distance d, their
plan is ``exp(-|a - b|^2 / (2 R S))``, twice the temperature this module gives the same R (the
presets were measured with this module's); and their S averages the distances from the
generated points to the generated, self-batch and real points together, this module's to the real
points only.

**On 2-D data** the thin ring that W-Flow's samples once drew (issue 29) came from the generator's
head, not from the flow: a LayerNorm before the output of an MLP generator keeps the direction of
its hidden state and drops its size (``backbone.generator_out_norm``, now off by default; flow
matching drew the same ring with it). The thin bridges of samples left between modes came from
plans held tightly to each minibatch's marginals (see ``sinkhorn_max_iters``; measurements:
docs/results-history.md, issue 29).

**Class-conditional data.** Each step generates ``per_class`` (>= 64 in the paper) particles for
each of ``train.batch_size // per_class`` classes (at most all classes; each then gets
``batch_size // classes``), and compares them with up to ``bank_per_class`` real samples of the
same class from a memory bank (a per-class ring buffer filled from the data batches; it is
checkpointed with the run), since a batch alone holds too few of each class.

**CFG baked in** (the paper's V_w, with the unconditional data p_u from the current batch)::

    V_w = (T_{q|c,p|c} - T_{q|c,q'|c}) + w (T_{q|c,p|c} - T_{q|c,p_u})

When ``[cfg_min, cfg_max]`` is not [0, 0], the scale w is drawn per example, uniform in
that range, the examples of one plan sharing it (a plan compares the particles of ONE
distribution q_{w|c}); the generator is conditioned on w through its scalar time input,
``t = (w - cfg_min) / (cfg_max - cfg_min)``, and the sampling scale
``cfg_scale`` is chosen when sampling (``onestep sample RUN objective.cfg_scale=1.5``;
``onestep export`` takes the same override). Sampling stays one evaluation ``x = f(z, y, t)``.
Scales below 0 (down to -1) extend the paper's range toward the unconditional flow: at w = -1,
``V_w = T_{q|c,p_u} - T_{q|c,q'|c}`` pulls every class to all the data.

A guidance plugin (``--guidance classifier``, optional, class-conditional runs) adds its term on
the generated batch x = f(z, y) (clean samples, whatever CFG level t conditions them) to the
regression loss.
"""
from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from onestep.config import POSITIVE, at_least, check, one_of
from onestep.errors import ConfigError
from onestep.interfaces import Batch, NetworkRequest, Networks, Objective, Phase, StepInfo
from onestep_sinkhorn import SinkhornSolver, project_stacked
from onestep_sinkhorn.solver import PRECISIONS

SELF_TERMS = ("two-batch", "one-batch", "none")
STD_FLOOR = 1e-6  # added to variances before the square root (finite gradients of flat patches)
BANK_CHUNK = 2048  # bank samples per feature call when the bank's families are (re)built


@attrs.define
class WFlowConfig:
    relative_temperatures: list[float] = attrs.field(
        factory=lambda: [0.05], validator=check(lambda v: len(v) > 0 and all(r > 0 for r in v),
                                                "a non-empty list of temperatures R > 0 (e.g. [0.05])"))
    """The paper's R: each plan's temperature is R S, S the mean squared distance between
    generated and real points of the feature (plan ~ exp(-|a - b|^2 / (R S))). Several: one
    velocity each, normalised and summed. (The solver's own epsilon is fixed at 1/2: it works on
    coordinates divided by sqrt(R S).)"""
    local_k: int = attrs.field(default=10, validator=at_least(0, "no cap"))
    """Cap each temperature R S at the median squared distance from a generated point to its k-th
    nearest real point (0: no cap, the paper's rule). In high dimension distances concentrate and
    the cap lies far above R S; in low dimension (2-D mixtures) S is set by the distances between
    modes, R S blurs every mode, and the flow has no force that spreads a mode the generator has
    collapsed (the samples then lie on a thin curve through the modes)."""
    normalize_velocity: bool = True
    """Divide each temperature's velocity by its RMS (the paper's rule); false keeps raw V."""
    eta: float = attrs.field(default=1.0, validator=POSITIVE)
    """Step of the particle flow in the target u + eta V (1 with normalised velocities)."""
    self_term: str = attrs.field(default="two-batch", validator=one_of(SELF_TERMS))
    """Estimator of the debiasing term T_{q,q}: two-batch (paper), one-batch or none (ablations)."""
    class_conditional: bool = True
    """Use the labels of labelled data (per-class plans, a label-conditioned generator)."""
    per_class: int = attrs.field(default=64, validator=at_least(1))
    """Generated particles per class and plan (class-conditional data)."""
    bank_per_class: int = attrs.field(default=128, validator=at_least(1))
    """Real samples per class kept in the memory bank and used as each plan's data side."""
    patch_stats: list[int] = attrs.field(factory=lambda: [2, 4],
                                         validator=check(lambda v: all(p >= 2 for p in v), "patch sizes >= 2"))
    """Patch sizes of the mean/std statistics read from every feature map."""
    global_stats: bool = True
    """Also read each feature map's mean and std over all places."""
    with_input: bool = False
    """With a feature network, also flow the samples themselves (one flat vector each) as one
    more family: pixel detail that the features do not see is then still pulled to the data."""
    cfg_min: float = attrs.field(default=0.0, validator=check(lambda v: -1.0 <= v <= 0.0, "in [-1, 0]"))
    """Smallest classifier-free guidance scale w drawn in training (>= -1; -1 is the
    unconditional flow)."""
    cfg_max: float = attrs.field(default=0.0, validator=at_least(0))
    """Largest CFG scale w drawn in training (class-conditional data); [0, 0] disables CFG."""
    cfg_scale: float = 0.0
    """CFG scale w used when sampling, in [cfg_min, cfg_max]. (CFG is built into the velocity;
    a guidance plugin, ``--guidance``, is a separate term on the generated batch.)"""
    sinkhorn_iters: int = attrs.field(default=10, validator=at_least(1))
    """Sinkhorn iterations per chunk, from zero potentials at the target temperature: the paper's
    10 are the fast path (one chunk, then one marginal check), and further chunks run only while
    the plans miss their marginals by more than ``sinkhorn_tol``."""
    sinkhorn_tol: float = attrs.field(default=0.1, validator=at_least(0, "a fixed sinkhorn_iters"))
    """Largest marginal error a plan may keep: ``max_j |log(mass received by data point j / its
    weight)|`` over every plan of the step (0.1: every point within ~10% of its mass). Loose
    column marginals leave rare, distant data points (minority modes) unmatched, and the flow
    stops pulling particles to them. 0: exactly ``sinkhorn_iters`` iterations (the paper's fixed
    budget, no host sync; the ImageNet L/2 and XL/2 presets' single iteration). Each chunk after
    the first costs one host sync, so a tolerance wants chunks of ~10 iterations."""
    sinkhorn_max_iters: int = 50
    """Cap on the iterations of one solve when the tolerance is not met (at least one chunk of
    ``sinkhorn_iters``). Training logs the iterations run (``sinkhorn_iters``, the most of the
    step's solves) and the marginal error reached (``sinkhorn_error``). Why not more: a plan's
    marginals are those of one minibatch, whose mode counts fluctuate; plans held to them tightly
    (300 iterations) move particles across mode boundaries at random every step, and a one-step
    generator keeps bridges of samples between modes. 50 kept the rare, distant modes of the 2-D
    imbalanced mixture covered as well as 300 did, without the bridges (docs/results-history.md,
    issue 29)."""
    precision: str = attrs.field(default="fp32", validator=one_of(PRECISIONS))
    """Cost GEMM of the solver: fp32, tf32 or bf16 (see onestep_sinkhorn.squared_cost)."""
    sinkhorn_compile: bool = False
    """torch.compile the solver's loop on CUDA (one graph per problem shape; its warm-up runs
    inside the training clock, so short runs are better off eager)."""
    lr: float = attrs.field(default=1e-3, validator=POSITIVE)

    @property
    def with_cfg(self) -> bool:
        """Whether training draws CFG scales: ``[cfg_min, cfg_max]`` is not [0, 0]."""
        return (self.cfg_min, self.cfg_max) != (0.0, 0.0)


def feature_families(maps: list[torch.Tensor], patch_stats: list[int], global_stats: bool) -> list[torch.Tensor]:
    """Feature maps -> families of particles ``[B, L, d]`` (float32): a ``[B, D]`` vector is one
    family of one place; a ``[B, C, H, W]`` map gives its per-location vectors (L = H W), the
    mean and std over each p x p patch for p in ``patch_stats`` smaller than the map, and the
    mean and std over the whole map (``global_stats``)."""
    out = []
    for m in maps:
        m = m.float()
        if m.dim() == 2:
            out.append(m[:, None])
            continue
        if m.dim() != 4:
            raise ValueError(f"feature network returned a tensor of shape {tuple(m.shape)}; expected [B, D] or [B, C, H, W]")
        out.append(m.flatten(2).transpose(1, 2))
        for p in patch_stats:
            if p >= min(m.shape[-2:]):
                continue
            mean = F.avg_pool2d(m, p, ceil_mode=True)
            var = (F.avg_pool2d(m * m, p, ceil_mode=True) - mean * mean).clamp_min(0.0)
            out += [mean.flatten(2).transpose(1, 2), (var + STD_FLOOR).sqrt().flatten(2).transpose(1, 2)]
        if global_stats:
            mean, var = m.mean((2, 3)), m.var((2, 3), unbiased=False)
            out += [mean[:, None], (var + STD_FLOOR).sqrt()[:, None]]
    return out


def _problems(a: torch.Tensor) -> torch.Tensor:
    """[K, N, L, d] (classes, points, places) -> [K L, N, d]: one problem per class and place."""
    k, n, l, d = a.shape
    return a.permute(0, 2, 1, 3).reshape(k * l, n, d)


def _unproblems(a: torch.Tensor, k: int) -> torch.Tensor:
    kl, n, d = a.shape
    return a.reshape(k, kl // k, n, d).permute(0, 2, 1, 3)


def mean_squared_distance(q: torch.Tensor, p: torch.Tensor, p_w: torch.Tensor | None) -> torch.Tensor:
    """Mean over classes and places of ``E_ij |q_i - p_j|^2`` for q [K, N, L, d] and p
    [K, M, L, d] weighted by p_w [K, M] (None: uniform), without forming the pairs."""
    w = torch.ones(p.shape[:2], device=p.device) if p_w is None else p_w.float()
    w = w / w.sum(1, keepdim=True)
    pm = torch.einsum("km,kmld->kld", w, p)
    p2 = torch.einsum("km,kml->kl", w, p.pow(2).sum(-1))
    q2 = q.pow(2).sum(-1).mean(1)
    return (q2 + p2 - 2 * (q.mean(1) * pm).sum(-1)).mean()


def local_squared_distance(q: torch.Tensor, p: torch.Tensor, p_w: torch.Tensor | None, k: int) -> torch.Tensor:
    """Median over classes, places and generated points of the squared distance from a point of q
    [K, N, L, d] to its ``k``-th nearest point of p [K, M, L, d] (zero weights in p_w [K, M]:
    absent points), the data's local scale around the particles."""
    a, b = _problems(q), _problems(p)
    dist = torch.cdist(a, b).pow(2)
    if p_w is not None:
        dist = dist.masked_fill(p_w.repeat_interleave(q.shape[2], 0)[:, None] <= 0, math.inf)
    kth = dist.topk(min(k, b.shape[1]), dim=2, largest=False).values[..., -1]
    return kth.clamp_max(torch.finfo(kth.dtype).max).median()  # fewer than k points: no cap


class WFlow(Objective):
    """Regress a one-step generator onto one step of the Sinkhorn-divergence gradient flow,
    in pixel space or in the features of a frozen network (the paper's recipe)."""

    name = "wflow"
    Config = WFlowConfig  # no coupler (its transport plans are its own); CFG is built in
    uses_guidance = True  # a guidance plugin's term on the generated batch

    def __init__(self, config: WFlowConfig, *, spec, coupler=None, guidance=None, features=None) -> None:
        super().__init__(config, spec=spec, coupler=coupler, guidance=guidance)
        self._check(config, spec)
        self.features = features
        self.conditional = spec.num_classes > 0 and config.class_conditional
        if guidance is not None and not self.conditional:
            raise ConfigError(f"guidance {guidance.name!r}: needs labelled data and objective.class_conditional=true")
        # plans ~ exp(-|x - y|^2) on coordinates pre-divided by sqrt(R S): epsilon 1/2 for the cost |x - y|^2 / 2
        cap = max(config.sinkhorn_iters, config.sinkhorn_max_iters) if config.sinkhorn_tol > 0 else config.sinkhorn_iters
        self.solver = SinkhornSolver(0.5, max_iters=cap,
                                     check_every=config.sinkhorn_iters, tol=config.sinkhorn_tol, anneal=False,
                                     precision=config.precision, compile=config.sinkhorn_compile)
        self._bank: torch.Tensor | None = None  # [K, Q, *shape] real samples per class
        self._count: torch.Tensor | None = None  # [K] filled slots (slots 0..count-1 are valid)
        self._next: torch.Tensor | None = None  # [K] next slot to write
        self._bank_fams: list[torch.Tensor] | None = None  # phi of every bank slot, [K, Q, L, d] per family

    @staticmethod
    def _check(c: WFlowConfig, spec) -> None:
        """What the fields' validators cannot see alone: CFG's data and its sampling scale."""
        if c.with_cfg and not (spec.num_classes > 0 and c.class_conditional):
            raise ConfigError("objective.cfg_max: classifier-free guidance needs labelled data (num_classes > 0) "
                              "and objective.class_conditional=true")
        if not c.cfg_min <= c.cfg_scale <= c.cfg_max:
            raise ConfigError(f"objective.cfg_scale: expected in [cfg_min, cfg_max] = [{c.cfg_min}, {c.cfg_max}] "
                              f"(the scales the generator was trained on), got {c.cfg_scale}")

    # ------------------------------------------------------------------------- declarations
    def networks(self):
        return {"generator": NetworkRequest("generator", time_inputs=1 if self.config.with_cfg else 0,
                                            class_conditional=self.conditional)}

    def phases(self):
        return [Phase("generator", "generator")]

    def optim_defaults(self, network):
        return {"lr": self.config.lr, "betas": (0.9, 0.95)}

    def prepare(self, source, device) -> None:
        if self.features is not None:
            self.features.prepare(source, device)

    def state_dict(self):
        if self._bank is None:
            return {}
        return {"bank": self._bank, "count": self._count, "next": self._next}

    def load_state_dict(self, state) -> None:
        if state:
            self._bank, self._count, self._next = state["bank"], state["count"], state["next"]
            self._bank_fams = None

    # ------------------------------------------------------------------------- the flow
    def phi(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Particle families of samples ``x`` (see :func:`feature_families`)."""
        maps = [x.flatten(1)]
        if self.features is not None:
            maps = self.features(x) + (maps if self.config.with_input else [])
        return feature_families(maps, self.config.patch_stats, self.config.global_stats)

    @torch.no_grad()
    def velocity(self, q: list[torch.Tensor], q2: list[torch.Tensor] | None, p: list[torch.Tensor],
                 p_w: torch.Tensor | None = None, u: list[torch.Tensor] | None = None,
                 w: torch.Tensor | None = None, stats: dict | None = None,
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per family f: generated ``q[f]`` [K, N, L, d] (K classes of N particles at L places),
        the second batch ``q2[f]`` (same shape; two-batch self term), real ``p[f]`` [K, M, L, d]
        with weights ``p_w`` [K, M] (zeros: empty bank slots), unconditional data ``u[f]``
        [U, L, d] and CFG scales ``w`` [K] (None: no CFG). Returns the velocities [K, N, L, d]
        and the scales ``s_f`` (u = phi_f / s_f), both in the coordinates of the step rule, and the
        mean raw RMS of the velocities (before normalisation; a tensor, so logging costs no host
        sync). All plans in one batched solve per (vector size, reference size); ``stats`` receives
        their iteration count and marginal error (see :func:`project_stacked`)."""
        c = self.config
        k = q[0].shape[0]
        problems, layout = [], []
        scales = []
        for f, qf in enumerate(q):
            d = qf.shape[-1]
            s2 = mean_squared_distance(qf, p[f], p_w).clamp_min(1e-12)
            scales.append((s2 / d).sqrt())
            cap = local_squared_distance(qf, p[f], p_w, c.local_k) if c.local_k else None
            for r in c.relative_temperatures:
                temp = r * s2 if cap is None else torch.minimum(r * s2, cap).clamp_min(1e-12)
                inv = temp.rsqrt()
                a = _problems(qf * inv)
                refs = [(_problems(p[f] * inv), None if p_w is None else p_w.repeat_interleave(qf.shape[2], 0))]
                if c.self_term == "two-batch":
                    refs.append((_problems(q2[f] * inv), None))
                elif c.self_term == "one-batch":
                    refs.append((a, None))
                if w is not None:
                    uf = (u[f] * inv).permute(1, 0, 2)  # [L, U, d]: the same reference for every class
                    refs.append((uf.repeat(k, 1, 1), None))
                layout.append((f, (temp / s2 * d).sqrt(), len(refs), a))
                problems += [(a, y, b) for y, b in refs]
        projections = iter(project_stacked(self.solver, problems, stats))
        velocities = [torch.zeros_like(qf) for qf in q]
        raw = []
        for f, to_u, n_refs, a in layout:
            t = [next(projections) for _ in range(n_refs)]
            t_data = t[0]
            v = t_data - (t[1] if c.self_term != "none" else a)
            if w is not None:
                v = v + w.repeat_interleave(q[f].shape[2]).view(-1, 1, 1) * (t_data - t[-1])
            v = _unproblems(v, k) * to_u  # from sqrt(temperature) units to u = phi / s_f
            rms = v.pow(2).mean().sqrt()
            raw.append(rms)
            velocities[f] += v / rms.clamp_min(1e-12) if c.normalize_velocity else v
        return [c.eta * v for v in velocities], scales, torch.stack(raw).mean()

    # ------------------------------------------------------------------------- memory bank
    def _push(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Write a labelled batch into the per-class ring buffers (the last ``bank_per_class``
        of each class when a batch holds more)."""
        q = self.config.bank_per_class
        if self._bank is None:
            k = self.spec.num_classes
            self._bank = x.new_zeros(k, q, *x.shape[1:], dtype=torch.float32)
            self._count = torch.zeros(k, dtype=torch.long, device=x.device)
            self._next = torch.zeros(k, dtype=torch.long, device=x.device)
        if self._bank.device != x.device:
            self._bank, self._count, self._next = (t.to(x.device) for t in (self._bank, self._count, self._next))
            self._bank_fams = None
        y = y.long()
        order = torch.argsort(y, stable=True)
        y_sorted = y[order]
        counts = torch.bincount(y, minlength=self.spec.num_classes)
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(y), device=y.device) - start[y_sorted]
        keep = rank >= counts[y_sorted] - q
        cls, rank, rows = y_sorted[keep], rank[keep], order[keep]
        slot = (self._next[cls] + rank) % q
        self._bank[cls, slot] = x[rows].float()
        if self._bank_fams is not None:
            with torch.no_grad():
                for bank_f, f in zip(self._bank_fams, self.phi(x[rows])):
                    bank_f[cls, slot] = f
        self._next = (self._next + counts) % q
        self._count = (self._count + counts).clamp_max(q)

    def _bank_families(self) -> list[torch.Tensor]:
        """Particle families of every bank slot ([K, Q, L, d] each). phi is frozen, so a real
        sample's features are computed once, when it enters the bank (all slots after a resume),
        ``BANK_CHUNK`` samples at a time: the whole ImageNet bank (1,000 classes x 64) in one call
        held its feature maps at once and ran an 80 GB GPU out of memory."""
        if self._bank_fams is None:
            with torch.no_grad():
                parts = [self.phi(chunk) for chunk in self._bank.flatten(0, 1).split(BANK_CHUNK)]
            fams = [torch.cat(family) for family in zip(*parts)]
            self._bank_fams = [f.view(*self._bank.shape[:2], *f.shape[1:]) for f in fams]
        return self._bank_fams

    def _pick_classes(self, batch: int) -> torch.Tensor:
        """``batch // per_class`` distinct classes (at most those present in the bank), uniform."""
        available = (self._count > 0).float()
        n = min(max(1, batch // self.config.per_class), int(available.sum()))
        return torch.multinomial(available, n)

    # ------------------------------------------------------------------------- training
    def loss(self, phase: str, nets: Networks, batches: list[Batch], info: StepInfo):
        c = self.config
        data, labels = batches[0].x, batches[0].y
        gen = nets["generator"]
        if self.conditional:
            self._push(data, labels)
            classes = self._pick_classes(len(data))
            k, n = len(classes), len(data) // len(classes)
            y = classes.repeat_interleave(n)
            slots = torch.arange(c.bank_per_class, device=data.device)
            real_w = (slots[None] < self._count[classes, None]).float()
        else:
            k, n, y = 1, len(data), None
            real_w = None
        cond: dict[str, torch.Tensor] = {}
        w = None
        if self.config.with_cfg:
            t = torch.rand(k, device=data.device)
            w = c.cfg_min + t * (c.cfg_max - c.cfg_min)
            cond["t"] = t.repeat_interleave(n)
        noise = torch.randn(k * n, *data.shape[1:], device=data.device)
        x = gen(noise, y=y, **cond)
        fam_x = self.phi(x)
        with torch.no_grad():
            fam_x2 = None
            if c.self_term == "two-batch":
                fam_x2 = [f.view(k, n, *f.shape[1:]) for f in self.phi(gen(torch.randn_like(x), y=y, **cond))]
            if self.conditional:
                fam_p = [f[classes] for f in self._bank_families()]
            else:
                fam_p = [f[None] for f in self.phi(data.float())]
            fam_u = None
            if w is not None:
                fam_u = self.phi(data[:c.bank_per_class].float())
            fam_q = [f.detach().view(k, n, *f.shape[1:]) for f in fam_x]
            plans: dict = {}
            v, scales, raw_rms = self.velocity(fam_q, fam_x2, fam_p, real_w, fam_u, w, plans)
        losses = []
        for xf, vf, sf in zip(fam_x, v, scales):
            uf = xf.view(k, n, *xf.shape[1:]) / sf
            losses.append((uf - (uf.detach() + vf)).pow(2).mean())
        loss = torch.stack(losses).mean()
        logs = {"velocity_rms": raw_rms, "sinkhorn_error": plans["marginal_error"],
                "sinkhorn_iters": float(plans["iterations"])}
        if self.guidance is not None:
            term, extra = self.guidance.generator_term(nets, x, noise, y, info)
            loss = loss + term
            logs.update({f"guidance_{key}": v for key, v in extra.items()})
        return loss, logs

    # ------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, nets, noise, y, nfe):
        if self.conditional and y is None:
            y = torch.randint(0, self.spec.num_classes, (len(noise),), device=noise.device)
        cond = {}
        if self.config.with_cfg:
            c = self.config
            t = (c.cfg_scale - c.cfg_min) / (c.cfg_max - c.cfg_min)
            cond["t"] = torch.full((len(noise),), t, device=noise.device)
        return nets.ema("generator")(noise, y=y if self.conditional else None, **cond)
