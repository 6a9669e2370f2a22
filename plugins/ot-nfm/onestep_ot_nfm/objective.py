"""OT-NFM: Optimal Transport Neural Flow Matching (arXiv 2604.06413), the whole method.

A neural flow map F(z, t) carries a noise sample z (t = 0) along a path to data (t = 1) and is
identity at t = 0 by construction (the ResNet-flow form of neural flows):

    F(z, t) = z + t * u_theta(z, t)                                              (flow map)

It is regressed onto the straight interpolation between coupled noise and data at every t:

    L(theta) = E_{t ~ p(t), (z, x) ~ pi} || F(z, t) - ((1 - t) z + t x) ||^2      (loss)
             = E t^2 || u_theta(z, t) - (x - z) ||^2

so the minimiser is u*(z, t) = E_pi[x | z] - z for every t, and the one-step sample is
F(z, 1) = E_pi[x | z]. With the independent coupling pi = p_z x p_data, E[x | z] is the data
mean for every z: MEAN COLLAPSE (the paper's negative result). A consistent (deterministic)
coupling such as optimal transport makes E[x | z] = T(z) a transport map, and F(., 1) pushes the
noise onto the data. The coupling comes from the run's coupler (``semidiscrete-ot``: the global
OT map, consistent by construction; ``minibatch-ot`` or ``online``; ``independent`` reproduces
the collapse); this objective requires one and says so. With finite data E[x | z] under the global
map is piecewise constant (one training sample per Laguerre cell) and a network fits its local
average, which keeps ~70% of each class's variance; the coupler's ``in_cell`` extension (ours, not
the paper's) moves the target with the noise inside each cell and gives the preset its recall.

Time sampling p(t): the paper samples t ~ U(0, 1). Only F(., 1) is ever sampled, and the
minimiser u* is the same at every t, so ``one_step_share`` of each batch is trained at t = 1
exactly and the rest at t ~ U(0, 1) (which keeps the whole path a flow map).

Parameterisation: ``predict: velocity`` is the ResNet-flow form above; ``predict: data`` writes
the same family as F(z, t) = (1 - t) z + t * g_theta(z, t) (u = g - z), so the network outputs
the endpoint T(z) itself instead of T(z) - z (it need not reproduce the noise exactly to cancel
it; the form the authors of Adversarial Flow use for one-step generators). Both are identity at
t = 0 by construction.

Sampling is one evaluation, F(z, 1). The map is indexed from the source time 0 only, so it
cannot be composed from an intermediate point (that needs the inverse or a two-time map): the
only valid ``nfe`` is 1. With labelled data and ``class_conditional`` (the default) it trains one
map per class (the coupler pairs within classes; no label dropout, so no classifier-free
guidance); ``class_conditional: false`` ignores the labels and learns one unconditional map.

Guidance (``--guidance classifier``, optional): the rows trained at t = 1 are one-step samples
F(z, 1) of the current map; they go to ``guidance.generator_term`` (clean samples, the
``onestep.interfaces.TIME_CONVENTION`` data end) and its term is added to the regression loss.
It needs labels (``class_conditional``) and ``one_step_share > 0``.

Deviation from the paper: neural flows keep F invertible by bounding the Lipschitz constant of
u_theta (spectral normalisation); here u_theta is whatever the chosen backbone builds, so F is
a flow map by its parameterisation but not guaranteed invertible. One-step sampling does not
need the inverse.
"""
from __future__ import annotations

import attrs
import torch

from onestep.config import POSITIVE, check, one_of
from onestep.errors import ConfigError
from onestep.interfaces import Batch, NetworkRequest, Networks, Objective, Phase, StepInfo, interpolate


PREDICTIONS = ("velocity", "data")


