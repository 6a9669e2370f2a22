"""AF's critic and generator losses of one step, on a fixed toy batch and seed, equal a frozen copy
of the loss code as it was before the critic's logits call was extracted (the refactor must not
change a number): every loss term, the losses and the networks' gradients, for each critic
precision and for the one-step and any-step maps. The frozen copy below is the reference; two
values it gave on the machine the refactor was made on are pinned too (fp32 arithmetic, toy size)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onestep.interfaces import Batch, DataSpec, Networks, StepInfo
from onestep_adversarial_flow.objective import AdversarialFlow, AdversarialFlowConfig

SPEC = DataSpec((6,), num_classes=3)


class Net(nn.Module):
    """A small MLP of x, the label and any time inputs (what D and G see in the objective)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(6 + 3 + 2, 24), nn.SiLU(), nn.Linear(24, 6))

    def features(self, x, y, s=None, t=None):
        times = [v.view(-1, 1).to(x.dtype) if v is not None else torch.zeros(len(x), 1, dtype=x.dtype) for v in (s, t)]
        return self.net(torch.cat([x, F.one_hot(y, 3).to(x.dtype), *times], 1))


class Generator(Net):
    def forward(self, x, y=None, s=None, t=None):
        return self.features(x, y, s, t)


class Critic(Net):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.head = nn.Linear(6, 1)

    def forward(self, x, y=None, t=None):
        return self.head(self.features(x, y, None, t)).squeeze(1)


# ------------------------------------------------------------------ frozen copy of the old code
def _frozen_relativistic(a, b):
    return F.softplus(b - a).mean()


def _frozen_penalty(moved, logits, eps, weight):
    return ((moved - logits).float().square() * weight).mean() / eps**2


def _cat2(v):
    return torch.cat([v, v]) if v is not None else None


def frozen_critic_loss(self, nets, batches):
    c = self.config
    x_s, x_t, _, y, s, t = self._draw(batches)
    with torch.no_grad():
        fake = self.transport(nets["generator"], x_s, s, t, y).to(x_t.dtype)
    n = x_t.shape[0]
    k = max(1, round(n * c.gp_fraction))
    w = (s - t).abs().clamp_min(c.ot_delta)[:k]
    moved = torch.cat([x_t[:k], fake[:k]])
    nudged = moved + c.gp_eps * torch.randn_like(moved)
    tk, yk = torch.cat([t[:k], t[:k]]), (torch.cat([y[:k], y[:k]]) if y is not None else None)
    if c.gp_precision in ("fp32", "fp16"):
        device = x_t.device.type
        precision = (torch.autocast(device, enabled=False) if c.gp_precision == "fp32"
                     else torch.autocast(device, dtype=torch.float16, cache_enabled=False))
        with precision:
            both = nets.plain("critic")(torch.cat([moved, nudged]).float(), **self.critic_inputs(_cat2(tk), _cat2(yk))).float()
        base_real, base_gen, moved_real, moved_gen = both.split([k, k, k, k])
        real, gen = base_real, base_gen
        if k < n:
            rest = nets["critic"](torch.cat([x_t[k:], fake[k:]]),
                                  **self.critic_inputs(_cat2(t[k:]), _cat2(y[k:]) if y is not None else None)).float()
            rest_real, rest_gen = rest.split([n - k, n - k])
            real, gen = torch.cat([base_real, rest_real]), torch.cat([base_gen, rest_gen])
    else:
        cond = self.critic_inputs(torch.cat([t, t, tk]), torch.cat([y, y, yk]) if y is not None else None)
        real, gen, moved_real, moved_gen = nets["critic"](torch.cat([x_t, fake, nudged]), **cond).float().split([n, n, k, k])
        base_real, base_gen = real[:k], gen[:k]
    adv = _frozen_relativistic(real, gen)
    r1 = _frozen_penalty(moved_real, base_real, c.gp_eps, w)
    r2 = _frozen_penalty(moved_gen, base_gen, c.gp_eps, w)
    centring = (real + gen).square().mean()
    loss = adv + c.lambda_gp * (r1 + r2) + c.lambda_cp * centring
    logs = {"adv": adv.detach(), "r1": r1.detach(), "r2": r2.detach(), "centring": centring.detach(),
            "logit_real": real.mean().detach(), "logit_fake": gen.mean().detach()}
    return loss, logs


