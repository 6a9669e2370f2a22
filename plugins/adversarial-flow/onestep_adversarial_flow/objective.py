"""Adversarial Flow (AF), Lin et al., arXiv 2511.22475: the whole method in one module.

A generator G transports noise to data in one (or a few) steps and is trained adversarially
against a critic D, with an optimal-transport regulariser that picks the unique W2-optimal map
out of the many maps that match the data distribution (Sec. 3.2).

Times and interpolation (Sec. 3.3, Eq. 15): ``x_s = (1 - s) x + s z``. The math below keeps the
paper's times s, t (data at 0, noise at 1) so that it reads against the paper's equations; they
are the reverse of onestep's convention (``onestep.interfaces.TIME_CONVENTION``: noise at 0, data
at 1), and everything that leaves this module follows the convention: x_s is
``interpolate(noise, data, 1 - s)``, and G and D receive their time inputs as 1 - s and 1 - t (a
guidance or a third-party critic sees the same times whichever objective it serves). One-step models
(``time_inputs=0``) use s = 1, t = 0, so ``x_s = z`` and D sees clean data. Any-step models
(``time_inputs=2``) draw s ~ U(0, 1), t ~ U(0, s); the target ``x_t`` interpolates the same data
with independent noise. G(x_s, s, t) = x_s - (s - t) g(x_s, s, t) (residual form, Eq. 31/32) or
g itself (direct form, Eq. 29/30). D sees (x_t, t) only, never the source (Sec. 3.4).

Critic loss (Eq. 13): relativistic ``softplus(-(D(x_t) - D(G)))`` (Eq. 1, 16) + lambda_gp (R1 + R2)
+ lambda_cp (D(x_t) + D(G))^2 (logit centring, Eq. 7). R1/R2 (Eq. 3-6, 18-19) are finite
differences on a ``gp_fraction`` of the batch: w(s,t) (D(v + eps n) - D(v))^2 / eps^2, whose
expectation over n ~ N(0, I) is w ||grad_v D||^2 up to O(eps).

Generator loss (Eq. 14): relativistic ``softplus(-(D(phi(G)) - D(x_t)))`` + lambda_ot L_ot with
L_ot = ||G - x_s||^2 / (n w(s, t)) (Eq. 11, 20), w = max(|s - t|, delta) (Eq. 21); lambda_ot decays
(cosine) from ``lambda_ot`` to the floor ``lambda_ot_end`` (Table 2), plus the guidance term when a
guidance is configured (Eq. 25-26; it receives G's clean one-step sample and keeps its own times
in onestep's convention). phi (Eq. 23) is the identity forward; backward it divides
the incoming gradient by sqrt(n * EMA(||g||^2)) so the adversarial gradient reaching G has a
fixed scale (norm 1/sqrt(numel) over the batch, like the OT gradient's) whatever D's scale.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F

from onestep.config import POSITIVE, at_least, check, one_of
from onestep.errors import ConfigError
from onestep.interfaces import Batch, NetworkRequest, Networks, Objective, Phase, StepInfo, interpolate


GP_PRECISIONS = ("fp32", "fp16", "autocast")


def cat2(v: torch.Tensor | None) -> torch.Tensor | None:
    return torch.cat([v, v]) if v is not None else None


def at_paper_time(x: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Eq. 15, x_s = (1 - s) x + s z at the paper's time s: onestep's :func:`interpolate` at 1 - s."""
    return interpolate(z, x, 1 - s)


def convention(time: torch.Tensor) -> torch.Tensor:
    """A paper time (data at 0) as the network input of onestep's convention (data at 1)."""
    return 1 - time


def relativistic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """f(a, b) = -log sigmoid(a - b) (Jolicoeur-Martineau 2019), averaged."""
    return F.softplus(b - a).mean()


def finite_difference_penalty(perturbed: torch.Tensor, logits: torch.Tensor, eps: float, weight: torch.Tensor) -> torch.Tensor:
    """mean_i w_i (D(v_i + eps n_i) - D(v_i))^2 / eps^2 ~= mean_i w_i ||grad D(v_i)||^2 (Eq. 4-6),
    from ``perturbed = D(v + eps n)`` with n ~ N(0, I) and ``logits = D(v)``."""
    return ((perturbed - logits).float().square() * weight).mean() / eps**2


