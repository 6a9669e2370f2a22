"""Latent datasets: images encoded once by a diffusers VAE (``onestep encode``), trained on in
the VAE's normalised latent space and decoded back to images for grids and image metrics.

The file is a plain ``.npz`` (read with ``allow_pickle=False``)::

    x               float32 [N, C, h, w]  raw latents (posterior means), not yet normalised
    y               int64   [N]           class index (sub-folder), 0 when unlabelled
    classes         str     [K]           class names (sub-folders, sorted); empty when unlabelled
    files           str     [N]           image paths relative to the encoded folder
    scaling_factor  float                 model space is (x - shift_factor) * scaling_factor
    shift_factor    float
    vae             str                   the VAE that encoded them (folder, file or cached name)
    vae_config_dir  str                   folder of config.json for a single-file VAE ('' if none)
    vae_config      str                   the VAE's config as JSON
    size            int                   images were centre-cropped and resized to size x size
    images          str                   the encoded folder (lets a re-encode reuse this file)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import attrs
from attrs.validators import optional
import numpy as np
import torch

from onestep.config import DEVICE, POSITIVE, at_least
from onestep.data.images import TEST_FRACTION, _ArraySource
from onestep.errors import ConfigError

from .diffusers_vae import LatentDecoder, decoder_from_export, export_vae, load_vae

REQUIRED_KEYS = ("x", "y", "classes", "files", "scaling_factor", "shift_factor", "vae", "vae_config_dir",
                 "vae_config", "size")


def read_latents_file(path: str | Path) -> dict[str, Any]:
    """All arrays and metadata of a latents file, with a one-line error naming what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.path: latents file {str(p)!r} not found (write one with `onestep encode`)")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in REQUIRED_KEYS if k not in z.files]
            if missing:
                raise ConfigError(f"data.path: {str(p)!r} is not a latents file from `onestep encode` (missing {', '.join(missing)})")
            raw = {k: z[k] for k in REQUIRED_KEYS}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.path: {str(p)!r} unreadable ({exc})") from None
    return {
        "x": raw["x"], "y": raw["y"].astype(np.int64), "classes": [str(c) for c in raw["classes"]],
        "files": [str(f) for f in raw["files"]], "scaling_factor": float(raw["scaling_factor"]),
        "shift_factor": float(raw["shift_factor"]), "vae": str(raw["vae"]), "vae_config_dir": str(raw["vae_config_dir"]),
        "vae_config": json.loads(str(raw["vae_config"])), "size": int(raw["size"]),
    }


@attrs.define
class LatentsConfig:
    path: str = ""  # a .npz written by `onestep encode`
    vae: str = ""  # VAE for decoding; '' = the one named in the file
    vae_config: str = ""  # folder with config.json for a single-file VAE; '' = the file's
    scaling_factor: Optional[float] = attrs.field(default=None, validator=optional(POSITIVE))
    """None = the file's (the VAE config's scaling_factor)"""
    decode_device: str = attrs.field(default="auto", validator=DEVICE)
    """auto: the latents' device, CUDA for CPU latents when available"""
    decode_batch: int = attrs.field(default=32, validator=at_least(1))
    test_fraction: float = attrs.field(default=0.05, validator=TEST_FRACTION)
    seed: int = 0


class Latents(_ArraySource):
    """VAE latents from `onestep encode`, normalised by the VAE's scaling/shift factors;
    ``decode`` turns samples back into images in [-1, 1] with that VAE (loaded lazily)."""

    name = "latents"
    Config = LatentsConfig
    kind = "latents"

    def __init__(self, config) -> None:
        super().__init__(config)
        self._meta: Optional[dict[str, Any]] = None
        self._decoder: Optional[LatentDecoder] = None

    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            if not self.config.path:
                raise ConfigError("data.path: required for data 'latents' (a .npz from `onestep encode`)")
            self._meta = read_latents_file(self.config.path)
        return self._meta

    def factors(self) -> tuple[float, float]:
        """``(scale, shift)``: model space is ``(latent - shift) * scale``."""
        m = self.meta()
        scale = self.config.scaling_factor if self.config.scaling_factor is not None else m["scaling_factor"]
        return scale, m["shift_factor"]

    def _load(self):
        m = self.meta()
        scale, shift = self.factors()
        x = (m["x"].astype(np.float32) - shift) * scale
        return x, (m["y"] if m["classes"] else None)

    def decoder(self) -> LatentDecoder:
        if self._decoder is None:
            scale, shift = self.factors()
            ref, config_dir = self.vae_ref()
            self._decoder = LatentDecoder(lambda: load_vae(ref, config_dir), scale, shift, batch_size=self.config.decode_batch)
        return self._decoder

    def vae_ref(self) -> tuple[str, str | None]:
        """The VAE that decodes (folder, file or cached name) and its config folder (None: its own)."""
        m = self.meta()
        return self.config.vae or m["vae"], self.config.vae_config or m["vae_config_dir"] or None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space latents [B, C, h, w] -> images [B, 3, H, W] in [-1, 1] on ``x``'s device."""
        device = self.config.decode_device
        if device == "auto":
            device = "cuda" if x.device.type == "cpu" and torch.cuda.is_available() else x.device
        try:
            return self.decoder()(x, device)
        except ConfigError as exc:
            raise ConfigError(f"data.vae: cannot decode latents: {exc}") from None

    def export_decoder(self, folder: Path, copy: bool = True) -> dict:
        """The VAE into the export (``vae/``), or its reference with ``copy`` False."""
        try:
            return export_vae(folder, self.decoder(), copy, *self.vae_ref())
        except ConfigError as exc:
            raise ConfigError(f"data.vae: cannot export the VAE: {exc}") from None

    @classmethod
    def decoder_from_export(cls, folder: Path, description: dict) -> LatentDecoder:
        return decoder_from_export(folder, description)
