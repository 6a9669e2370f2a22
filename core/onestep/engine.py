"""Wraps each trained network in a DeepSpeed engine (AdamW, ZeRO stage, clipping, warmup,
gradient accumulation) and keeps an EMA copy of the networks that need one."""
from __future__ import annotations

import copy
import logging
import math
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import attrs
import torch
from torch import nn

from .errors import ConfigError
from .interfaces import Networks
from .schema import OptimConfig, TrainConfig

BASE_OPTIM = {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.0, "eps": 1e-8}


def sampling_autocast(precision: str, device: torch.device):
    """The precision a network samples in: bf16 autocast on a GPU for a network trained in bf16
    (as it was trained, and 5-10x faster than full fp32 matmuls), else plain fp32."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def resolve_optim(name: str, defaults: dict[str, Any], train: TrainConfig) -> dict[str, Any]:
    """Built-in defaults <- the component's ``optim_defaults`` <- ``train.optim`` <-
    ``train.networks[name]``."""
    unknown = set(defaults) - set(BASE_OPTIM)
    if unknown:
        raise ConfigError(f"optim_defaults for {name!r}: unknown keys {sorted(unknown)}; valid: {', '.join(BASE_OPTIM)}")
    out = {**BASE_OPTIM, **defaults}
    for layer in (train.optim, train.networks.get(name, OptimConfig())):
        out.update({k: v for k, v in attrs.asdict(layer).items() if v is not None})
    out["betas"] = tuple(out["betas"])
    return out


def zero_section(train: TrainConfig) -> dict[str, Any]:
    """ZeRO settings. Without clipping, stages 1 and 2 skip the global gradient norm: DeepSpeed
    computes it with one kernel per parameter and then checks it on the host, a synchronisation
    that leaves the GPU idle at every optimizer step (docs/results-history.md, #2026-11-23-af-dit-guidance)."""
    section: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage in (1, 2):
        section["compute_grad_norm"] = train.grad_clip > 0
    return section


def deepspeed_config(train: TrainConfig, world: int) -> dict[str, Any]:
    per_step = train.grad_accum * world
    if train.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size: {train.batch_size} is not divisible by grad_accum x world size = {per_step}"
        )
    return {
        "train_batch_size": train.batch_size,
        "train_micro_batch_size_per_gpu": train.batch_size // per_step,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": float(train.grad_clip),
        "zero_optimization": zero_section(train),
        # The engine's forward replaces an outer torch.autocast by this section (disabled unless
        # set): without it a bf16 run computes every engine call in fp32. Gradients keep fp32
        # communication (no lower-precision modules).
        "torch_autocast": {"enabled": train.precision == "bf16", "dtype": "bfloat16",
                           "lower_precision_safe_modules": []},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer synchronises the device at every engine forward and step
        # (idle gaps: docs/results-history.md, #2026-11-23-af-dit-guidance); the trainer measures samples/s itself.
        "timers": {"throughput": {"enabled": False}},
    }


def lr_factor(step: int, warmup: int, decay: str, horizon: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a share of the configured one:
    linear warm-up over ``warmup`` steps, then ``decay`` (see ``TrainConfig.lr_decay``) to 0 at
    step ``horizon``."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if decay == "none":
        return warm
    p = min(1.0, max(0.0, (step - warmup) / max(1, horizon - warmup)))
    return warm * ((1.0 - p) if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p)))


def make_engine(module: nn.Module, optim: dict[str, Any], train: TrainConfig, world: int,
                horizon: Callable[[], int] | None = None):
    """A DeepSpeed engine for ``module`` with AdamW, linear LR warm-up and ``train.lr_decay`` to 0
    at ``horizon()`` (read at every step: a wall-clock budget's planned end moves with the rate;
    None: ``train.steps``)."""
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    opt = torch.optim.AdamW(module.parameters(), **optim)
    warm, decay = max(0, train.warmup_steps), train.lr_decay
    end = horizon or (lambda: train.steps)

    def schedule(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warm, decay, end()))

    engine, _, _, _ = deepspeed.initialize(
        model=module, optimizer=opt, lr_scheduler=schedule, config=deepspeed_config(train, world)
    )
    return engine


