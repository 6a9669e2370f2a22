"""The run configuration's schema: attrs classes whose fields, defaults, docs and validators
define every setting of a run (``onestep plugins`` and ``onestep config`` list them). Reading
files and overrides into these classes is :mod:`onestep.config`'s job.

Every field is validated the same way, by an attrs validator built with :func:`check` or
:func:`at_least`: a bad value is a :class:`FieldError`, which :func:`onestep.config.structure`
turns into one line naming the field's full path and what is valid::

    train.ema_decay: expected in [0, 1), got 1.5

Plugins validate their own ``Config`` fields with the same helpers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import attrs
from attrs.validators import optional

from .errors import ConfigError

COMPONENT_SECTIONS = ("objective", "backbone", "data", "coupler", "guidance", "features")
"""The component sections of a run; each is named after the kind of component it chooses."""
REQUIRED_SECTIONS = ("objective", "backbone", "data")
"""Sections every run names (the core defaults to no plugin); the others are optional."""


@attrs.define
class ComponentChoice:
    """A chosen component: its registered ``name`` and its structured ``config``."""

    name: str
    config: Any = None


class FieldError(ConfigError):
    """A value that a config class's validator refuses: ``field`` (the attribute's name) and what
    is wrong; :func:`structure` prefixes the field's full path (``train.optim.lr: ...``)."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(f"{field}: {what}")
        self.field, self.what = field, what


