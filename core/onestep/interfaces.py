"""The contract between the core and its plugins.

A plugin provides *components*: classes deriving from one of the seven bases below. Each component
class sets two class attributes:

- ``name``: the user-facing name (``onestep run --objective NAME``), unique per kind;
- ``Config``: an ``attrs`` class whose fields (all with defaults) are the component's settings.
  The core structures it from YAML/CLI with cattrs, so field types must be plain (int, float,
  bool, str, tuples/lists of those, nested attrs classes, ``Optional`` of those).

The core constructs a component as ``cls(config, **context)`` and never looks inside it beyond
the methods declared here. Shapes in docstrings are examples, not constraints.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import attrs
import torch
from torch import nn

ROLES = ("generator", "critic", "classifier")

TIME_CONVENTION = "t = 0 is noise, t = 1 is data: x_t = (1 - t) * noise + t * data"
"""The one time convention of onestep: a scalar time ``t`` in [0, 1] runs from noise (``t = 0``)
to data (``t = 1``) along ``x_t = (1 - t) * noise + t * data`` (:func:`interpolate`), so a
sampler integrates from t = 0 up to t = 1. Objectives and guidance state their times in it; a
guidance's networks always take times in it (see :class:`Guidance`), so one guidance serves every
objective. Every network's time input is in it. A method whose paper writes the reversed time
(Adversarial Flow: data at tau = 0, tau = 1 - t) may keep the paper's tau in its own math, says
so in its module docstring, and converts at its edges (interpolation and network inputs)."""


def interpolate(noise: torch.Tensor, data: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) * noise + t * data`` (:data:`TIME_CONVENTION`) with ``t`` of shape ``[B]``."""
    t = t.view(-1, *([1] * (data.dim() - 1))).to(data.dtype)
    return (1 - t) * noise + t * data


def euler(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, nfe: int) -> torch.Tensor:
    """From ``noise`` at t = 0 to t = 1 (:data:`TIME_CONVENTION`) in ``nfe`` Euler steps of
    dx/dt = ``velocity(x, t)`` on the uniform grid, ``t`` of shape ``[B]``."""
    x = noise
    ts = torch.linspace(0, 1, nfe + 1, device=noise.device)
    for i in range(nfe):
        x = x + (ts[i + 1] - ts[i]) * velocity(x, ts[i].expand(len(x)))
    return x


@attrs.frozen
class DataSpec:
    """What one sample looks like.

    ``shape`` is the per-sample shape: ``(2,)`` for 2D points, ``(1, 28, 28)`` for MNIST,
    ``(4, 32, 32)`` for VAE latents. ``num_classes`` is 0 for unlabelled data; when it is > 0,
    labels are ints in ``[0, num_classes)`` and the extra label ``num_classes`` means
    "no label" (used for classifier-free guidance and label dropout), so class embeddings must
    have ``num_classes + 1`` rows. ``kind`` is ``points``, ``images`` or ``latents``; image and
    latent values are scaled to roughly unit range (images to [-1, 1]).
    """

    shape: tuple[int, ...]
    num_classes: int = 0
    kind: str = "points"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def null_label(self) -> int:
        return self.num_classes


@attrs.frozen
class NetworkRequest:
    """What an objective or guidance asks a backbone to build.

    ``role``: ``generator`` (output shaped like the input), ``critic`` (one logit per sample,
    shape ``[B]``) or ``classifier`` (``[B, num_classes]`` logits).
    ``time_inputs``: how many scalar times ``forward`` receives: 0 (a pure one-step map,
    no timestep projection), 1 (``t``) or 2 (``s`` and ``t``).
    ``class_conditional``: whether ``forward`` uses ``y``.
    """

    role: str
    time_inputs: int = 0
    class_conditional: bool = False

    def __attrs_post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"NetworkRequest.role: expected one of {ROLES}, got {self.role!r}")
        if self.time_inputs not in (0, 1, 2):
            raise ValueError(f"NetworkRequest.time_inputs: expected 0, 1 or 2, got {self.time_inputs}")


