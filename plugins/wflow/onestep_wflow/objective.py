"""W-Flow: one-step generation by compressing a Sinkhorn-divergence Wasserstein gradient flow
(Han, Li, Guo, Xu, Ermon, Candes; arXiv 2605.11755). The whole method is this module.

The Wasserstein gradient flow of F(q) = S_eps(q, p) (the debiased Sinkhorn divergence) moves a
particle x with velocity ``-grad (f_{q,p} - f_{q,q})(x)``. For the cost |x - y|^2 / 2 the
gradient of an entropic potential is ``x - T(x)`` with T the barycentric projection through the
entropic plan, ``T_{A,B}(a_i) = sum_j pi_ij b_j / sum_j pi_ij``, so the velocity is::

    V(x_i) = T_{q,p}(x_i) - T_{q,q'}(x_i)                                   (pull - debias)

The self term is estimated with a SECOND independent batch of particles ``x' = f(z')``
(``self_term = "two-batch"``): projecting a batch onto itself (``"one-batch"``) couples every
particle with itself at zero cost and biases V toward contraction; ``"none"`` drops the
debiasing (V = T_{q,p}(x) - x, the raw entropic-OT flow). Both are kept for ablation.

One training step takes one explicit Euler step of the flow and regresses the generator onto
it: ``target_i = stopgrad(x_i + eta V(x_i))``, ``loss = mean_i ||f(z_i) - target_i||^2 / n``
(n = elements per sample: the per-element mean, as torch's MSE, so eta and the learning rate
transfer across data sizes; the gradient is then ``-2 eta V / (B n)`` per output).

Class-conditional data: the generator takes labels; particles are drawn with the labels of the
data batch, and every projection is computed per class (one batched Sinkhorn call over
classes: ``T_{q|c,p|c}``, ``T_{q|c,q'|c}``). Classifier-free guidance is baked into the
target with scale w, using a small unconditional data batch ``p_u`` as extra reference::

    V_w = (T_{q|c,p|c} - T_{q|c,q'|c}) + w (T_{q|c,p|c} - T_{q|c,p_u})

The generator is a pure one-step map (no time input), so w is fixed per run
(``guidance_scale``); sampling is one evaluation ``x = f(z, y)``.
"""
from __future__ import annotations

import attrs
import torch

from onestep.errors import ConfigError
from onestep.interfaces import Batch, NetworkRequest, Networks, Objective, Phase, StepInfo
from onestep_sinkhorn import Groups, SinkhornSolver

SELF_TERMS = ("two-batch", "one-batch", "none")


@attrs.define
class WFlowConfig:
    eta: float = 1.0
    """Euler step of the particle flow in the target ``x + eta V``. With eta = 1 the target of a
    particle is its data projection corrected by the self term; on the 2D toys the particle flow
    itself (no network) settles the 8 modes in ~100 such steps at eta = 1, and larger steps
    overshoot between modes. (Adam normalises the gradient scale, so eta mostly sets how far
    the target lies, not the update size.)"""
    epsilon: float = 0.05
    """Entropic temperature PER DATA ELEMENT: the solver uses ``epsilon * n`` in units of the
    cost |x - y|^2 / 2, so the sharpness of the plan is comparable across data sizes
    (2D toys: eps = 0.1, blur sqrt(0.1) ~ 0.32, about the mode width; MNIST: eps ~ 39)."""
    self_term: str = "two-batch"
    """Estimator of the debiasing term T_{q,q}: two-batch (paper), one-batch or none (ablations)."""
    guidance_scale: float = 0.0
    """CFG scale w in V_w (class-conditional data only); 0 disables. The paper shows 0.15 and 2.0."""
    class_conditional: bool = True
    """Use the labels of labelled data (per-class plans, a label-conditioned generator). False
    trains one unconditional map with one plan per batch (more points per plan)."""
    uncond_fraction: float = 0.25
    """Size of the unconditional reference batch p_u as a fraction of the data batch."""
    scaling: float = 0.8
    """Sinkhorn epsilon-scaling ratio (blur shrinks by this per annealing iteration). 0.8 anneals
    a 2D toy batch in ~15 iterations; 0.9 doubles that for projections that differ by < 5% of
    the step (measured against converged plans), not worth it inside a training loop."""
    max_iters: int = 20
    """Sinkhorn iterations at the target temperature after annealing (a cap)."""
    tol: float = 1e-2
    """Sinkhorn stops when the max log row-marginal violation is below this. The projection only
    needs g (it is row-normalised), and a stochastic target tolerates percent-level errors."""
    lr: float = 1e-3


