"""AF's pieces against their definitions: gradient normalisation (Eq. 23), finite-difference
R1/R2 (Eq. 4-6) against the exact autograd penalty, the lambda_ot schedule and the few-step map."""
import math

import pytest
import torch
from torch import nn

from onestep.config import structure
from onestep.errors import ConfigError
from onestep.interfaces import Batch, DataSpec, NetworkRequest, Networks, StepInfo
from onestep_adversarial_flow.objective import (
    AdversarialFlow, AdversarialFlowConfig, GradientNormalizer, finite_difference_penalty,
)

POINTS = DataSpec((2,))


class ScaledCritic(nn.Module):
    """A small fixed MLP critic whose logits are multiplied by ``scale``."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 1))
        self.scale = scale

    def forward(self, x, s=None, t=None, y=None):
        return self.scale * self.net(x.flatten(1)).squeeze(1)


class Shift(nn.Module):
    """Generator g(z) = b (so G(z) = z - b in residual form): G(z) carries the gradient."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, x, s=None, t=None, y=None):
        return self.b.expand_as(x)


def adversarial_gradient_norms(scale: float, grad_norm: bool, steps: int = 20) -> list[float]:
    """Norm of d(adversarial loss)/d G(z) over the batch, step after step, with a critic of the
    given output scale (lambda_ot = 0 so only the adversarial term reaches G(z))."""
    cfg = AdversarialFlowConfig(lambda_ot=0.0, lambda_ot_end=0.0, grad_norm=grad_norm)
    obj = AdversarialFlow(cfg, spec=POINTS)
    nets = Networks({"generator": Shift(2), "critic": ScaledCritic(2, scale)})
    nets["critic"].requires_grad_(False)
    norms = []
    torch.manual_seed(0)
    for step in range(steps):
        seen = {}
        original = obj.transport

        def transport(*args, **kw):
            out = original(*args, **kw)
            out.register_hook(lambda g: seen.setdefault("g", g))
            return out

        obj.transport = transport
        loss, _ = obj.loss("generator", nets, [Batch(3 * torch.randn(64, 2))], StepInfo(step, steps))
        obj.transport = original
        loss.backward()
        norms.append(float(seen["g"].norm()))
    return norms


def test_gradient_normalization_gives_the_target_scale_whatever_the_critic_scale():
    n = 64 * 2  # elements of G(z) in the batch: phi scales the gradient to norm 1 / sqrt(n)
    target = 1 / math.sqrt(n)
    for scale in (1.0, 1000.0):
        norms = adversarial_gradient_norms(scale, grad_norm=True)
        assert norms[0] == pytest.approx(target, rel=1e-4)  # bias-corrected EMA: exact on step 1
        assert all(0.5 * target < v < 2 * target for v in norms), (scale, norms)
    plain = [sum(adversarial_gradient_norms(s, grad_norm=False)) for s in (1.0, 1000.0)]
    assert plain[1] > 30 * plain[0]  # without phi the gradient follows the critic's scale


def test_gradient_normalizer_is_identity_forward_and_keeps_its_state():
    phi = GradientNormalizer(decay=0.9)
    x = torch.randn(8, 3, requires_grad=True)
    y = phi(x)
    assert torch.equal(y, x)
    (5 * y).sum().backward()
    torch.testing.assert_close(x.grad.norm(), torch.tensor(1 / math.sqrt(24)))
    restored = GradientNormalizer(decay=0.9)
    restored.load_state_dict(phi.state_dict())
    assert restored.count == 1 and float(restored.sq_ema) == pytest.approx(float(phi.sq_ema))


def test_finite_difference_r1_r2_approximate_the_autograd_gradient_penalty():
    torch.manual_seed(0)
    critic = ScaledCritic(6, 3.0)
    v = torch.randn(4000, 6)
    weight = torch.rand(4000) + 0.5
    exact_v = v.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(exact_v).sum(), exact_v)
    exact = (grad.square().sum(1) * weight).mean()
    with torch.no_grad():
        fd = finite_difference_penalty(critic(v + 0.01 * torch.randn_like(v)), critic(v), 0.01, weight)
    assert float(fd) == pytest.approx(float(exact), rel=0.05)
    # and its gradient w.r.t. the critic's weights follows the exact penalty's
    params = [p for name, p in critic.named_parameters() if name != "net.2.bias"]  # the output bias cancels
    exact_v = v.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(exact_v).sum(), exact_v, create_graph=True)
    g_exact = torch.autograd.grad((grad.square().sum(1) * weight).mean(), params)
    perturbed = critic(v + 0.01 * torch.randn_like(v))
    g_fd = torch.autograd.grad(finite_difference_penalty(perturbed, critic(v), 0.01, weight), params)
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in g_fd]),
                                                torch.cat([g.flatten() for g in g_exact]), dim=0)
    assert cos > 0.95


def test_critic_loss_applies_r1_r2_to_the_configured_fraction():
    calls = []

    class Recording(ScaledCritic):
        def forward(self, x, s=None, t=None, y=None):
            calls.append(x.shape[0])
            return super().forward(x)

    obj = AdversarialFlow(AdversarialFlowConfig(gp_fraction=0.25, gp_precision="autocast"), spec=POINTS)
    nets = Networks({"generator": Shift(2), "critic": Recording(2, 1.0)})
    loss, logs = obj.loss("critic", nets, [Batch(torch.randn(40, 2))], StepInfo(0, 10))
    assert calls == [100]  # real, fake, and R1/R2's perturbed copies of 25% of each, in one call
    assert torch.isfinite(loss) and logs["r1"] > 0 and logs["r2"] > 0


