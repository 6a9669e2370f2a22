"""Export a trained generator as a self-contained folder and sample from it without the trainer.

``onestep export CHECKPOINT --out DIR`` writes (into a temporary folder beside DIR, renamed into
place once complete; an existing DIR is replaced only with ``--overwrite`` and only if it is an
earlier export, never a folder onestep did not write)::

    DIR/model.safetensors   the EMA generator's weights
    DIR/config.json         format/version, the objective, backbone and feature-network sections
                            of the run config (``components``; nothing else of the run: no
                            coupler, guidance, data or evaluation settings), data spec, the
                            generator's NetworkRequest, default nfe, the training precision (the
                            sampling precision on a GPU), training step, and ``decoder``: the
                            data source whose ``decoder_from_export`` turns samples into images,
                            with what its ``export_decoder`` wrote (None: samples need no decoder)
    DIR/...                 the decoder's files (e.g. a VAE's ``vae/``), written by the data source
    DIR/README.md           the model card (:mod:`onestep.modelcard`), for people; loading ignores it

:class:`OneStepPipeline` rebuilds the generator through the registry from ``config.json``,
loads ``model.safetensors`` (nothing is unpickled) and samples with the objective's own
``sample``. The trainer samples through the same pipeline over its EMA networks, so an export
draws exactly what ``Trainer.sample`` draws for the same seed. Loading an export needs the
objective's, the backbone's (and a feature network's) plugins only.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import torch
from torch import nn

from . import checkpoint as ckpt
from .components import build_components
from .config import RunConfig, SamplerConfig, SAMPLER_SECTIONS, assemble, build_config, build_sampler_config, read_file, unstructure
from .distributed import resolve_device
from .engine import sampling_autocast
from .errors import CheckpointError, ConfigError, OnestepError
from .files import replace_atomic
from .interfaces import Backbone, DataSpec, NetworkRequest, Networks, Objective
from .modelcard import model_card
from .registry import Registry
from .statecodec import load_tensors, save_tensors, saved_step

FORMAT = "onestep-pipeline"
VERSION = 3
READABLE = (1, 2, 3)  # version 1 carried the whole run config under "run"; its component sections are read from there
GENERATOR = "generator"


def generator_request(objective: Objective) -> NetworkRequest:
    request = objective.networks().get(GENERATOR)
    if not objective.draws_samples:
        raise ConfigError(f"objective {objective.name!r} draws no samples (it trains a network for other runs to use); "
                          "nothing to sample or export")
    if request is None:
        raise ConfigError(f"objective {objective.name!r} declares no {GENERATOR!r} network; nothing to export")
    return request


def build_generator(backbone: Backbone, request: NetworkRequest, spec: DataSpec, weights: dict[str, torch.Tensor],
                    where: str) -> nn.Module:
    """The generator ``backbone`` builds for ``request``, with ``weights`` loaded."""
    module = backbone.build(request, spec)
    try:
        module.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: does not fit the {backbone.name} generator "
                              f"({' '.join(str(exc).split())[:160]})") from None
    return module.float().eval().requires_grad_(False)


@attrs.define
class RunGenerator:
    """A trained run's generator (the EMA copy where the objective keeps one), loaded without the
    trainer: no DeepSpeed engines, optimizers or data streams."""

    config: RunConfig
    source: Any
    spec: DataSpec
    objective: Objective
    weights: dict[str, torch.Tensor]
    generator: nn.Module
    step: int
    folder: Path  # the checkpoint folder it was loaded from


def load_run_generator(checkpoint: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None) -> RunGenerator:
    """The generator of checkpoint ``checkpoint`` (a run or step folder), rebuilt from its saved
    config (amended by ``overrides``) through the registry; a run folder gives its newest intact
    checkpoint. The objective is built to sample (no coupler or guidance)."""
    folder, _ = ckpt.newest_intact(checkpoint)
    reg = registry or Registry.discover()
    config = build_config(assemble(base=read_file(folder / "config.yaml"), overrides=overrides), reg)
    built = build_components(config, reg, sampling=True)
    objective = built.objective
    request = generator_request(objective)
    name = f"{GENERATOR}.ema.safetensors" if GENERATOR in objective.ema_networks else f"{GENERATOR}.safetensors"
    weights = load_tensors(folder / name)
    generator = build_generator(built.backbone, request, built.spec, weights, str(folder / name))
    step = saved_step(folder)
    return RunGenerator(config, built.source, built.spec, objective, weights, generator, step, folder)


def check_target(out: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse an export folder that would destroy anything but an earlier export."""
    target, source = out.resolve(), checkpoint.resolve()
    if target == source or target in source.parents:
        raise ConfigError(f"--out {str(out)!r}: holds the checkpoint being exported; choose another folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {str(out)!r}: is a file; choose a folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"--out {str(out)!r}: exists and is not empty; choose a new folder, or pass --overwrite "
                          "to replace an earlier export there")
    try:
        is_export = json.loads((out / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        is_export = False
    if not is_export:
        raise ConfigError(f"--out {str(out)!r}: is not an onestep export (no {FORMAT} config.json); refusing to "
                          "replace a folder onestep did not write")


def export_checkpoint(checkpoint: str | Path, out: str | Path, overrides: Sequence[str] = (), copy_vae: bool = True,
                      registry: Registry | None = None, overwrite: bool = False) -> Path:
    """Write the export folder ``out`` for checkpoint ``checkpoint`` (a run or step folder: the
    newest intact checkpoint). ``overrides`` amend the saved run config (e.g.
    ``data.vae=/new/place``); with ``copy_vae`` False, an export whose samples decode through a
    network of the data source (a VAE) references that network where it is instead of copying it.
    ``overwrite`` replaces an earlier export at ``out``."""
    folder, _ = ckpt.newest_intact(checkpoint)
    out = Path(out)
    check_target(out, folder, overwrite)
    run = load_run_generator(folder, overrides, registry)
    config, source, spec, objective, weights = run.config, run.source, run.spec, run.objective, run.weights
    request = generator_request(objective)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r}: cannot create a folder beside it ({exc.strerror or exc})") from None
    try:
        _write_export(tmp, config, source, spec, objective, request, weights, run.step, copy_vae)
        card = model_card(config, json.loads((tmp / "config.json").read_text()),
                          sum(w.numel() for w in weights.values()), run.folder, str(out))
        (tmp / "README.md").write_text(card)
        replace_atomic(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_export(tmp: Path, config: RunConfig, source, spec: DataSpec, objective: Objective,
                  request: NetworkRequest, weights: dict[str, torch.Tensor], step: int, copy_vae: bool) -> None:
    own = source.export_decoder(tmp, copy=copy_vae)
    save_tensors(weights, tmp / "model.safetensors")
    meta = {
        "format": FORMAT, "version": VERSION, "objective": config.objective.name, "backbone": config.backbone.name,
        "default_nfe": int(config.sample.nfe or objective.default_nfe()), "step": step,
        "spec": {"shape": list(spec.shape), "num_classes": spec.num_classes, "kind": spec.kind},
        "network": {"role": request.role, "time_inputs": request.time_inputs,
                    "class_conditional": request.class_conditional},
        "components": unstructure(SamplerConfig.of(config)), "precision": config.train.precision,
        "decoder": {"data": source.name, **own} if own else None,
    }
    (tmp / "config.json").write_text(json.dumps(meta, indent=1, default=list))


def _read_export_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(f"export {str(folder)!r}: no such folder")
    if not path.is_file():
        raise CheckpointError(f"export {str(folder)!r}: config.json missing (not a folder written by `onestep export`)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"export file {str(path)!r}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"export file {str(path)!r}: format is not {FORMAT!r}")
    if meta.get("version") not in READABLE:
        raise CheckpointError(f"export file {str(path)!r}: version {meta.get('version')!r}; this onestep reads "
                              + " and ".join(map(str, READABLE)))
    if meta.get("vae"):
        raise CheckpointError(f"export {str(folder)!r}: written by an older onestep that kept its VAE outside the data "
                              "source's decoder; export the checkpoint again with `onestep export`")
    sections = "components" if meta["version"] >= 2 else "run"
    missing = [k for k in ("objective", "default_nfe", "spec", "network", sections) if k not in meta]
    if missing:
        raise CheckpointError(f"export file {str(path)!r}: missing {', '.join(missing)}")
    meta["components"] = {k: meta[sections].get(k) for k in SAMPLER_SECTIONS}
    return meta


class OneStepPipeline:
    """Samples from an exported generator, diffusers-style::

        pipe = OneStepPipeline.from_pretrained("export/", device="cuda")
        images = pipe(class_labels=[3, 3, 7], seed=0)            # [3, C, H, W] in [-1, 1]
        pil = pipe(num_images=16, seed=0, output_type="pil")
    """

    def __init__(self, objective: Objective, generator: nn.Module, spec: DataSpec, default_nfe: int,
                 decoder: Callable[[torch.Tensor], torch.Tensor] | None = None, meta: dict[str, Any] | None = None,
                 nets: Networks | None = None, precision: str | None = None) -> None:
        self.objective, self.generator, self.spec = objective, generator, spec
        self.default_nfe, self.decoder, self.meta = default_nfe, decoder, meta or {}
        # the trainer passes all its networks (EMA copies where kept); an export carries the generator alone
        self.nets = nets if nets is not None else Networks({GENERATOR: generator}, {GENERATOR: generator})
        self.source = None  # the data source, for pipelines loaded from a training checkpoint
        # bf16 autocast on a GPU when the generator was trained in bf16 (see sampling_autocast); set "fp32" to force full precision
        self.precision = precision or str(self.meta.get("precision")
                                          or self.meta.get("run", {}).get("train", {}).get("precision", "fp32"))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        registry: Registry | None = None) -> "OneStepPipeline":
        folder = Path(path)
        meta = _read_export_config(folder)
        reg = registry or Registry.discover()
        config = build_sampler_config(meta["components"], reg)
        s = meta["spec"]
        spec = DataSpec(shape=tuple(s["shape"]), num_classes=int(s["num_classes"]), kind=str(s["kind"]))
        built = build_components(config, reg, spec=spec, sampling=True)
        request = NetworkRequest(**meta["network"])
        weights = load_tensors(folder / "model.safetensors")
        generator = build_generator(built.backbone, request, spec, weights, str(folder / "model.safetensors"))
        decoder = None
        if meta.get("decoder"):
            d = dict(meta["decoder"])
            name = d.pop("data")
            if name not in reg.names("data"):
                raise CheckpointError(f"export {str(folder)!r}: its samples decode with data source {name!r}, which is "
                                      "not installed (install its plugin)")
            decoder = reg.get("data", name).cls.decoder_from_export(folder, d)
        return cls(built.objective, generator, spec, int(meta["default_nfe"]), decoder, meta).to(device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = "cpu", overrides: Sequence[str] = (),
                        registry: Registry | None = None) -> "OneStepPipeline":
        """A pipeline straight from a training checkpoint (a run or step folder), without exporting
        and without the trainer (no engines, optimizers or data streams); samples in model space
        decode through the data source (``output_type="pt"``). ``device`` None: the run's
        ``device`` setting. ``meta`` holds the run config (``run``) and the checkpoint folder."""
        run = load_run_generator(path, overrides, registry)
        nfe = int(run.config.sample.nfe or run.objective.default_nfe())
        meta = {"step": run.step, "objective": run.config.objective.name, "run": unstructure(run.config),
                "checkpoint": str(run.folder)}
        pipe = cls(run.objective, run.generator, run.spec, nfe, None, meta)
        pipe.source = run.source
        return pipe.to(resolve_device(run.config.device) if device is None else device)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: str | torch.device) -> "OneStepPipeline":
        self.generator.to(device)
        return self

    def labels(self, class_labels: int | Sequence[int] | torch.Tensor | None, n: int | None) -> tuple[torch.Tensor | None, int]:
        """Labels for ``n`` images: one label for all, a list (its length is ``n``), or classes in
        turn for a class-conditional model given none."""
        k = self.spec.num_classes
        if class_labels is None:
            n = 1 if n is None else n
            return (torch.arange(n) % k if k > 0 else None), n
        if k == 0:
            raise ConfigError("class_labels: this model is unconditional (its data had no classes)")
        y = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if y.numel() == 1 and n is not None:
            y = y.expand(n)
        if n is not None and len(y) != n:
            raise ConfigError(f"class_labels: {len(y)} labels for num_images={n}")
        if ((y < 0) | (y >= k)).any():
            raise ConfigError(f"class_labels: expected labels in 0..{k - 1}, got {y.tolist()}")
        return y.clone(), len(y)

    def _sample_batch(self, noise: torch.Tensor, y: torch.Tensor | None, nfe: int) -> torch.Tensor:
        """The objective's sampler on one batch, in the precision the generator trained in."""
        try:
            with sampling_autocast(self.precision, noise.device):
                return self.objective.sample(self.nets, noise, y, nfe)
        except KeyError as exc:
            raise OnestepError(f"objective {self.objective.name!r} samples with network {exc.args[0]!r}, "
                               f"which an export does not carry (only {GENERATOR!r})") from None

    @torch.no_grad()
    def __call__(self, class_labels: int | Sequence[int] | torch.Tensor | None = None, num_images: int | None = None,
                 seed: int | None = None, nfe: int | None = None, output_type: str = "pt",
                 batch_size: int = 1000) -> torch.Tensor | list:
        """``num_images`` samples with ``nfe`` network evaluations (default: the objective's, 1 for
        one-step methods), drawn and decoded ``batch_size`` at a time, each batch moved to the CPU
        as it is done. ``seed`` makes the draw reproducible, on its own RNG (the global one is left
        as it was). ``output_type``: ``pt`` (images in [-1, 1], or points), ``model`` (model space,
        e.g. undecoded latents), ``np`` or ``pil``. The one sampling loop of onestep: the trainer's
        plots and evaluations, ``onestep sample``/``eval`` and exports all draw through it."""
        if output_type not in ("pt", "model", "np", "pil"):
            raise ConfigError(f"output_type: expected pt, model, np or pil, got {output_type!r}")
        if output_type == "pil" and self.spec.kind == "points":
            raise ConfigError("output_type 'pil': this model generates points, not images")
        y, n = self.labels(class_labels, num_images)
        nfe = nfe or self.default_nfe
        device = self.device
        out = []
        fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else []) if seed is not None else nullcontext()
        with fork:
            if seed is not None:
                torch.manual_seed(seed)
            for i in range(0, n, batch_size):
                m = min(batch_size, n - i)
                noise = torch.randn(m, *self.spec.shape, device=device)
                yy = y[i:i + m].to(device) if y is not None else None
                x = self._sample_batch(noise, yy, nfe).float()
                out.append((x if output_type == "model" else self.decode(x)).cpu())
        x = torch.cat(out)
        if output_type == "np":
            return x.numpy()
        if output_type == "pil":
            return to_pil(x)
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> images (or points): the export's decoder, else the data source of
        a pipeline loaded from a checkpoint, else ``x`` itself (data that needs no decoding)."""
        if self.decoder is not None:
            return self.decoder(x)
        if self.source is not None:
            return self.source.decode(x)
        return x


def to_pil(images: torch.Tensor) -> list:
    """[N, C, H, W] in [-1, 1] -> PIL images (grey for one channel)."""
    from PIL import Image

    a = images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im) for im in a]
