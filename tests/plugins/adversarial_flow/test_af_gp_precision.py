"""R1/R2 by finite differences under bf16 autocast: the fp32 critic calls estimate ||grad D||^2
as autograd does; the folded bf16 call does not (a DiT critic from the registry, as trained)."""
import pytest
import torch

from onestep.interfaces import Batch, DataSpec, NetworkRequest, Networks, StepInfo
from onestep_adversarial_flow.objective import AdversarialFlow, AdversarialFlowConfig

SPEC = DataSpec((1, 28, 28), num_classes=10, kind="images")


def dit_critic(registry):
    backbone = registry.build("backbone", "dit", registry.get("backbone", "dit").cls.Config(size="T/7"))
    critic = backbone.build(NetworkRequest("critic", 0, True), SPEC)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # away from the zero-initialised readout and gates, as after some training
        for p in critic.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return critic


@pytest.mark.parametrize("precision, close", [("fp32", True), ("autocast", False)])
def test_finite_difference_r1_under_bf16_autocast(registry, precision, close):
    critic = dit_critic(registry)
    x = torch.randn(1200, *SPEC.shape, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    y = torch.arange(1200) % 10
    v = x[:600].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(v, y=y[:600]).sum(), v)
    exact = float(grad.square().flatten(1).sum(1).mean())

    class Fixed(torch.nn.Module):  # G's output does not matter for R1 (real samples only)
        def forward(self, z, y=None):
            return z

    obj = AdversarialFlow(AdversarialFlowConfig(gp_fraction=0.5, gp_precision=precision), spec=SPEC)
    torch.manual_seed(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, logs = obj.loss("critic", Networks({"generator": Fixed(), "critic": critic}), [Batch(x, y)], StepInfo(0, 1))
    ratio = float(logs["r1"]) / exact
    if close:
        assert ratio == pytest.approx(1.0, abs=0.15), ratio
    else:
        assert abs(ratio - 1.0) > 0.5, ratio  # bf16 rounding dominates the difference of two logits
