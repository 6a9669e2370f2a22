"""A diffusers VAE (``AutoencoderKL`` or ``AutoencoderTiny``) from local files only: loading,
encoding images to latents and decoding latents back to images.

Latent diffusion trains on ``z = (latent - shift) * scale`` (Rombach et al. 2022, Sec. 4.3:
the scaling makes latents roughly unit variance); ``scale`` and ``shift`` are the VAE config's
``scaling_factor`` and ``shift_factor`` and are stored next to the latents, so the model space
is unambiguous. Nothing here reaches the network: every load runs with ``HF_HUB_OFFLINE=1`` and
``local_files_only=True``.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from onestep.errors import ConfigError

VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")


@contextmanager
def offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the duration of a load, restored afterwards."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def import_diffusers():
    """``diffusers``, importable even where torchvision is installed but cannot load (a CUDA
    torchvision wheel beside a CPU torch): diffusers imports torchvision only when it believes
    it usable, and no VAE code needs it."""
    import diffusers.utils.import_utils as iu

    if iu.is_torchvision_available():
        try:
            import torchvision  # noqa: F401
        except Exception:
            iu._torchvision_available = False
    import diffusers

    return diffusers


def _vae_class(config: dict[str, Any], where: str) -> type:
    diffusers = import_diffusers()
    name = config.get("_class_name")
    if name not in VAE_CLASSES:
        raise ConfigError(f"vae {where!r}: config class {name!r} is not a supported VAE; valid: {', '.join(VAE_CLASSES)}")
    return getattr(diffusers, name)


def _read_config(folder: Path, where: str) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"vae {where!r}: cannot read {str(folder / 'config.json')!r} ({exc})") from None


def _model_folder(root: Path) -> Path:
    """A VAE folder, or a pipeline folder whose VAE sits in ``vae/``."""
    if not (root / "config.json").is_file() and (root / "vae" / "config.json").is_file():
        return root / "vae"
    return root


def load_vae(ref: str, config: str | None = None) -> nn.Module:
    """Load a VAE in eval mode on CPU from ``ref``: a local diffusers folder (or pipeline folder
    with ``vae/``), a single ``.safetensors`` file whose ``config.json`` sits beside it (or in
    folder ``config``), or a hub name already in the local Hugging Face cache."""
    if not ref:
        raise ConfigError("vae: empty path; expected a local VAE folder or .safetensors file")
    path = Path(ref).expanduser()
    with offline():
        if path.is_dir():
            folder = _model_folder(path)
            cls = _vae_class(_read_config(folder, ref), ref)
            vae = _from_pretrained(cls, str(folder), ref)
        elif path.is_file():
            vae = _from_single_file(path, Path(config) if config else path.parent, ref)
        elif path.suffix in (".safetensors", ".ckpt", ".json") or ref.startswith((".", "/", "~")):
            raise ConfigError(f"vae {ref!r}: no such file or folder")
        else:
            vae = _from_cache(ref)
    return vae.eval().requires_grad_(False)


def _from_pretrained(cls: type, where: str, ref: str, subfolder: str | None = None) -> nn.Module:
    try:
        return cls.from_pretrained(where, subfolder=subfolder, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"vae {ref!r}: cannot load ({' '.join(str(exc).split())[:200]})") from None


def _from_single_file(path: Path, config_dir: Path, ref: str) -> nn.Module:
    if path.suffix != ".safetensors":
        raise ConfigError(f"vae {ref!r}: expected a folder or a .safetensors file (pickled .ckpt files are not loaded)")
    if not (config_dir / "config.json").is_file():
        raise ConfigError(f"vae {ref!r}: a single weights file needs its config.json beside it or in --vae-config DIR; "
                          f"none in {str(config_dir)!r}")
    cls = _vae_class(_read_config(config_dir, ref), ref)
    try:
        if hasattr(cls, "from_single_file"):  # converts original (LDM) key names when needed
            return cls.from_single_file(str(path), config=str(config_dir), local_files_only=True)
        from safetensors.torch import load_file

        vae = cls.from_config(cls.load_config(str(config_dir), local_files_only=True))
        vae.load_state_dict(load_file(str(path)))
        return vae
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ConfigError(f"vae {ref!r}: cannot load ({' '.join(str(exc).split())[:200]})") from None


def _from_cache(name: str) -> nn.Module:
    AutoencoderKL = import_diffusers().AutoencoderKL

    for subfolder in (None, "vae"):
        try:
            config = AutoencoderKL.load_config(name, subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError):
            continue
        return _from_pretrained(_vae_class(config, name), name, name, subfolder)
    raise ConfigError(
        f"vae {name!r}: not a local folder or file, and not in the local Hugging Face cache; onestep never downloads: "
        f"fetch it once (huggingface-cli download {name} --local-dir DIR) and pass DIR"
    )


def latent_factors(vae: nn.Module) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of a VAE's config (shift 0 when it has none)."""
    cfg = vae.config
    scale = getattr(cfg, "scaling_factor", None)
    shift = getattr(cfg, "shift_factor", None)
    return float(1.0 if scale is None else scale), float(0.0 if shift is None else shift)