class CriticLogits(NamedTuple):
    """D of one critic step's rows: the n real rows x_t and generated rows G (the relativistic and
    centring terms); the first k of each, v (``*_probed``, the same logits), and v + eps n
    (``*_perturbed``): R1's finite difference at real rows, R2's at generated rows (Eq. 4-6)."""

    real: torch.Tensor
    fake: torch.Tensor
    real_probed: torch.Tensor
    fake_probed: torch.Tensor
    real_perturbed: torch.Tensor
    fake_perturbed: torch.Tensor


class GradientNormalizer:
    """phi of Eq. 23 with its EMA state (part of the objective's checkpointed state).

    Backward: g -> target * g / sqrt(EMA_beta(N ||g||^2)), N = g.numel(); the EMA is bias-corrected
    like Adam's second moment so the first steps are not inflated. Across processes the squared
    norm is averaged (each keeps its local scale).

    Measured failure (docs/results-history.md, #2026-12-02-af-no-normaliser): when the critic goes
    flat (MNIST latent, once the OT weight has decayed) the normaliser rescales its vanishing
    gradient back to unit size, the generator keeps cancelling whatever signal the critic starts to
    build, and the critic stays flat. ``grad_norm=false`` kept the critic alive and gave the lower
    FID, on CPU and on the latent board (tools/RESULTS.md, "The 16-D latent board"); the latent
    preset turns it off. On by default: it is the paper's method."""

    def __init__(self, decay: float, target: float = 1.0, eps: float = 1e-12) -> None:
        self.decay, self.target, self.eps = decay, target, eps
        self.sq_ema: torch.Tensor | None = None
        self.count = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _NormalizeGradient.apply(x, self)

    def rescale(self, grad: torch.Tensor) -> torch.Tensor:
        sq = grad.float().square().sum() * grad.numel()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sq, op=dist.ReduceOp.AVG)
        if self.sq_ema is None:
            self.sq_ema = torch.zeros((), device=grad.device)
        self.sq_ema = self.sq_ema.to(grad.device).lerp(sq, 1 - self.decay)
        self.count += 1
        unbiased = self.sq_ema / (1 - self.decay**self.count)
        return (grad.float() * (self.target / (unbiased.sqrt() + self.eps))).to(grad.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"sq_ema": float(self.sq_ema) if self.sq_ema is not None else 0.0, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sq_ema = torch.tensor(float(state["sq_ema"]))
        self.count = int(state["count"])


class _NormalizeGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, normalizer: GradientNormalizer) -> torch.Tensor:
        ctx.normalizer = normalizer
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.normalizer.rescale(grad), None