def test_lambda_ot_decays_over_an_absolute_horizon_of_steps():
    """A short run and a long run share the same lambda_ot at the same step: the schedule is a
    function of the step and ``ot_decay_steps``, not of the run's length."""
    obj = AdversarialFlow(AdversarialFlowConfig(lambda_ot=0.2, lambda_ot_end=0.01, ot_decay_steps=1000), spec=POINTS)
    values = [obj.lambda_ot(step) for step in (0, 100, 250, 400, 500, 999, 1000, 5000)]
    assert values[0] == pytest.approx(0.2) and values[-1] == pytest.approx(0.01) == values[-2]
    assert all(a > b for a, b in zip(values[:6], values[1:6]))
    gen, critic = Shift(2), ScaledCritic(2, 1.0)
    lams = []
    for total in (300, 30000):  # a short and a long run, both at step 250
        _, logs = obj.loss("generator", Networks({"generator": gen, "critic": critic}), [Batch(torch.randn(8, 2))],
                           StepInfo(250, total))
        lams.append(logs["lambda_ot"])
    assert lams[0] == lams[1] == pytest.approx(values[2])


def test_fixed_step_grid_for_few_step_models():
    obj = AdversarialFlow(AdversarialFlowConfig(time_inputs=2, steps=4), spec=POINTS)
    s, t = obj.times(4000, "cpu")
    assert sorted(set(s.tolist())) == [0.25, 0.5, 0.75, 1.0]
    torch.testing.assert_close(s - t, torch.full_like(s, 0.25))


def test_any_step_map_is_residual_and_the_critic_sees_only_x_t():
    obj = AdversarialFlow(AdversarialFlowConfig(time_inputs=2), spec=POINTS)
    reqs = obj.networks()
    assert reqs["generator"] == NetworkRequest("generator", 2, False)
    assert reqs["critic"] == NetworkRequest("critic", 1, False)
    gen = Shift(2)
    with torch.no_grad():
        gen.b.fill_(1.0)
    x = torch.randn(5, 2)
    s, t = torch.full((5,), 0.8), torch.full((5,), 0.3)
    torch.testing.assert_close(obj.transport(gen, x, s, t, None), x - 0.5)
    # k-NFE sampling walks the uniform grid 1 -> 0: with g = 1 the steps add up to x - 1
    nets = Networks({"generator": gen})
    for nfe in (1, 2, 4):
        torch.testing.assert_close(obj.sample(nets, x, None, nfe), x - 1.0)
    with pytest.raises(ValueError, match="nfe"):
        AdversarialFlow(AdversarialFlowConfig(), spec=POINTS).sample(nets, x, None, 2)


def test_ot_weight_is_one_over_the_time_gap():
    """L_ot = ||G - x_s||^2 / (n max(|s - t|, delta)) (Eq. 20-21): checked through the loss."""
    obj = AdversarialFlow(AdversarialFlowConfig(time_inputs=2, ot_delta=0.05, lambda_ot=1.0, lambda_ot_end=1.0),
                          spec=POINTS)
    gen = Shift(2)
    with torch.no_grad():
        gen.b.fill_(2.0)
    nets = Networks({"generator": gen, "critic": ScaledCritic(2, 1.0)})
    x = torch.randn(1000, 2)
    torch.manual_seed(3)
    s_t = obj.times(1000, "cpu")
    torch.manual_seed(3)
    _, logs = obj.loss("generator", nets, [Batch(x)], StepInfo(0, 10))
    s, t = s_t
    expected = ((s - t) ** 2 * 4 / (s - t).abs().clamp_min(0.05)).mean()
    assert float(logs["ot"]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("field,value", [("time_inputs", 1), ("gp_fraction", 0.0), ("lambda_gp", -1.0),
                                         ("ot_decay_steps", 0), ("grad_norm_decay", 1.0),
                                         ("gp_precision", "fp8"), ("steps", -1)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^objective.{field}: expected ") as err:
        structure({field: value}, AdversarialFlowConfig, "objective")
    assert "\n" not in str(err.value)


class TimeSpy(nn.Module):
    """Records the time inputs it receives; outputs zeros (a critic's logits or g = 0)."""

    def __init__(self, critic: bool) -> None:
        super().__init__()
        self.critic, self.seen = critic, []
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, s=None, t=None, y=None):
        self.seen.append({"s": s, "t": t})
        return (x.flatten(1).sum(1) if self.critic else x) * self.w


def test_networks_take_times_in_onestep_convention_data_at_one():
    """AF's math runs on the paper's times (data at 0), but G and D receive onestep's convention
    (interfaces.TIME_CONVENTION, data at 1): on the one-step grid (s = 1 noise, t = 0 data) the
    generator is told s = 0 (noise end) and t = 1, and the critic, which sees clean data, t = 1."""
    obj = AdversarialFlow(AdversarialFlowConfig(time_inputs=2, steps=1), spec=POINTS)
    gen, critic = TimeSpy(False), TimeSpy(True)
    x = torch.randn(6, 2)
    obj.loss("generator", Networks({"generator": gen, "critic": critic}), [Batch(x)], StepInfo(0, 10))
    torch.testing.assert_close(gen.seen[0]["s"], torch.zeros(6))
    torch.testing.assert_close(gen.seen[0]["t"], torch.ones(6))
    assert all(torch.equal(call["t"], torch.ones_like(call["t"])) for call in critic.seen)
