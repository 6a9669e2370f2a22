"""Flow-based classifier guidance (Adversarial Flow, arXiv 2511.22475, Sec. 3.5, Eq. 24-26).

A classifier of clean samples gives a one-step generator almost no gradient where classes are
well separated (Fig. 3c). A time-conditional classifier C(x_t, t) instead predicts p(y | x_t)
along the flow, and the generator is pushed to raise the log-probability of its label over
slightly noised copies of its samples:

    L_cg = scale * E_{z', t} [ -log softmax(C(x_t, t))_y ],  x_t = (1 - t) z' + t G(z, y)   (Eq. 26)

Times follow ``onestep.interfaces.TIME_CONVENTION`` (t = 1 is data), so the guidance serves any
objective whose generator gives a clean sample in one evaluation; the paper writes t' = 1 - t
(data at t' = 0). Three stages, as in the authors' public code (ByteDance-Seed/
Adversarial-Flow-Models):

1. ``objective noised-classifier`` pre-trains C in its own run: cross-entropy on noised real data,
   t ~ U(0, 1), AdamW (lr 1e-4, betas (0.9, 0.95), weight decay 0.01) and an EMA of C
   (train_adversarial_flow_classifier.py, configs/train/afm/train_afm_classifier.yaml).
2. ``guidance classifier`` loads that run's EMA classifier (``guidance.weights``) and keeps it
   frozen: it declares no network and no phase, so nothing of it is optimised or checkpointed.
   t ~ U(t_min, t_max) = U(0.9, 1.0), i.e. the paper's t' in [0, 0.1], with scale 0.003: the
   authors' one-step guided config (configs/train/afm/train_afm_1nfe_cg.yaml: cg_timestep_lo 0.0,
   cg_timestep_hi 0.1, cg 0.003 on SD-VAE latents; one noised copy per sample). The scale suits
   those latents; pixel data of other size needs its own.
3. The guided run is a fine-tuning stage from the unguided run (``onestep run ... --init-from
   UNGUIDED``: the generator starts from its EMA, the critic from its weights), as the authors'
   guided config starts from the last unguided EMA and critic.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from onestep.config import POSITIVE, FieldError, at_least
from onestep.errors import CheckpointError, ConfigError, OnestepError
from onestep.interfaces import (Batch, DataSpec, Guidance, NetworkRequest, Networks, Objective, Phase, StepInfo,
                                interpolate)

CLASSIFIER = "classifier"
CLASSIFIER_REQUEST = NetworkRequest(CLASSIFIER, time_inputs=1, class_conditional=False)
"""C(x_t, t) -> [B, num_classes] logits: one time input, no label input."""


def noised_logits(classifier: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """C(x_t, t) in fp32 for clean ``x`` noised to time ``t`` [B] with fresh noise (t = 1: ``x``)."""
    return classifier(interpolate(torch.randn_like(x), x, t), t=t).float()


def _labelled(spec: DataSpec, who: str) -> None:
    if spec.num_classes < 1:
        raise ConfigError(f"{who}: needs labelled data (num_classes > 0); this data source has no labels")


# --------------------------------------------------------------------------------- stage 1
@attrs.define
class NoisedClassifierConfig:
    lr: float = attrs.field(default=1e-4, validator=POSITIVE)  # the authors' classifier stage
    weight_decay: float = 0.01


class NoisedClassifier(Objective):
    """Pre-trains the time-conditional classifier C(x_t, t) for guidance; draws no samples.

    Cross-entropy on real data noised to t ~ U(0, 1); ``guidance classifier`` loads its EMA."""

    name = "noised-classifier"
    Config = NoisedClassifierConfig
    ema_networks = (CLASSIFIER,)
    draws_samples = False

    def __init__(self, config, *, spec, coupler=None, guidance=None) -> None:
        super().__init__(config, spec=spec, coupler=coupler, guidance=guidance)
        _labelled(spec, f"objective {self.name}")

    def networks(self) -> dict[str, NetworkRequest]:
        return {CLASSIFIER: CLASSIFIER_REQUEST}

    def phases(self) -> Sequence[Phase]:
        return [Phase(CLASSIFIER, CLASSIFIER)]

    def optim_defaults(self, network: str) -> dict[str, Any]:
        return {"lr": self.config.lr, "betas": (0.9, 0.95), "weight_decay": self.config.weight_decay}

    def loss(self, phase: str, nets: Networks, batches: Sequence[Batch], info: StepInfo):
        if phase != CLASSIFIER:
            return super().loss(phase, nets, batches, info)
        x = torch.cat([b.x for b in batches])
        y = torch.cat([b.y for b in batches])
        t = torch.rand(x.shape[0], device=x.device)
        logits = noised_logits(nets[CLASSIFIER], x, t)
        return F.cross_entropy(logits, y), {"accuracy": (logits.argmax(1) == y).float().mean().detach()}

    def sample(self, nets, noise, y, nfe):
        raise OnestepError(f"objective {self.name}: draws no samples; it trains the classifier that a guided "
                           "run names in guidance.weights")


# --------------------------------------------------------------------------------- stage 2
def _time_window(instance, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= instance.t_max <= 1.0:
        raise FieldError(attribute.name, f"expected 0 <= t_min <= t_max <= 1, got t_min {value}, "
                         f"t_max {instance.t_max}")


@attrs.define
class ClassifierGuidanceConfig:
    weights: Optional[str] = None
    """Required: the pre-trained classifier, a ``noised-classifier`` run folder or one of its
    step-N folders (its EMA weights are used)."""
    scale: float = attrs.field(default=0.003, validator=at_least(0))
    """lambda_cg (Eq. 25), the authors' one-step value on SD-VAE latents"""
    num_times: int = attrs.field(default=1, validator=at_least(1))
    """noised copies (t, z') of each generated sample per step"""
    t_min: float = attrs.field(default=0.9, validator=_time_window)
    """t ~ U(t_min, t_max), t = 1 the clean sample: the paper's t' = 1 - t in [0, 0.1]"""
    t_max: float = 1.0