@torch.no_grad()
def encode(vae: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> raw (unscaled) latents; the posterior mean for a KL VAE,
    so encoding is deterministic and a resumed encode equals a one-shot one."""
    out = vae.encode(images)
    dist = getattr(out, "latent_dist", None)
    return dist.mean if dist is not None else out.latents


@torch.no_grad()
def decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents -> images in [-1, 1]."""
    return vae.decode(latents).sample.clamp(-1, 1)


class LatentDecoder:
    """Model-space latents -> images with a VAE that ``load()`` returns on first use.
    ``x / scale + shift`` undoes the normalisation of the data. Decoding runs on ``device``
    (default: the latents' device); the images come back on the latents' device. The one decoder
    of every latent source whose network is a diffusers VAE (``latents``, ``autoencoded-kl``)."""

    def __init__(self, load: Callable[[], nn.Module], scale: float, shift: float, batch_size: int = 64) -> None:
        self.load, self.scale, self.shift, self.batch_size = load, scale, shift, batch_size
        self._vae: nn.Module | None = None

    def vae(self, device: torch.device) -> nn.Module:
        if self._vae is None:
            self._vae = self.load()
        return self._vae.to(device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        device = torch.device(device) if device is not None else x.device
        vae = self.vae(device)
        dtype = next(vae.parameters()).dtype
        out = [decode(vae, (chunk.to(device, dtype) / self.scale + self.shift)).float().to(x.device)
               for chunk in x.split(self.batch_size)]
        return torch.cat(out) if out else x.new_zeros(0)


EXPORT_FOLDER = "vae"


def export_vae(folder: Path, decoder: LatentDecoder, copy: bool, ref: str = "", config_dir: str | None = None) -> dict:
    """Write ``decoder``'s VAE into ``folder/vae`` (diffusers ``save_pretrained``, safetensors) and
    return the export's description of it; with ``copy`` False and a ``ref`` that
    :func:`load_vae` reads, record ``ref`` instead of copying."""
    if copy or not ref:
        decoder.vae(torch.device("cpu")).save_pretrained(str(Path(folder) / EXPORT_FOLDER), safe_serialization=True)
        ref, config_dir = EXPORT_FOLDER, None
    return {"vae": ref, "config_dir": config_dir, "scaling_factor": decoder.scale, "shift_factor": decoder.shift}


def decoder_from_export(folder: Path, description: dict) -> LatentDecoder:
    """The decoder :func:`export_vae` described: the copied ``vae/`` or the referenced VAE."""
    ref = str(description.get("vae", EXPORT_FOLDER))
    where = str(Path(folder) / ref) if ref == EXPORT_FOLDER else ref
    config_dir = description.get("config_dir")
    return LatentDecoder(lambda: load_vae(where, config_dir), float(description["scaling_factor"]),
                         float(description["shift_factor"]))