@attrs.frozen
class Phase:
    """One optimisation step of one network inside a training iteration.

    The trainer runs the phases of an iteration in order. For each phase it draws ``repeats``
    batches from data stream ``stream`` (each phase's stream is an independent loader, so
    e.g. critic and generator see different data), calls ``owner.loss(phase.name, ...)``,
    back-propagates into network ``network`` only (all other networks are frozen for the
    phase) and steps that network's engine.
    """

    name: str
    network: str
    stream: str = "data"
    repeats: int = 1


@attrs.define
class Batch:
    """A training batch: data ``x`` ``[B, *shape]`` and labels ``y`` ``[B]`` (or None)."""

    x: torch.Tensor
    y: torch.Tensor | None = None


@attrs.define
class StepInfo:
    """Where training is: ``step`` counts completed iterations, ``total_steps`` the planned
    number, ``progress`` = step / total_steps in [0, 1] (for schedules such as AF's lambda_ot)."""

    step: int
    total_steps: int

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))


class Networks(Mapping[str, nn.Module]):
    """Name -> network, as a component should call it: the network trained in the current phase
    (``trained``) is its training wrapper (a DeepSpeed engine, called like the module), every
    other network is its plain module. A frozen network must be called plain when gradients flow
    through it (the critic in a generator loss): an engine's hooks expect that engine's own
    backward and would rescale the gradient for gradient accumulation; the core hands it out
    plain so no plugin unwraps anything. ``ema(name)`` gives the EMA copy where the trainer keeps
    one, else the plain network."""

    def __init__(self, live: dict[str, nn.Module], ema: dict[str, nn.Module] | None = None,
                 plain: dict[str, nn.Module] | None = None, trained: str | None = None):
        self._live = live
        self._ema = ema or {}
        self._plain = plain or live
        self.trained = trained

    def __getitem__(self, key: str) -> nn.Module:
        return self._live[key] if key == self.trained else self._plain[key]

    def __iter__(self):
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def ema(self, name: str) -> nn.Module:
        return self._ema.get(name, self._plain[name])

    def plain(self, name: str) -> nn.Module:
        """The plain module, even in the phase that trains it (its gradients still reach that
        phase's optimizer): for a call that sets its own precision, since a DeepSpeed engine's
        forward re-enters the run's bf16 autocast whatever the caller disabled."""
        return self._plain[name]

    def training(self, name: str) -> "Networks":
        """The same networks as seen by a phase that trains ``name``."""
        return Networks(self._live, self._ema, self._plain, name)


