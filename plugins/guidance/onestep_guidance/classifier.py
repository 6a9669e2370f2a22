"""Flow-based classifier guidance (Adversarial Flow, arXiv 2511.22475, Sec. 3.5, Eq. 24-26).

A classifier on clean samples gives a one-step generator almost no gradient where classes are
well separated (Fig. 3c). Instead a timestep-conditional classifier C(x_t', t') predicts p(y | x_t')
along the flow x_t' = (1 - t') x + t' z', and the generator is pushed to maximise the expected
log-probability of its label over noised copies of its samples:

    L_cg = scale * E_{z', t'} [ -log softmax(C(interp(G(z, y), z', t'), t'))_y ]      (Eq. 26)

with t' ~ U(t_min, t_max) (the range plays the role of CFG's active timesteps; t' = 0 is Eq. 24).
Times are Adversarial Flow's (data at t' = 0), the reverse of ``onestep.interfaces.TIME_CONVENTION``.
The classifier owns network ``classifier`` and trains in its own phase (run before the
objective's) with cross-entropy on noised real data, t' ~ U(0, 1). ``start_step`` holds the
generator term at zero until the classifier has had time to learn.
"""
from __future__ import annotations

from typing import Any, Sequence

import attrs
import torch
import torch.nn.functional as F

from onestep.errors import ConfigError
from onestep.interfaces import Batch, Guidance, NetworkRequest, Networks, Phase, StepInfo


def noised(x: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x + t z (AF Eq. 15)."""
    t = t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return (1 - t) * x + t * z


@attrs.define
class ClassifierGuidanceConfig:
    scale: float = 0.003  # lambda_cg (Eq. 25)
    num_times: int = 4  # noised copies (t', z') of each generated sample per step
    t_min: float = 0.0  # t' ~ U(t_min, t_max) in the generator term
    t_max: float = 1.0
    start_step: int = 0  # iterations before the generator term switches on
    train: bool = True  # train the classifier in its own phase every iteration
    lr: float = 3e-4
    weight_decay: float = 0.0


class ClassifierGuidance(Guidance):
    """Flow-based classifier guidance: a time-conditional classifier on noised data (AF Eq. 26)."""

    name = "classifier"
    Config = ClassifierGuidanceConfig

    def __init__(self, config, *, spec) -> None:
        super().__init__(config, spec=spec)
        c = config
        if spec.num_classes < 1:
            raise ConfigError("guidance classifier: needs labelled data (num_classes > 0); this data source has no labels")
        if not 0.0 <= c.t_min <= c.t_max <= 1.0:
            raise ConfigError(f"guidance.t_min/t_max: expected 0 <= t_min <= t_max <= 1, got {c.t_min}, {c.t_max}")
        if c.num_times < 1:
            raise ConfigError(f"guidance.num_times: expected >= 1, got {c.num_times}")
        if c.scale < 0:
            raise ConfigError(f"guidance.scale: expected >= 0, got {c.scale}")
        if c.lr <= 0:
            raise ConfigError(f"guidance.lr: expected > 0, got {c.lr}")

    def networks(self) -> dict[str, NetworkRequest]:
        return {"classifier": NetworkRequest("classifier", time_inputs=1, class_conditional=False)}

    def phases(self) -> Sequence[Phase]:
        return [Phase("classifier", "classifier", stream="classifier")] if self.config.train else []

    def optim_defaults(self, network: str) -> dict[str, Any]:
        return {"lr": self.config.lr, "betas": (0.9, 0.999), "weight_decay": self.config.weight_decay}

    def loss(self, phase: str, nets: Networks, batches: Sequence[Batch], info: StepInfo):
        if phase != "classifier":
            return super().loss(phase, nets, batches, info)
        x = torch.cat([b.x for b in batches])
        y = torch.cat([b.y for b in batches])
        t = torch.rand(x.shape[0], device=x.device)
        logits = nets["classifier"](noised(x, torch.randn_like(x), t), t=t).float()
        loss = F.cross_entropy(logits, y)
        return loss, {"accuracy": (logits.argmax(1) == y).float().mean().detach()}

    def generator_term(
        self, nets: Networks, x_fake: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None, info: StepInfo,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        if y is None:
            raise ValueError("guidance classifier: generator_term needs the labels y of the generated samples")
        if info.step < c.start_step or c.scale == 0:
            return x_fake.new_zeros(()).float(), {}
        k = c.num_times
        xs = x_fake.repeat(k, *([1] * (x_fake.dim() - 1)))
        ys = y.repeat(k)
        t = c.t_min + (c.t_max - c.t_min) * torch.rand(xs.shape[0], device=xs.device)
        logits = nets["classifier"](noised(xs, torch.randn_like(xs), t), t=t).float()
        ce = F.cross_entropy(logits, ys)
        return c.scale * ce, {"cross_entropy": ce.detach(), "accuracy": (logits.argmax(1) == ys).float().mean().detach()}