@attrs.define
class AdversarialFlowConfig:
    time_inputs: int = attrs.field(default=0, validator=check(lambda v: v in (0, 2), "0 (one-step) or 2 (any-step)"))
    """0: one-step G(z) with no timestep projection; 2: any-step G(x_s, s, t)"""
    residual: bool = True  # G = x_s - (s - t) g (Eq. 31/32); False: G = g (Eq. 29/30)
    conditional: bool = True  # condition G and D on labels when the data has them
    lambda_ot: float = attrs.field(default=0.2, validator=at_least(0))  # initial OT weight (Table 1)
    lambda_ot_end: float = attrs.field(default=0.005, validator=at_least(0))  # floor of the cosine decay (Table 2, 11)
    ot_decay_steps: int = attrs.field(default=500_000, validator=at_least(1))
    """Training iterations (one critic and one generator update each) over which lambda_ot decays
    to the floor: an absolute horizon, so a short run follows the first part of a long run's
    schedule instead of compressing it. The paper's 1M alternating updates are 500k iterations."""
    steps: int = attrs.field(default=0, validator=at_least(0, "any-step"))
    """Any-step models (time_inputs=2): 0 draws s ~ U(0, 1), t ~ U(0, s) (any-step); k > 0 trains
    the fixed k-step grid s in {1, (k-1)/k, ..., 1/k}, t = s - 1/k (the few-step models)."""
    ot_delta: float = attrs.field(default=0.001, validator=POSITIVE)  # delta in w(s, t) = max(|s - t|, delta) (Eq. 21)
    lambda_gp: float = attrs.field(default=0.25, validator=at_least(0))  # weight of R1 and R2
    gp_fraction: float = attrs.field(default=0.25, validator=check(lambda v: 0 < v <= 1, "in (0, 1]"))
    """share of the batch the finite-difference R1/R2 use"""
    gp_eps: float = attrs.field(default=0.01, validator=POSITIVE)  # perturbation scale of the finite differences
    gp_precision: str = attrs.field(default="fp32", validator=one_of(GP_PRECISIONS))
    """Precision of the finite-difference R1/R2 critic calls: ``fp32`` (the paper's; under bf16
    autocast the difference of two bf16 logits at eps = 0.01 is mostly rounding and overestimates
    ||grad D||^2 several-fold), ``fp16`` (the penalty's call under float16 autocast: matmul inputs keep
    10 mantissa bits as with TF32, 3 more than bf16, which is what the difference needs, at the
    tensor-core rate of bf16 instead of TF32's half of it; float16's range suits a normalised
    critic) or ``autocast`` (all rows in one call at the run's precision: biased under bf16). With
    fp32 and fp16 the penalty call's base logits D(v) also serve the adversarial term, so the
    step computes as many critic rows as with ``autocast``, in two calls."""
    lambda_cp: float = attrs.field(default=0.01, validator=at_least(0))  # logit-centring weight (Eq. 7)
    grad_norm: bool = True  # phi of Eq. 23 on D's input in the generator loss
    grad_norm_decay: float = attrs.field(default=0.9, validator=check(lambda v: 0 <= v < 1, "in [0, 1)"))
    """EMA decay of phi (AdamW's beta2)"""
    lr: float = attrs.field(default=1e-4, validator=POSITIVE)
    weight_decay: float = 0.01


