"""Flow matching (rectified flow): the multi-step baseline the one-step methods are measured
against.

Straight paths x_t = (1 - t) z + t x between noise z (t = 0) and data x (t = 1), onestep's time
convention (``onestep.interfaces.interpolate``); the network
regresses the constant velocity v = x - z (Lipman et al. 2023, Liu et al. 2023). Sampling
integrates dx/dt = v(x, t) with ``nfe`` Euler steps. With a coupler (e.g. ``minibatch-ot``) the
pairs (z, x) come from it: that is OT-CFM (Tong et al. 2024). Class-conditional data trains with
label dropout so classifier-free guidance can be used at sampling time.
"""
from __future__ import annotations

import attrs
import torch

from onestep.config import at_least, check
from onestep.interfaces import Batch, NetworkRequest, Networks, Objective, Phase, StepInfo, euler, interpolate


@attrs.define
class FlowMatchingConfig:
    nfe: int = attrs.field(default=50, validator=at_least(1))
    """Euler steps at sampling (the baseline is reported at 50)"""
    class_dropout: float = attrs.field(default=0.1, validator=check(lambda v: 0.0 <= v < 1.0, "in [0, 1)"))
    """probability of replacing a label by the null label"""
    guidance_scale: float = 1.0  # classifier-free guidance at sampling; 1.0 = none


class FlowMatching(Objective):
    """Rectified-flow velocity regression with a k-step Euler sampler (multi-step baseline)."""

    name = "flow-matching"
    comparison_role = "baseline"
    Config = FlowMatchingConfig
    ema_networks = ("generator",)
    uses_coupler = True  # classifier-free guidance is built in (objective.guidance_scale): no guidance plugin

    def __init__(self, config, *, spec, coupler=None, guidance=None) -> None:
        super().__init__(config, spec=spec, coupler=coupler, guidance=guidance)
        self.conditional = spec.num_classes > 0

    def default_nfe(self) -> int:
        return self.config.nfe

    def networks(self):
        return {"generator": NetworkRequest("generator", time_inputs=1, class_conditional=self.conditional)}

    def phases(self):
        return [Phase("velocity", "generator")]

    def loss(self, phase: str, nets: Networks, batches: list[Batch], info: StepInfo):
        x, y = batches[0].x, batches[0].y
        z = torch.randn_like(x)
        if self.coupler is not None:
            z, x, y = self.coupler.pair(z, x, y)
        if y is not None and self.config.class_dropout > 0:
            drop = torch.rand(len(y), device=y.device) < self.config.class_dropout
            y = torch.where(drop, torch.full_like(y, self.spec.null_label), y)
        t = torch.rand(len(x), device=x.device)
        xt = interpolate(z, x, t)
        v = nets["generator"](xt, t=t, y=y)
        loss = (v.float() - (x - z).float()).pow(2).mean()
        return loss, {}

    def velocity(self, net, x, t, y):
        if y is None or self.config.guidance_scale == 1.0:
            return net(x, t=t, y=y)
        w = self.config.guidance_scale
        cond = net(x, t=t, y=y)
        uncond = net(x, t=t, y=torch.full_like(y, self.spec.null_label))
        return uncond + w * (cond - uncond)

    @torch.no_grad()
    def sample(self, nets, noise, y, nfe):
        net = nets.ema("generator")
        return euler(lambda x, t: self.velocity(net, x, t, y), noise, nfe)
