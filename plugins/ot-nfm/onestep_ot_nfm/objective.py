"""OT-NFM: Optimal Transport Neural Flow Matching (arXiv 2604.06413), the whole method.

A neural flow map F(z, t) carries a noise sample z (t = 0) along a path to data (t = 1) and is
identity at t = 0 by construction (the ResNet-flow form of neural flows):

    F(z, t) = z + t * u_theta(z, t)                                              (flow map)

It is regressed onto the straight interpolation between coupled noise and data at every t:

    L(theta) = E_{t ~ U(0,1), (z, x) ~ pi} || F(z, t) - ((1 - t) z + t x) ||^2     (loss)
             = E t^2 || u_theta(z, t) - (x - z) ||^2

so the minimiser is u*(z, t) = E_pi[x | z] - z for every t, and the one-step sample is
F(z, 1) = E_pi[x | z]. With the independent coupling pi = p_z x p_data, E[x | z] is the data
mean for every z: MEAN COLLAPSE (the paper's negative result). A consistent (deterministic)
coupling such as optimal transport makes E[x | z] = T(z) a transport map, and F(., 1) pushes the
noise onto the data. The coupling comes from the run's coupler (``minibatch-ot`` or ``online``;
``independent`` reproduces the collapse); this objective requires one and says so.

Sampling is one evaluation, F(z, 1). The map is indexed from the source time 0 only, so it
cannot be composed from an intermediate point (that needs the inverse or a two-time map): the
only valid ``nfe`` is 1. With labelled data and ``class_conditional`` (the default) it trains one
map per class (the coupler pairs within classes; no label dropout, so no classifier-free
guidance); ``class_conditional: false`` ignores the labels and learns one unconditional map.

Deviation from the paper: neural flows keep F invertible by bounding the Lipschitz constant of
u_theta (spectral normalisation); here u_theta is whatever the chosen backbone builds, so F is
a flow map by its parameterisation but not guaranteed invertible. One-step sampling does not
need the inverse.
"""
from __future__ import annotations

import attrs
import torch

from onestep.errors import ConfigError
from onestep.interfaces import Batch, NetworkRequest, Networks, Objective, Phase, StepInfo


@attrs.define
class OTNFMConfig:
    lr: float = 1e-3
    class_conditional: bool = True  # labelled data: one map per class (False: ignore labels)


class OTNFM(Objective):
    """Neural flow map F(z, t) = z + t u(z, t) regressed on OT-coupled straight paths; 1 NFE."""

    name = "ot-nfm"
    Config = OTNFMConfig
    default_nfe = 1
    ema_networks = ("generator",)

    def __init__(self, config, *, spec, coupler=None, guidance=None) -> None:
        super().__init__(config, spec=spec, coupler=coupler, guidance=guidance)
        if coupler is None:
            raise ConfigError(
                "coupler: objective ot-nfm needs a coupler (--coupler minibatch-ot or online; "
                "independent reproduces mean collapse)")
        if guidance is not None:
            raise ConfigError(f"guidance {guidance.name!r}: objective ot-nfm takes no guidance")
        if not config.lr > 0:
            raise ConfigError(f"objective.lr: expected > 0, got {config.lr}")
        self.conditional = spec.num_classes > 0 and config.class_conditional

    def networks(self):
        return {"generator": NetworkRequest("generator", time_inputs=1, class_conditional=self.conditional)}

    def phases(self):
        return [Phase("flow-map", "generator")]

    def optim_defaults(self, network):
        return {"lr": self.config.lr}

    @staticmethod
    def flow_map(net, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """F(z, t) = z + t * u(z, t): identity at t = 0 whatever the network."""
        return z + t.view(-1, *([1] * (z.dim() - 1))) * net(z, t=t, y=y)

    def loss(self, phase: str, nets: Networks, batches: list[Batch], info: StepInfo):
        x, y = batches[0].x, (batches[0].y if self.conditional else None)
        z, x, y = self.coupler.pair(torch.randn_like(x), x, y)
        t = torch.rand(len(x), device=x.device)
        tb = t.view(-1, *([1] * (x.dim() - 1)))
        target = (1 - tb) * z + tb * x
        loss = (self.flow_map(nets["generator"], z, t, y).float() - target.float()).pow(2).mean()
        return loss, {"pair_cost": (x - z).detach().float().pow(2).flatten(1).sum(1).mean()}

    @torch.no_grad()
    def sample(self, nets, noise, y, nfe):
        if nfe != 1:
            raise ConfigError(f"sample.nfe: objective ot-nfm samples in one evaluation F(z, 1); got {nfe} (valid: 1)")
        t = torch.ones(len(noise), device=noise.device)
        return self.flow_map(nets.ema("generator"), noise, t, y if self.conditional else None)