class ClassifierGuidance(Guidance):
    """Flow-based classifier guidance (AF Eq. 26) with a frozen, pre-trained C(x_t, t).

    Reads no file when built; :meth:`prepare` (before training) loads the classifier."""

    name = "classifier"
    Config = ClassifierGuidanceConfig

    def __init__(self, config, *, spec) -> None:
        super().__init__(config, spec=spec)
        c = config
        _labelled(spec, "guidance classifier")
        if c.weights is None:
            raise ConfigError("guidance.weights: required: the run folder of a pre-trained classifier "
                              "(onestep run --objective noised-classifier ...; README: Guided fine-tuning)")
        self.classifier: nn.Module | None = None

    def prepare(self, source, device) -> None:
        self.classifier = load_classifier(self.config.weights, self.spec, device)

    def generator_term(
        self, nets: Networks, x_fake: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None, info: StepInfo,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        if y is None:
            raise ValueError("guidance classifier: generator_term needs the labels y of the generated samples")
        if self.classifier is None:
            raise RuntimeError("guidance classifier: prepare() loads the classifier before generator_term")
        if c.scale == 0:
            return x_fake.new_zeros(()).float(), {}
        xs = x_fake.repeat(c.num_times, *([1] * (x_fake.dim() - 1)))
        ys = y.repeat(c.num_times)
        t = c.t_min + (c.t_max - c.t_min) * torch.rand(xs.shape[0], device=xs.device)
        logits = noised_logits(self.classifier, xs, t)
        ce = F.cross_entropy(logits, ys)
        return c.scale * ce, {"cross_entropy": ce.detach(), "accuracy": (logits.argmax(1) == ys).float().mean().detach()}


def load_classifier(path: str, spec: DataSpec, device) -> nn.Module:
    """The frozen EMA classifier of ``noised-classifier`` run ``path``, rebuilt with that run's
    backbone for ``spec``; every failure is a one-line ``ConfigError`` naming ``guidance.weights``."""
    from onestep import checkpoint as ckpt
    from onestep.config import build_config, read_file
    from onestep.registry import Registry
    from onestep.statecodec import load_tensors

    if not Path(path).exists():
        raise ConfigError(f"guidance.weights: {path!r} not found (expected the run or step folder of an "
                          "`onestep run --objective noised-classifier` run)")
    registry = Registry.discover()
    try:
        folder, _ = ckpt.newest_intact(path)
        config = build_config(read_file(folder / "config.yaml"), registry)
        if config.objective.name != NoisedClassifier.name:
            raise ConfigError(f"guidance.weights: {str(folder)!r} is a run of objective {config.objective.name!r}; "
                              f"expected a {NoisedClassifier.name!r} run")
        file = folder / f"{CLASSIFIER}.ema.safetensors"
        weights = load_tensors(file)
    except CheckpointError as exc:
        raise ConfigError(f"guidance.weights: {exc}") from None
    classifier = registry.build("backbone", config.backbone.name, config.backbone.config).build(CLASSIFIER_REQUEST, spec)
    try:
        classifier.load_state_dict(weights)
    except RuntimeError as exc:
        raise ConfigError(f"guidance.weights: {str(file)!r} does not fit this run's data "
                          f"({' '.join(str(exc).split())[:160]})") from None
    return classifier.to(device).eval().requires_grad_(False)