class AdversarialFlow(Objective):
    """Adversarial flow (AF): relativistic GAN + finite-difference R1/R2 + OT loss, 1 or k steps."""

    name = "adversarial-flow"
    Config = AdversarialFlowConfig
    uses_guidance = True  # no coupler: noise and data are drawn independently (Sec. 3.4)

    def __init__(self, config, *, spec, coupler=None, guidance=None) -> None:
        super().__init__(config, spec=spec, coupler=coupler, guidance=guidance)
        c = config
        self.conditional = c.conditional and spec.num_classes > 0
        if guidance is not None and not self.conditional:
            raise ConfigError(f"guidance {guidance.name!r}: needs labelled data and objective.conditional=true")
        if guidance is not None and c.time_inputs != 0:
            raise ConfigError(f"guidance {guidance.name!r}: needs a one-step model (objective.time_inputs=0); an any-step "
                              "G(x_s, s, t) outputs x_t, not a clean sample to noise again")
        self.normalizer = GradientNormalizer(c.grad_norm_decay)

    # ----------------------------------------------------------------------------- declarations
    def networks(self) -> dict[str, NetworkRequest]:
        t = self.config.time_inputs
        return {
            "generator": NetworkRequest("generator", time_inputs=t, class_conditional=self.conditional),
            "critic": NetworkRequest("critic", time_inputs=min(t, 1), class_conditional=self.conditional),
        }

    def phases(self) -> Sequence[Phase]:
        return [Phase("critic", "critic", stream="critic"), Phase("generator", "generator", stream="generator")]

    def optim_defaults(self, network: str) -> dict[str, Any]:
        return {"lr": self.config.lr, "betas": (0.0, 0.9), "weight_decay": self.config.weight_decay}

    def state_dict(self) -> dict[str, Any]:
        return {"grad_norm": self.normalizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.normalizer.load_state_dict(state["grad_norm"])

    # ----------------------------------------------------------------------------- pieces
    def lambda_ot(self, step: int) -> float:
        """Cosine decay from ``lambda_ot`` to ``lambda_ot_end`` over ``ot_decay_steps`` iterations
        (Table 2), then the floor."""
        c = self.config
        p = min(1.0, step / c.ot_decay_steps)
        return c.lambda_ot_end + (c.lambda_ot - c.lambda_ot_end) * 0.5 * (1 + math.cos(math.pi * p))

    def times(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, t) per sample: (1, 0) one-step; the fixed k-step grid; or any-step s ~ U(0,1), t ~ U(0,s)."""
        c = self.config
        if c.time_inputs == 0:
            return torch.ones(n, device=device), torch.zeros(n, device=device)
        if c.steps:
            s = 1.0 - torch.randint(0, c.steps, (n,), device=device).float() / c.steps
            return s, (s - 1.0 / c.steps).clamp_min(0.0)
        s = torch.rand(n, device=device)
        return s, torch.rand(n, device=device) * s

    def transport(self, generator, x_s, s, t, y) -> torch.Tensor:
        """G(x_s, s, t) (Eq. 29-32)."""
        times = {"s": convention(s), "t": convention(t)} if self.config.time_inputs == 2 else {}
        g = generator(x_s, y=y, **times)
        if not self.config.residual:
            return g
        return x_s - (s - t).view(-1, *([1] * (x_s.dim() - 1))).to(g.dtype) * g

    def critic_inputs(self, t: torch.Tensor, y) -> dict[str, Any]:
        cond: dict[str, Any] = {"y": y}
        if self.config.time_inputs:
            cond["t"] = convention(t)
        return cond

    def _draw(self, batches: Sequence[Batch]):
        x = torch.cat([b.x for b in batches])
        y = torch.cat([b.y for b in batches]) if self.conditional else None
        s, t = self.times(x.shape[0], x.device)
        z = torch.randn_like(x)
        x_s = at_paper_time(x, z, s)
        x_t = x if self.config.time_inputs == 0 else at_paper_time(x, torch.randn_like(x), t)
        return x_s, x_t, z, y, s, t

    # ----------------------------------------------------------------------------- losses
    def loss(self, phase: str, nets: Networks, batches: Sequence[Batch], info: StepInfo):
        if phase == "critic":
            return self.critic_loss(nets, batches)
        if phase == "generator":
            return self.generator_loss(nets, batches, info)
        return super().loss(phase, nets, batches, info)

    def critic_loss(self, nets: Networks, batches: Sequence[Batch]):
        """Eq. 13: the relativistic loss (Eq. 1, 16) + lambda_gp (R1 + R2) + lambda_cp (logit
        centring, Eq. 7). R1 and R2 (Eq. 4-6) are finite differences at the first k real and
        generated rows v: w (D(v + eps n) - D(v))^2 / eps^2."""
        c = self.config
        x_s, x_t, _, y, s, t = self._draw(batches)
        with torch.no_grad():
            fake = self.transport(nets["generator"], x_s, s, t, y).to(x_t.dtype)
        k = max(1, round(x_t.shape[0] * c.gp_fraction))
        w = (s - t).abs().clamp_min(c.ot_delta)[:k]
        probed = torch.cat([x_t[:k], fake[:k]])  # v: the real rows R1 probes, then the generated rows R2 probes
        perturbed = probed + c.gp_eps * torch.randn_like(probed)  # v + eps n
        d = self.critic_logits(nets, x_t, fake, perturbed, t, y)
        adv = relativistic(d.real, d.fake)
        r1 = finite_difference_penalty(d.real_perturbed, d.real_probed, c.gp_eps, w)
        r2 = finite_difference_penalty(d.fake_perturbed, d.fake_probed, c.gp_eps, w)
        centring = (d.real + d.fake).square().mean()
        loss = adv + c.lambda_gp * (r1 + r2) + c.lambda_cp * centring
        logs = {"adv": adv.detach(), "r1": r1.detach(), "r2": r2.detach(), "centring": centring.detach(),
                "logit_real": d.real.mean().detach(), "logit_fake": d.fake.mean().detach()}
        return loss, logs

    def critic_logits(self, nets: Networks, real: torch.Tensor, fake: torch.Tensor, perturbed: torch.Tensor,
                      t: torch.Tensor, y) -> CriticLogits:
        """The critic's logits of one critic step (see :class:`CriticLogits`), in float32, each row
        computed once, at ``gp_precision``:

        - ``fp32`` / ``fp16``: the probed rows and their perturbed copies in one call with autocast
          off (or in float16), since the difference of two logits must not be bf16 rounding; the
          other n - k real and generated rows in a second call at the run's precision. The plain
          critic: its engine's forward would switch the run's autocast back on.
        - ``autocast``: all rows in one call at the run's precision (larger matmuls, fewer
          launches; biased under bf16). Exact only for critics that treat samples independently
          (no batch statistics)."""
        n, k = real.shape[0], perturbed.shape[0] // 2
        if self.config.gp_precision == "autocast":
            cond = self.critic_inputs(torch.cat([t, t, t[:k], t[:k]]), torch.cat([y, y, y[:k], y[:k]]) if y is not None else None)
            d_real, d_fake, real_perturbed, fake_perturbed = nets["critic"](
                torch.cat([real, fake, perturbed]), **cond).float().split([n, n, k, k])
            return CriticLogits(d_real, d_fake, d_real[:k], d_fake[:k], real_perturbed, fake_perturbed)
        device = real.device.type
        precision = (torch.autocast(device, enabled=False) if self.config.gp_precision == "fp32"  # no cache: the
                     else torch.autocast(device, dtype=torch.float16, cache_enabled=False))  # run's holds bf16 casts
        with precision:
            cond = self.critic_inputs(cat2(cat2(t[:k])), cat2(cat2(y[:k])) if y is not None else None)
            real_probed, fake_probed, real_perturbed, fake_perturbed = nets.plain("critic")(
                torch.cat([real[:k], fake[:k], perturbed]).float(), **cond).float().split([k, k, k, k])
        d_real, d_fake = real_probed, fake_probed
        if k < n:
            cond = self.critic_inputs(cat2(t[k:]), cat2(y[k:]) if y is not None else None)
            rest_real, rest_fake = nets["critic"](torch.cat([real[k:], fake[k:]]), **cond).float().split([n - k, n - k])
            d_real, d_fake = torch.cat([real_probed, rest_real]), torch.cat([fake_probed, rest_fake])
        return CriticLogits(d_real, d_fake, real_probed, fake_probed, real_perturbed, fake_perturbed)

    def generator_loss(self, nets: Networks, batches: Sequence[Batch], info: StepInfo):
        """Eq. 14: the relativistic loss of D(phi(G)) against D(x_t) + lambda_ot L_ot (Eq. 11, 20),
        plus the guidance term (Eq. 25-26) when a guidance is configured."""
        c = self.config
        x_s, x_t, z, y, s, t = self._draw(batches)
        fake = self.transport(nets["generator"], x_s, s, t, y)
        shown = self.normalizer(fake) if c.grad_norm else fake
        critic = nets["critic"]
        gen = critic(shown, **self.critic_inputs(t, y)).float()
        with torch.no_grad():
            real = critic(x_t, **self.critic_inputs(t, y)).float()
        adv = relativistic(gen, real)
        w = (s - t).abs().clamp_min(c.ot_delta)
        ot = ((fake.float() - x_s.float()).square().flatten(1).mean(1) / w).mean()
        lam = self.lambda_ot(info.step)
        loss = adv + lam * ot
        logs: dict[str, Any] = {"adv": adv.detach(), "ot": ot.detach(), "lambda_ot": lam}
        if self.guidance is not None:
            term, extra = self.guidance.generator_term(nets, fake, z, y, info)
            loss = loss + term
            logs.update({f"guidance_{k}": v for k, v in extra.items()})
        return loss, logs

    # ----------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, nets: Networks, noise: torch.Tensor, y, nfe: int) -> torch.Tensor:
        """x_0 from x_1 = noise in ``nfe`` steps on the uniform grid tau_i = i / nfe (App. H,
        Eq. 39); a one-step model (time_inputs=0) takes nfe = 1 only."""
        if nfe < 1:
            raise ValueError(f"objective adversarial-flow: nfe must be >= 1, got {nfe}")
        if self.config.time_inputs == 0 and nfe != 1:
            raise ValueError(
                f"objective adversarial-flow: a one-step model (time_inputs=0) samples with nfe=1, got nfe={nfe}; "
                "train with objective.time_inputs=2 for multi-step sampling"
            )
        generator = nets.ema("generator")
        if self.conditional and y is None:
            y = torch.randint(self.spec.num_classes, (noise.shape[0],), device=noise.device)
        y = y if self.conditional else None
        taus = torch.linspace(1, 0, nfe + 1, device=noise.device)
        x = noise
        for i in range(nfe):
            s = taus[i].expand(x.shape[0])
            t = taus[i + 1].expand(x.shape[0])
            x = self.transport(generator, x, s, t, y)
        return x
