"""External reference for ``onestep compare`` and ``onestep board``: torchcfm's OT-CFM (Tong et al. 2024, "Improving
and generalizing flow-based generative models with minibatch optimal transport", Alg. 3).

The training pairs, times and target velocities come from torchcfm's
``ExactOptimalTransportConditionalFlowMatcher`` (exact minibatch OT plan between noise x0 and data
x1, pairs drawn from the plan, x_t = t x1 + (1 - t) x0 + sigma eps, u_t = x1 - x0); the network
regresses u_t. Samples integrate dx/dt = v(x, t) from t = 0 (noise) to 1 with ``nfe`` Euler steps.
It runs inside onestep's trainer as an objective, so it gets the same backbone, data stream,
optimizer, EMA and wall-clock budget as the methods it is compared with. A plugin like every
method (entry point ``torchcfm-peer``), so the core does not depend on torchcfm.
"""
from __future__ import annotations

import attrs
import torch

from onestep.config import at_least
from onestep.errors import ConfigError
from onestep.interfaces import NetworkRequest, Objective, Phase, euler


@attrs.define
class TorchCFMConfig:
    sigma: float = 0.0  # torchcfm's path noise
    nfe: int = attrs.field(default=50, validator=at_least(1))  # Euler steps at sampling


class TorchCFMOTCFM(Objective):
    """torchcfm's OT-CFM (exact minibatch OT) with an Euler sampler: the external reference row."""

    name = "torchcfm-ot-cfm"
    comparison_role = "peer"
    Config = TorchCFMConfig  # no coupler or guidance plugin: torchcfm pairs the batch itself

    def __init__(self, config, *, spec, coupler=None, guidance=None) -> None:
        super().__init__(config, spec=spec, coupler=coupler, guidance=guidance)
        try:
            from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher
        except ImportError:
            raise ConfigError("the torchcfm peer needs the package torchcfm (pip install torchcfm); "
                              "or run `onestep compare --no-peer`") from None
        self.matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=config.sigma)
        self.conditional = spec.num_classes > 0

    def default_nfe(self) -> int:
        return self.config.nfe

    def networks(self):
        return {"generator": NetworkRequest("generator", time_inputs=1, class_conditional=self.conditional)}

    def phases(self):
        return [Phase("velocity", "generator")]

    def loss(self, phase, nets, batches, info):
        x1, y1 = batches[0].x, batches[0].y
        x0 = torch.randn_like(x1)
        if self.conditional:
            t, xt, ut, _, y = self.matcher.guided_sample_location_and_conditional_flow(x0, x1, None, y1)
        else:
            t, xt, ut = self.matcher.sample_location_and_conditional_flow(x0, x1)
            y = None
        v = nets["generator"](xt, t=t, y=y)
        return (v.float() - ut.float()).pow(2).mean(), {}

    @torch.no_grad()
    def sample(self, nets, noise, y, nfe):
        net = nets.ema("generator")
        return euler(lambda x, t: net(x, t=t, y=y if self.conditional else None), noise, nfe)