class Component(ABC):
    """Base of every component: a name, an attrs ``Config`` and the config it was built with.
    Each kind's base sets ``kind`` (its name in configs and listings) and ``hook`` (the hook of
    :mod:`onestep.hookspecs` through which plugins provide classes of that kind)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    kind: ClassVar[str]
    hook: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config

    def state_dict(self) -> dict[str, Any]:
        """Mutable state that a checkpoint must carry (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state but the checkpoint carries {sorted(state)}")

    def prepare(self, source: "DataSource", device: torch.device) -> None:
        """Fit what must be fitted to the training data before training starts (e.g. a global
        coupling's potentials, a frozen feature network), reading a cache where one exists.

        The trainer calls it once per ``fit``, after a resumed checkpoint's state is loaded and
        before the training clock (``train.max_minutes``) starts; never for sampling, evaluation
        or export, so a generator can be used without it. The default does nothing."""


class Backbone(Component):
    """Builds networks. The module returned by :meth:`build` is called as
    ``forward(x, s=None, t=None, y=None)`` with ``x`` ``[B, *spec.shape]``, times ``[B]`` floats
    (passed only as many as ``request.time_inputs``; a single time is passed as ``t``) and
    ``y`` ``[B]`` int labels (``spec.null_label`` for unconditional).

    Every row of the output must depend on its own row of the input only (no batch statistics
    such as BatchNorm in training mode): objectives batch unrelated samples into one call, e.g.
    adversarial-flow evaluates the critic on real, fake and R1/R2's perturbed copies together."""

    kind: ClassVar[str] = "backbone"
    hook: ClassVar[str] = "onestep_backbones"

    @abstractmethod
    def build(self, request: NetworkRequest, spec: DataSpec) -> nn.Module: ...

    def compile(self, module: nn.Module, **options: Any) -> None:
        """Compile a built network in place for ``train.compile`` (``options`` go to
        ``torch.compile``, e.g. ``mode``). The default compiles the whole module; a backbone made
        of repeated blocks can compile each block instead (one graph reused by every block: a
        fraction of the warm-up)."""
        module.compile(**options)


class Coupler(Component):
    """Pairs a noise batch with a data batch (e.g. by optimal transport).

    ``pair`` returns ``(noise, data, y)`` reordered so that row i of ``noise`` is coupled with row i
    of ``data``; implementations may permute either side and may keep state across calls
    (online coupling). A coupler fitted to the whole training set in ``prepare`` (a global map
    such as semi-discrete OT) may instead return, for each noise row, the training sample its map
    assigns (of the row's class ``y``), so the batch's data rows only choose the labels.
    ``plan`` returns the coupling matrix ``[N, M]`` (rows sum to 1/N) where the coupler has one."""

    kind: ClassVar[str] = "coupler"
    hook: ClassVar[str] = "onestep_couplers"

    @abstractmethod
    def pair(
        self, noise: torch.Tensor, data: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...

    def plan(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"coupler {self.name!r} does not expose a transport plan")


class _TrainsNetworks(Component):
    """Shared shape of objectives and guidance: they declare networks and phases and compute
    the loss of each of their phases."""

    def networks(self) -> dict[str, NetworkRequest]:
        """Networks to build, by name (e.g. ``{"generator": ..., "critic": ...}``)."""
        return {}

    def phases(self) -> Sequence[Phase]:
        return ()

    def optim_defaults(self, network: str) -> dict[str, Any]:
        """AdamW defaults for one of this component's networks (keys ``lr``, ``betas``,
        ``weight_decay``, ``eps``); the user's ``train.optim`` / ``train.networks`` override them."""
        return {}

    def loss(
        self, phase: str, nets: Networks, batches: Sequence[Batch], info: StepInfo
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of ``phase`` for the ``phase.repeats`` batches given; returns (scalar loss,
        numbers to log). Called with all networks but ``phase.network`` frozen."""
        raise NotImplementedError(f"{type(self).__name__} declares no phase {phase!r}")


class Guidance(_TrainsNetworks):
    """Adds guidance to an objective: a generator loss term through :meth:`generator_term`, which
    an objective that declares ``uses_guidance`` calls in its generator phase. It may own networks
    and phases (run before the objective's), or hold a frozen pre-trained network that it loads in
    :meth:`prepare` (then the trainer builds, optimises and checkpoints nothing of it).

    Time convention: :data:`TIME_CONVENTION`, whatever the objective's own. ``generator_term``
    receives ``x_fake``, the generator's CLEAN samples (the data end, t = 1) as one differentiable
    batch ``[B, *spec.shape]``, the noise ``[B, *spec.shape]`` they were generated from and their
    labels ``y`` ``[B]``; a guidance that looks at noised copies makes them with
    :func:`interpolate` (t = 1 is the clean sample) and passes its networks t in that convention.
    So any objective whose generator yields a clean sample in one evaluation (Adversarial Flow,
    W-Flow, OT-NFM) can take any guidance without converting times."""

    kind: ClassVar[str] = "guidance"
    hook: ClassVar[str] = "onestep_guidance"

    def __init__(self, config: Any, *, spec: DataSpec) -> None:
        super().__init__(config)
        self.spec = spec

    @abstractmethod
    def generator_term(
        self, nets: Networks, x_fake: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None,
        info: StepInfo,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


class FeatureNetwork(Component):
    """A frozen feature map phi in which an objective measures distances (W-Flow computes its
    velocity on phi(x) and back-propagates through phi's Jacobian). Never the network that
    evaluation metrics use (FID's classifier): training and evaluation features stay separate.

    Constructed as ``cls(config, spec=...)``. Construction must be cheap and read no file:
    ``onestep sample``, ``onestep export`` and ``OneStepPipeline`` build the objective, and
    with it this component, but sample with the generator alone. :meth:`prepare` (called by the
    objective's own ``prepare``, i.e. once per ``fit``, before the training clock) trains the
    network or loads its weights, from a cache keyed by the data and the recipe where it trains
    one, and moves it to ``device``; a missing weights file is a one-line ``ConfigError`` there.

    ``phi(x)`` (``__call__``) maps ``x`` [B, *spec.shape] to a list of feature tensors, each
    ``[B, D]`` (one D-vector per sample) or ``[B, C, H, W]`` (a C-vector at each of H*W
    locations). It is differentiable in ``x`` and has no trainable parameters (gradients reach
    the generator, never phi); each row depends on its own sample only."""

    kind: ClassVar[str] = "features"
    hook: ClassVar[str] = "onestep_feature_networks"

    def __init__(self, config: Any, *, spec: DataSpec) -> None:
        super().__init__(config)
        self.spec = spec

    @abstractmethod
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward(x)


class Objective(_TrainsNetworks):
    """A training method. Constructed as ``cls(config, spec=..., coupler=..., guidance=...)``;
    ``coupler`` and ``guidance`` are None unless the user chose one. What an objective accepts is
    declared, and checked once by the registry before it is built (a one-line ``ConfigError``):
    ``uses_coupler`` (it pairs noise and data through a coupler when one is given),
    ``requires_coupler`` (it cannot train without one) and ``uses_guidance`` (it calls
    ``guidance.generator_term``). Checks that depend on the objective's own settings (e.g. guidance
    needs a class-conditional model) stay in ``__init__`` and raise ``ConfigError``. An objective
    that measures distances in a learned space also takes the keyword ``features`` (a
    :class:`FeatureNetwork`), passed only when the run configures one; the registry refuses
    (``ConfigError``) a run that configures features for an objective whose ``__init__`` does not
    take that keyword.

    For sampling alone (``onestep sample``, exports, ``OneStepPipeline``) the objective is built
    with neither coupler nor guidance, whatever it declares: ``sample`` must not need them.

    ``sample`` draws ``noise.shape[0]`` samples with ``nfe`` network evaluations using the EMA
    networks (``nets.ema(name)``); ``default_nfe()`` is 1 for one-step methods. An objective that
    trains a network for other runs to use rather than a generator (the guidance plugin's
    time-conditional classifier) sets ``draws_samples = False``: the trainer then draws no sample
    pictures and runs no evaluation, and its ``sample`` raises a one-line ``OnestepError``.
    ``ema_networks`` names the networks the trainer keeps an EMA of. Times follow
    :data:`TIME_CONVENTION`."""

    kind: ClassVar[str] = "objective"
    hook: ClassVar[str] = "onestep_objectives"
    ema_networks: ClassVar[tuple[str, ...]] = ("generator",)
    uses_coupler: ClassVar[bool] = False
    requires_coupler: ClassVar[bool] = False
    uses_guidance: ClassVar[bool] = False
    draws_samples: ClassVar[bool] = True
    comparison_role: ClassVar[str] = ""
    """What ``onestep board`` and ``onestep compare`` make of this objective without being told:
    ``"baseline"``, the multi-step reference every board includes and also scores at few steps
    (what a one-step model buys); ``"peer"``, an external implementation shown as reference rows;
    ``""``, an ordinary method. Declared by the plugin, so the core names no method."""

    def __init__(
        self, config: Any, *, spec: DataSpec, coupler: Coupler | None = None,
        guidance: Guidance | None = None,
    ) -> None:
        super().__init__(config)
        self.spec = spec
        self.coupler = coupler
        self.guidance = guidance

    def default_nfe(self) -> int:
        """Network evaluations per sample when the user sets none (``sample.nfe``)."""
        return 1

    @abstractmethod
    def sample(
        self, nets: Networks, noise: torch.Tensor, y: torch.Tensor | None, nfe: int
    ) -> torch.Tensor: ...

    def generator_conditional(self) -> bool:
        """Whether samples follow their labels (a class-conditional generator); metrics that
        judge labels skip runs whose samples ignore them."""
        return any(r.class_conditional for r in self.networks().values() if r.role == "generator")


class DataSource(Component):
    """A dataset. ``dataset(split)`` returns a map-style ``torch.utils.data.Dataset`` whose items
    are ``(x, y)`` with ``x`` a float tensor of ``spec().shape`` and ``y`` an int label
    (unlabelled sources return 0 and set ``num_classes = 0``). Splits are ``train`` and ``test``;
    ``test`` is held out."""

    kind: ClassVar[str] = "data"
    hook: ClassVar[str] = "onestep_data_sources"

    @abstractmethod
    def spec(self) -> DataSpec: ...

    @abstractmethod
    def dataset(self, split: str) -> torch.utils.data.Dataset: ...

    def modes(self) -> torch.Tensor | None:
        """Mode centres ``[K, *shape]`` with weights, for toy mixtures (mode-coverage metric)."""
        return None

    def mode_weights(self) -> torch.Tensor | None:
        return None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Map model space to viewable space (e.g. latents -> images); identity by default."""
        return x

    def image_source(self) -> "DataSource":
        """The source whose images image metrics judge against: its held-out images are the
        reference and its classifier extracts the features. ``self`` by default; a source that
        encodes another image source (``autoencoded``) returns that one, so its decoded samples
        are scored against the real images rather than their reconstructions. Such a source's
        ``test`` split must be the other's, item by item in the same order."""
        return self

    def export_decoder(self, folder: Path, copy: bool = True) -> dict | None:
        """Write what :meth:`decode` needs into an export ``folder`` (``onestep export``) and return
        its description for the export's config.json, or None when samples need no decoder (the
        default). ``copy`` False: record where the decoder's files are instead of copying them
        (``onestep export --reference-vae``), where the source can."""
        return None

    @classmethod
    def decoder_from_export(cls, folder: Path, description: dict) -> Callable[[torch.Tensor], torch.Tensor]:
        """The decoder :meth:`export_decoder` wrote into ``folder``: model space -> images, on the
        input's device."""
        raise NotImplementedError(f"data source {cls.name!r} writes no decoder into exports")


@attrs.define
class EvalContext:
    """Everything a metric may look at: generated ``samples`` (model space) with their labels,
    held-out ``reference`` data with labels, the data source and its spec, and the user's local
    feature-network weights for image metrics (``eval.feature_weights``; None: none given)."""

    samples: torch.Tensor
    sample_labels: torch.Tensor | None
    reference: torch.Tensor
    reference_labels: torch.Tensor | None
    source: DataSource
    spec: DataSpec
    feature_weights: str | None = None
    cache: dict = attrs.Factory(dict)
    """Shared by the metrics of one evaluation (e.g. image features extracted once for FID, KID,
    IS and precision/recall); entries keyed ``("reference", ...)`` may be carried over to the next
    evaluation of the same run, whose reference set is the same."""


class Metric(Component):
    """Computes numbers from an :class:`EvalContext`. ``applies_to`` lists the data kinds it
    supports; returned keys are prefixed by nothing (e.g. ``{"sinkhorn": 0.01}``)."""

    kind: ClassVar[str] = "metric"
    hook: ClassVar[str] = "onestep_metrics"

    applies_to: ClassVar[tuple[str, ...]] = ("points", "images", "latents")

    @abstractmethod
    def compute(self, ctx: EvalContext) -> dict[str, float]: ...


KINDS: dict[str, type[Component]] = {
    base.kind: base for base in (Backbone, Objective, Coupler, Guidance, DataSource, Metric, FeatureNetwork)
}
"""Every kind of component, by the name users give it (``onestep plugins --kind``, config sections);
each base names the hook of :mod:`onestep.hookspecs` that returns its classes."""