@contextmanager
def gathered(module: nn.Module, zero_stage: int) -> Iterator[None]:
    """Full parameters inside the block (ZeRO-3 partitions them; other stages need nothing)."""
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def full_state_dict(module: nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    with gathered(module, zero_stage):
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


class EMA:
    """Exponential moving average of a network's weights (kept in fp32, unsharded).

    The decay warms up as min(decay, (1 + k) / (10 + k)) for the k-th update after ``start``,
    so short runs are not dominated by the initial weights."""

    def __init__(self, module: nn.Module, decay: float, start: int, zero_stage: int) -> None:
        """``module``: a copy of the network taken before DeepSpeed wraps it (a copy of the
        wrapped module would carry ZeRO-3's partitioning hooks into the EMA)."""
        self.decay, self.start, self.zero_stage = decay, start, zero_stage
        self.module = copy.deepcopy(module).float().eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        k = step - self.start
        decay = 0.0 if k < 0 else min(self.decay, (1 + k) / (10 + k))
        with gathered(module, self.zero_stage):
            src = [p.detach().float() for p in module.parameters()]
            dst = list(self.module.parameters())
            torch._foreach_lerp_(dst, src, 1.0 - decay)
            for b_dst, b_src in zip(self.module.buffers(), module.buffers()):
                b_dst.copy_(b_src)


@attrs.define
class RunNetworks:
    """A run's trained networks: each one's DeepSpeed ``engine``, the ``ema`` copies, the
    :class:`~onestep.interfaces.Networks` view components call, the component that declared each
    (``owner_of``) and the training phases in order (the guidance's before the objective's),
    each with its owner."""

    engines: dict[str, Any]
    ema: dict[str, EMA]
    nets: Networks
    owner_of: dict[str, Any]
    phases: list[tuple[Any, Any]]


def build_networks(objective: Any, guidance: Any, backbone: Any, spec: Any, train: TrainConfig, world: int,
                   device: torch.device, horizon: Callable[[], int]) -> RunNetworks:
    """Every network the objective and the guidance declare, built by ``backbone`` for ``spec``,
    each in a DeepSpeed engine (its LR schedule ends at ``horizon()``), with an EMA copy on
    ``device`` of the objective's ``ema_networks``. A network declared twice, no phase, or a
    phase of an undeclared network is a one-line error."""
    owners = [objective] + ([guidance] if guidance else [])
    owner_of: dict[str, Any] = {}
    engines: dict[str, Any] = {}
    ema: dict[str, EMA] = {}
    for owner in owners:
        for name, request in owner.networks().items():
            if name in owner_of:
                raise ConfigError(f"network {name!r} is declared by both {owner_of[name].name} and {owner.name}")
            owner_of[name] = owner
            module = backbone.build(request, spec)
            if name in objective.ema_networks:  # copied before DeepSpeed partitions or hooks it
                ema[name] = EMA(module, train.ema_decay, train.ema_start, train.zero_stage)
                ema[name].module.to(device)
            if train.compile:
                backbone.compile(module)
            optim = resolve_optim(name, owner.optim_defaults(name), train)
            engines[name] = make_engine(module, optim, train, world, horizon=horizon)
    nets = Networks(engines, {n: e.module for n, e in ema.items()}, {n: e.module for n, e in engines.items()})
    phases = [(g, p) for g in owners[1:] for p in g.phases()] + [(objective, p) for p in objective.phases()]
    if not phases:
        raise ConfigError(f"objective {objective.name!r} declares no training phases")
    for owner, p in phases:
        if p.network not in engines:
            raise ConfigError(f"{owner.name} phase {p.name!r} trains unknown network {p.network!r}")
    return RunNetworks(engines, ema, nets, owner_of, phases)