def check(ok: Callable[[Any], bool], expected: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    """An attrs validator: ``ok(value)`` must hold, else ``<field>: expected <expected>, got <value>``."""

    def validate(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not ok(value):
            raise FieldError(attribute.name, f"expected {expected}, got {value!r}")

    return validate


def at_least(low: float, zero: str | None = None) -> Callable[[Any, attrs.Attribute, Any], None]:
    """``value >= low`` (``zero``: what 0 means, shown in the error)."""
    return check(lambda v: v >= low, f">= {low:g}" + (f" (0: {zero})" if zero else ""))


def one_of(values: tuple, what: str = "one of") -> Callable[[Any, attrs.Attribute, Any], None]:
    """``value in values``."""
    return check(lambda v: v in values, f"{what} {', '.join(map(str, values))}")


POSITIVE = check(lambda v: v > 0, "> 0")
DEVICE = check(lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"), "auto, cpu or cuda[:N]")
LR_DECAYS = ("none", "linear", "cosine")


@attrs.define
class OptimConfig:
    """AdamW settings; ``None`` means "the objective's default, else the built-in default"."""

    lr: Optional[float] = attrs.field(default=None, validator=optional(POSITIVE))
    """learning rate (None: the objective's, else 1e-3)"""
    betas: Optional[tuple[float, float]] = attrs.field(
        default=None, validator=optional(check(lambda b: all(0.0 <= x < 1.0 for x in b), "two values in [0, 1)")))
    """Adam's (beta1, beta2) (None: the objective's, else (0.9, 0.999))"""
    weight_decay: Optional[float] = attrs.field(default=None, validator=optional(at_least(0)))
    """decoupled weight decay (None: the objective's, else 0)"""
    eps: Optional[float] = attrs.field(default=None, validator=optional(POSITIVE))
    """Adam's epsilon (None: the objective's, else 1e-8)"""


@attrs.define
class TrainConfig:
    steps: int = attrs.field(default=2000, validator=at_least(1))
    """training iterations (each runs every phase of the objective once)"""
    batch_size: int = attrs.field(default=256, validator=at_least(1))
    """global batch per phase, summed over processes and grad_accum"""
    grad_accum: int = attrs.field(default=1, validator=at_least(1))  # micro-batches accumulated per optimizer step
    optim: OptimConfig = attrs.Factory(OptimConfig)  # AdamW settings of every network
    networks: dict[str, OptimConfig] = attrs.Factory(dict)
    """per-network overrides of ``optim``, e.g. networks.critic.lr"""
    warmup_steps: int = attrs.field(default=0, validator=at_least(0, "no warmup"))  # linear learning-rate warmup steps
    lr_decay: str = attrs.field(default="none", validator=one_of(LR_DECAYS))
    """Learning-rate decay after the warm-up, to 0 at the run's planned end: ``none`` (constant),
    ``linear`` or ``cosine``. The end is ``train.steps``, or under ``train.max_minutes`` the step
    count the measured rate reaches when the training clock runs out (re-estimated every step), so
    a wall-clock budget ends at lr 0 whatever the device's speed (budgeted training: a decay to
    zero within the budget beats a constant rate stopped early)."""
    grad_clip: float = attrs.field(default=0.0, validator=at_least(0, "no clipping"))
    """clip the global gradient norm to this; 0 disables clipping"""
    ema_decay: float = attrs.field(default=0.999, validator=check(lambda v: 0.0 <= v < 1.0, "in [0, 1)"))
    """decay of the EMA weights used for sampling"""
    ema_start: int = attrs.field(default=0, validator=at_least(0, "from the first step"))
    """steps before the EMA starts tracking (copies weights until then)"""
    zero_stage: int = attrs.field(default=0, validator=check(lambda v: v in (0, 1, 2, 3), "0, 1, 2 or 3"))
    """DeepSpeed ZeRO stage 0-3 (partitions optimizer state, gradients, weights)"""
    precision: str = attrs.field(default="fp32", validator=check(lambda v: v in ("fp32", "bf16"), "'fp32' or 'bf16'"))
    """fp32 | bf16 (autocast)"""
    tf32: bool = False
    """On CUDA, compute the run's fp32 matmuls in TF32 (tensor cores, 10-bit mantissa; PyTorch
    already does so for convolutions): all of them under ``precision: fp32``, and under bf16 the
    calls that leave autocast on purpose (AF's finite-difference R1/R2, ``gp_precision: fp32``). The
    AF authors train in fp32 with TF32 matmuls. A process-wide switch, set when the trainer is built."""
    log_every: int = attrs.field(default=50, validator=at_least(1))  # steps between loss records in metrics.jsonl
    sample_every: int = attrs.field(default=0, validator=at_least(0, "only at the end"))
    """steps between sample pictures; 0: only at the end"""
    eval_every: int = attrs.field(default=0, validator=at_least(0, "only at the end"))
    """steps between evaluations; 0: only at the end"""
    checkpoint_every: int = attrs.field(default=0, validator=at_least(0, "only at the end"))
    """steps between checkpoints; 0: only at the end"""
    keep_checkpoints: int = attrs.field(default=2, validator=at_least(1))  # newest checkpoints kept on disk
    num_workers: int = attrs.field(default=0, validator=at_least(0, "load in the main process"))
    """data-loader worker processes"""
    progress: bool = True  # show a progress bar
    tensorboard: bool = True
    """also write TensorBoard event files (every logged number, sample pictures) beside metrics.jsonl"""
    compile: bool = False  # torch.compile the networks; the backbone picks the regions (DiT: each block)
    max_minutes: float = attrs.field(default=0.0, validator=at_least(0, "no limit"))
    """training-clock limit in minutes (evaluations, samples and checkpoints pause the clock); 0: none"""
    eval_every_minutes: float = attrs.field(default=0.0, validator=at_least(0, "never"))
    """evaluate each time the training clock passes a multiple of this; 0: never"""
    checkpoint_every_minutes: float = attrs.field(default=0.0, validator=at_least(0, "never"))
    """checkpoint each time the training clock passes a multiple of this; 0: never"""
    init_from: Optional[str] = None
    """A checkpoint (run or step folder) whose network weights start this run (``onestep run
    --init-from``): a fine-tuning stage, e.g. guidance from an unguided run. Only weights are
    read: step, optimizers, schedules, data order and component state start afresh. Every network
    of this run must be in it (extra ones are ignored). Ignored when resuming."""
    init_from_ema: bool = True
    """With ``init_from``: start a network the checkpoint keeps an EMA of (the generator) from that
    EMA, as the paper's guided fine-tuning does; false: from its live weights. Others start live."""


@attrs.define
class SampleConfig:
    num: int = attrs.field(default=2000, validator=at_least(1))  # points in a sample plot (2D/1D data)
    nfe: Optional[int] = attrs.field(default=None,
                                     validator=optional(check(lambda v: v >= 1, ">= 1 or null (the objective's)")))
    """network evaluations per sample; None: the objective's default"""
    grid: int = attrs.field(default=64, validator=at_least(1))  # images in a sample grid


def _local_weights(_instance: Any, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and not Path(value).is_file():
        raise FieldError(attribute.name, f"file {value!r} not found (give a local copy of torch-fidelity's "
                         "inception-v3-compat weights, e.g. weights-inception-2015-12-05-6726825d.pth; onestep never "
                         "downloads them; leave it unset to use a classifier trained on the data)")


@attrs.define
class EvalConfig:
    metrics: Optional[list[str]] = None  # None: every installed metric that applies to the data; []: none
    num_samples: int = attrs.field(default=2000, validator=at_least(1))
    """generated samples (and held-out ones) per evaluation"""
    feature_weights: Optional[str] = attrs.field(default=None, validator=_local_weights)
    """local torch-fidelity Inception weights for image metrics; None: a classifier trained on the data"""
    options: dict[str, dict[str, Any]] = attrs.Factory(dict)
    """per-metric settings by name, e.g. {sinkhorn: {blur: 0.1}}"""
    at_end: bool = True  # evaluate once more when training ends (the board scores its runs itself)


@attrs.define
class RunConfig:
    objective: Optional[ComponentChoice] = None  # required: the training method (onestep plugins --kind objective)
    backbone: Optional[ComponentChoice] = None  # required: the network family
    data: Optional[ComponentChoice] = None  # required: the data source
    coupler: Optional[ComponentChoice] = None
    guidance: Optional[ComponentChoice] = None
    features: Optional[ComponentChoice] = None  # a frozen feature network for the objective (e.g. W-Flow's phi)
    train: TrainConfig = attrs.Factory(TrainConfig)
    sample: SampleConfig = attrs.Factory(SampleConfig)
    eval: EvalConfig = attrs.Factory(EvalConfig)
    seed: int = 0  # seeds the networks, noise and data order
    output_dir: str = "runs/{objective}-{backbone}-{data}"  # run folder; {section} is that component's name
    device: str = "auto"  # auto | cpu | cuda

    def __attrs_post_init__(self) -> None:
        self.resolved_output_dir()

    def resolved_output_dir(self) -> Path:
        names = {s: getattr(self, s).name if getattr(self, s) else "none" for s in COMPONENT_SECTIONS}
        try:
            return Path(self.output_dir.format(**names))
        except KeyError as exc:
            raise ConfigError(f"output_dir: {self.output_dir!r} names {{{exc.args[0]}}}; valid: "
                              + ", ".join(f"{{{s}}}" for s in COMPONENT_SECTIONS)) from None
        except (ValueError, IndexError, AttributeError) as exc:
            raise ConfigError(f"output_dir: {self.output_dir!r} is not a valid template ({exc}); write {{ and }} "
                              "as {{ and }}, and name components as {objective}") from None


@attrs.define
class SamplerConfig:
    """What sampling from a trained generator needs of its run's config: the objective, backbone
    and feature-network sections. An export carries these alone, so loading it needs no coupler
    or guidance plugin and no path of the training machine."""

    objective: ComponentChoice
    backbone: ComponentChoice
    features: Optional[ComponentChoice] = None

    @classmethod
    def of(cls, config: RunConfig) -> "SamplerConfig":
        return cls(config.objective, config.backbone, config.features)


SAMPLER_SECTIONS = tuple(f.name for f in attrs.fields(SamplerConfig))


for _cls in (ComponentChoice, OptimConfig, TrainConfig, SampleConfig, EvalConfig, RunConfig, SamplerConfig):
    attrs.resolve_types(_cls)