def frozen_generator_loss(self, nets, batches, info):
    c = self.config
    x_s, x_t, z, y, s, t = self._draw(batches)
    fake = self.transport(nets["generator"], x_s, s, t, y)
    shown = self.normalizer(fake) if c.grad_norm else fake
    critic = nets["critic"]
    gen = critic(shown, **self.critic_inputs(t, y)).float()
    with torch.no_grad():
        real = critic(x_t, **self.critic_inputs(t, y)).float()
    adv = _frozen_relativistic(gen, real)
    w = (s - t).abs().clamp_min(c.ot_delta)
    ot = ((fake.float() - x_s.float()).square().flatten(1).mean(1) / w).mean()
    lam = self.lambda_ot(info.step)
    loss = adv + lam * ot
    return loss, {"adv": adv.detach(), "ot": ot.detach(), "lambda_ot": lam}


# ------------------------------------------------------------------ the comparison
def one_step(phase: str, config: AdversarialFlowConfig, frozen: bool,
             bf16: bool = False) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Loss terms and gradients of one ``phase`` step on a fixed batch, through the objective (or
    the frozen copy), from the same networks, seeds and normaliser state; ``bf16``: under bf16
    autocast, as a bf16 run computes it."""
    obj = AdversarialFlow(config, spec=SPEC)
    nets = Networks({"generator": Generator(1), "critic": Critic(2)})
    trained = nets[phase]
    g = torch.Generator().manual_seed(3)
    batch = Batch(torch.randn(16, 6, generator=g), torch.randint(3, (16,), generator=g))
    info = StepInfo(7, 100)
    torch.manual_seed(4)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if phase == "critic":
            loss, logs = frozen_critic_loss(obj, nets, [batch]) if frozen else obj.loss("critic", nets, [batch], info)
        else:
            loss, logs = (frozen_generator_loss(obj, nets, [batch], info) if frozen
                          else obj.loss("generator", nets, [batch], info))
    loss.backward()
    return {"loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()}}, [p.grad.clone() for p in trained.parameters()]


CONFIGS = {  # name: (config, under bf16 autocast)
    "one-step fp32": (AdversarialFlowConfig(gp_precision="fp32"), False),
    "one-step fp32 in a bf16 run": (AdversarialFlowConfig(gp_precision="fp32"), True),
    "one-step fp16 in a bf16 run": (AdversarialFlowConfig(gp_precision="fp16"), True),
    "one-step folded": (AdversarialFlowConfig(gp_precision="autocast"), False),
    "one-step fp32, whole batch penalised": (AdversarialFlowConfig(gp_precision="fp32", gp_fraction=1.0), False),
    "any-step fp32": (AdversarialFlowConfig(time_inputs=2, gp_precision="fp32"), False),
    "any-step folded in a bf16 run, no phi": (AdversarialFlowConfig(time_inputs=2, gp_precision="autocast",
                                                                    grad_norm=False), True),
}


@pytest.mark.parametrize("phase", ["critic", "generator"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_one_step_losses_equal_the_frozen_code(name, phase):
    config, bf16 = CONFIGS[name]
    now, now_grads = one_step(phase, config, frozen=False, bf16=bf16)
    then, then_grads = one_step(phase, config, frozen=True, bf16=bf16)
    assert now == pytest.approx(then, rel=1e-6, abs=1e-7), (now, then)
    for a, b in zip(now_grads, then_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), float((a - b).abs().max())  # float32 summation order


def test_the_frozen_code_gave_these_values():
    """Pins the reference itself: what the old code gave for the fp32 one-step critic and generator."""
    critic, _ = one_step("critic", CONFIGS["one-step fp32"][0], frozen=True)
    generator, _ = one_step("generator", CONFIGS["one-step fp32"][0], frozen=True)
    assert critic == pytest.approx(PINNED_CRITIC, rel=1e-5, abs=1e-6), critic
    assert generator == pytest.approx(PINNED_GENERATOR, rel=1e-5, abs=1e-6), generator


PINNED_CRITIC = {"loss": 0.7169286608695984, "adv": 0.7076238393783569, "r1": 0.004942070227116346,
                 "r2": 0.005480457562953234, "centring": 0.6699182391166687, "logit_real": -0.41738182306289673,
                 "logit_fake": -0.39347830414772034}
PINNED_GENERATOR = {"loss": 0.6895819306373596, "adv": 0.6837204098701477, "ot": 0.029307622462511063,
                    "lambda_ot": 0.19999999990569595}