@attrs.define
class OTNFMConfig:
    lr: float = attrs.field(default=1e-3, validator=POSITIVE)
    class_conditional: bool = True  # labelled data: one map per class (False: ignore labels)
    one_step_share: float = attrs.field(default=0.5, validator=check(lambda v: 0.0 <= v <= 1.0, "in [0, 1]"))
    """share of each batch trained at t = 1 (the sampled end); the rest t ~ U(0, 1)"""
    predict: str = attrs.field(default="velocity", validator=one_of(PREDICTIONS))
    """velocity: F = z + t u(z, t) | data: F = (1 - t) z + t g(z, t)"""


class OTNFM(Objective):
    """Neural flow map F(z, t) = z + t u(z, t) regressed on OT-coupled straight paths; 1 NFE."""

    name = "ot-nfm"
    Config = OTNFMConfig
    ema_networks = ("generator",)
    uses_coupler = requires_coupler = True  # minibatch-ot, online or semidiscrete-ot; independent reproduces mean collapse
    uses_guidance = True  # on the one-step rows F(z, 1)

    def __init__(self, config, *, spec, coupler=None, guidance=None) -> None:
        super().__init__(config, spec=spec, coupler=coupler, guidance=guidance)
        self.conditional = spec.num_classes > 0 and config.class_conditional
        if guidance is not None and not self.conditional:
            raise ConfigError(f"guidance {guidance.name!r}: needs labelled data and objective.class_conditional=true")
        if guidance is not None and config.one_step_share <= 0:
            raise ConfigError(f"objective.one_step_share: guidance {guidance.name!r} acts on the rows trained at t = 1; "
                              f"expected > 0, got {config.one_step_share}")

    def networks(self):
        return {"generator": NetworkRequest("generator", time_inputs=1, class_conditional=self.conditional)}

    def phases(self):
        return [Phase("flow-map", "generator")]

    def optim_defaults(self, network):
        return {"lr": self.config.lr}

    def flow_map(self, net, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """F(z, t) = z + t * u(z, t) (velocity) or (1 - t) z + t * g(z, t) (data): identity at t = 0
        whatever the network."""
        tb = t.view(-1, *([1] * (z.dim() - 1)))
        out = net(z, t=t, y=y)
        if self.config.predict == "data":
            return z + tb * (out - z)
        return z + tb * out

    def one_step_rows(self, n: int) -> int:
        """Rows of a batch of ``n`` trained at t = 1: round(one_step_share * n), at least one when
        the share is positive."""
        share = self.config.one_step_share
        return max(1, round(share * n)) if share > 0 else 0

    def times(self, n: int, device: torch.device) -> torch.Tensor:
        """t ~ U(0, 1), with the first :meth:`one_step_rows` rows at t = 1."""
        t = torch.rand(n, device=device)
        t[: self.one_step_rows(n)] = 1.0
        return t

    def loss(self, phase: str, nets: Networks, batches: list[Batch], info: StepInfo):
        x, y = batches[0].x, (batches[0].y if self.conditional else None)
        z, x, y = self.coupler.pair(torch.randn_like(x), x, y)
        t = self.times(len(x), x.device)
        target = interpolate(z, x, t)
        mapped = self.flow_map(nets["generator"], z, t, y)
        loss = (mapped.float() - target.float()).pow(2).mean()
        logs = {"pair_cost": (x - z).detach().float().pow(2).flatten(1).sum(1).mean()}
        if self.guidance is not None:
            k = self.one_step_rows(len(x))
            term, extra = self.guidance.generator_term(nets, mapped[:k], z[:k], y[:k], info)
            loss = loss + term
            logs.update({f"guidance_{key}": v for key, v in extra.items()})
        return loss, logs

    @torch.no_grad()
    def sample(self, nets, noise, y, nfe):
        if nfe != 1:
            raise ConfigError(f"sample.nfe: objective ot-nfm samples in one evaluation F(z, 1); got {nfe} (valid: 1)")
        t = torch.ones(len(noise), device=noise.device)
        return self.flow_map(nets.ema("generator"), noise, t, y if self.conditional else None)