class WFlow(Objective):
    """Regress a one-step generator onto one Euler step of the Sinkhorn-divergence gradient flow."""

    name = "wflow"
    Config = WFlowConfig
    default_nfe = 1

    def __init__(self, config: WFlowConfig, *, spec, coupler=None, guidance=None) -> None:
        super().__init__(config, spec=spec, coupler=coupler, guidance=guidance)
        if coupler is not None:
            raise ConfigError(f"coupler {coupler.name!r}: wflow takes no coupler (its transport plans are its own)")
        if guidance is not None:
            raise ConfigError(f"guidance {guidance.name!r}: wflow takes no guidance plugin "
                              "(classifier-free guidance is built in: objective.guidance_scale)")
        if config.self_term not in SELF_TERMS:
            raise ConfigError(f"objective.self_term: expected one of {', '.join(SELF_TERMS)}, got {config.self_term!r}")
        if config.eta <= 0:
            raise ConfigError(f"objective.eta: expected > 0, got {config.eta}")
        if config.epsilon <= 0:
            raise ConfigError(f"objective.epsilon: expected > 0, got {config.epsilon}")
        if config.guidance_scale < 0:
            raise ConfigError(f"objective.guidance_scale: expected >= 0, got {config.guidance_scale}")
        if config.guidance_scale > 0 and (spec.num_classes == 0 or not config.class_conditional):
            raise ConfigError("objective.guidance_scale: classifier-free guidance needs labelled data "
                              "(num_classes > 0) and objective.class_conditional=true")
        if not 0 < config.uncond_fraction <= 1:
            raise ConfigError(f"objective.uncond_fraction: expected in (0, 1], got {config.uncond_fraction}")
        self.conditional = spec.num_classes > 0 and config.class_conditional
        self.solver = SinkhornSolver(config.epsilon * spec.numel, config.scaling, config.max_iters, config.tol)

    def networks(self):
        return {"generator": NetworkRequest("generator", time_inputs=0, class_conditional=self.conditional)}

    def phases(self):
        return [Phase("generator", "generator")]

    def optim_defaults(self, network):
        return {"lr": self.config.lr}

    def _project(self, a: torch.Tensor, refs: list[torch.Tensor], a_w: torch.Tensor, ref_w: torch.Tensor) -> list[torch.Tensor]:
        """Barycentric projections T_{a, r} for several equally shaped references r [G, L, d],
        solved in ONE batched Sinkhorn call (references stacked along the batch dimension)."""
        k = len(refs)
        res = self.solver.solve(a.repeat(k, 1, 1), torch.cat(refs), a_w.repeat(k, 1), ref_w.repeat(k, 1))
        return list(res.barycentric_projection(torch.cat(refs)).chunk(k))

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, x2: torch.Tensor | None, data: torch.Tensor, y: torch.Tensor | None,
                 uncond: torch.Tensor | None = None) -> torch.Tensor:
        """V (or V_w) at particles ``x`` [B, n] from the second batch ``x2`` [B, n] (same labels),
        data [B, n] with labels ``y`` (None: one group) and, for CFG, unconditional data [U, n]."""
        groups = Groups.by_label(y) if y is not None else Groups.single(len(x), x.device)
        w = groups.weights
        q, p = groups.gather(x.float()), groups.gather(data.float())
        refs = [p]
        if self.config.self_term == "two-batch":
            refs.append(groups.gather(x2.float()))
        elif self.config.self_term == "one-batch":
            refs.append(q)
        t = self._project(q, refs, w, w)
        t_qp = t[0]
        v = t_qp - (t[1] if len(t) > 1 else q)
        if uncond is not None and self.config.guidance_scale > 0:
            u = uncond.float().unsqueeze(0).expand(len(q), -1, -1)
            t_qu = self.solver.solve(q, u, w, None).barycentric_projection(u)
            v = v + self.config.guidance_scale * (t_qp - t_qu)
        return groups.scatter(v, len(x))

    def loss(self, phase: str, nets: Networks, batches: list[Batch], info: StepInfo):
        data, y = batches[0].x, batches[0].y
        gen = nets["generator"]
        y_in = y if self.conditional else None
        x = gen(torch.randn_like(data), y=y_in)
        x2 = None
        if self.config.self_term == "two-batch":
            with torch.no_grad():
                x2 = gen(torch.randn_like(data), y=y_in)
        uncond = None
        if self.conditional and self.config.guidance_scale > 0:
            count = max(1, round(self.config.uncond_fraction * len(data)))
            uncond = data[torch.randperm(len(data), device=data.device)[:count]].flatten(1)
        flat = x.detach().flatten(1)
        v = self.velocity(flat, x2.flatten(1) if x2 is not None else None, data.flatten(1), y_in, uncond)
        target = (flat.float() + self.config.eta * v).view_as(x)
        loss = (x.float() - target).pow(2).mean()
        return loss, {"velocity_rms": float(v.pow(2).mean().sqrt())}

    @torch.no_grad()
    def sample(self, nets, noise, y, nfe):
        if self.conditional and y is None:
            y = torch.randint(0, self.spec.num_classes, (len(noise),), device=noise.device)
        return nets.ema("generator")(noise, y=y if self.conditional else None)
