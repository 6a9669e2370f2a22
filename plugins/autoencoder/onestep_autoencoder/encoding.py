"""Encode an image folder to a latents file once, resumably (``onestep encode``).

Images are listed in sorted order; the first path component under the folder is the class
(ImageNet layout ``train/<class>/<image>``); a folder without sub-folders is unlabelled. Each
image is centre-cropped to a square, resized to ``size`` and encoded to its posterior mean.

Progress is kept in ``<out>.parts/``: a ``settings.json`` (VAE, its config, image size, folder)
and shards ``shard-NNNNNN.npz`` of latents keyed by relative image path, each written to a
temporary name and renamed, so an interrupted run loses at most the shard in flight. A re-run
with the same settings encodes only images that no shard (and no existing output file) holds
yet, so a folder that grew is topped up rather than re-encoded. The output file is assembled in
sorted file order, written atomically, and the parts folder removed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from onestep.data.images import IMAGE_SUFFIXES
from onestep.errors import ConfigError
from onestep.files import write_atomic
from onestep.progress import bar as progress_bar

from . import diffusers_vae as vaelib
from .latents import read_latents_file


def list_images(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Relative image paths (sorted), class names and one label per image."""
    if not root.is_dir():
        raise ConfigError(f"--images: folder {str(root)!r} not found")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"--images: no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
    nested = [f for f in files if "/" in f]
    if not nested:
        return files, [], [0] * len(files)
    loose = [f for f in files if "/" not in f]
    if loose:
        raise ConfigError(f"--images: {loose[0]!r} sits beside class sub-folders; move it into one (or remove it)")
    classes = sorted({f.split("/", 1)[0] for f in files})
    index = {c: i for i, c in enumerate(classes)}
    return files, classes, [index[f.split("/", 1)[0]] for f in files]


def load_image(path: Path, size: int) -> torch.Tensor:
    """RGB image, centre-cropped and resized to ``size`` x ``size``, as [3, size, size] in [-1, 1]."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.fit(img.convert("RGB"), (size, size), Image.BICUBIC)
    a = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())
    return a.permute(2, 0, 1) / 127.5 - 1.0


class _Images(Dataset):
    def __init__(self, root: Path, files: list[str], size: int) -> None:
        self.root, self.files, self.size = root, files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.root / self.files[i], self.size), i


def save_npz_atomic(path: Path, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to the ``.npz`` file ``path`` whole or not at all, flushed to disk."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a handle: np.savez would add .npz to a path without it
            np.savez(fh, **arrays)

    write_atomic(path, write, sync=True)


class Parts:
    """The shards of an encode in progress."""

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        self.folder, self.settings = folder, settings

    def open(self) -> dict[str, np.ndarray]:
        """Latents already encoded with these settings, by file; creates the folder if new."""
        manifest = self.folder / "settings.json"
        if manifest.is_file():
            have = json.loads(manifest.read_text())
            if have != self.settings:
                diff = sorted(k for k in self.settings if have.get(k) != self.settings[k])
                raise ConfigError(f"--out: unfinished encode {str(self.folder)!r} used other settings ({', '.join(diff)}); "
                                  "re-run with those settings or delete that folder")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(manifest, lambda tmp: tmp.write_text(json.dumps(self.settings, sort_keys=True)))
        done: dict[str, np.ndarray] = {}
        for shard in self.shards():
            with np.load(shard, allow_pickle=False) as z:
                done.update(zip((str(f) for f in z["files"]), z["x"]))
        return done

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz"))

    def write(self, files: list[str], latents: list[np.ndarray]) -> None:
        shards = self.shards()
        n = int(shards[-1].stem.split("-")[1]) + 1 if shards else 0
        save_npz_atomic(self.folder / f"shard-{n:06d}.npz", {"x": np.stack(latents), "files": np.array(files)})


def _reusable_output(out: Path, settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """Latents of an existing output file written with the same settings (a folder that grew)."""
    if not out.is_file():
        return {}
    try:
        m = read_latents_file(out)
        with np.load(out, allow_pickle=False) as z:
            images = str(z["images"]) if "images" in z.files else None
    except ConfigError:
        return {}
    same = (m["vae"], m["vae_config_dir"], m["size"], m["vae_config"], images) == (
        settings["vae"], settings["vae_config_dir"], settings["size"], settings["vae_config"], settings["images"])
    return dict(zip(m["files"], m["x"])) if same else {}


def _encode_all(loader: DataLoader, model, dev: torch.device, todo: list[str], done: dict[str, np.ndarray],
                parts: "Parts", bar, shard_size: int) -> None:
    """Encode the images ``loader`` yields (indices into ``todo``) into ``done``, writing a shard
    to ``parts`` every ``shard_size`` latents (and the rest at the end, also on an interruption),
    so an interrupted encoding resumes where it stopped."""
    pending_files: list[str] = []
    pending: list[np.ndarray] = []
    try:
        for x, idx in loader:
            z = vaelib.encode(model, x.to(dev)).float().cpu().numpy()
            names = [todo[int(i)] for i in idx]
            pending_files += names
            pending += list(z)
            done.update(zip(names, z))
            bar.update(len(names))
            if len(pending) >= shard_size:
                parts.write(pending_files, pending)
                pending_files, pending = [], []
    finally:
        if pending:
            parts.write(pending_files, pending)


def encode_folder(
    vae: str, images: str | Path, out: str | Path, size: int = 256, batch_size: int = 32, device: str = "auto",
    vae_config: str | None = None, shard_size: int = 1024, workers: int = 0, progress: bool = True,
) -> dict[str, Any]:
    """Encode every image under ``images`` to ``out`` (.npz), resuming earlier partial work.
    Returns ``{"path", "total", "encoded", "reused"}``."""
    out, root = Path(out), Path(images).resolve()
    if out.suffix != ".npz":
        raise ConfigError(f"--out {str(out)!r}: expected a .npz path")
    for name, v, low in (("--size", size, 8), ("--batch", batch_size, 1), ("--shard-size", shard_size, 1)):
        if v < low:
            raise ConfigError(f"{name}: expected >= {low}, got {v}")
    files, classes, labels = list_images(root)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    ref = str(Path(vae).expanduser().resolve()) if Path(vae).expanduser().exists() else vae
    config_dir = str(Path(vae_config).resolve()) if vae_config else ""
    model = vaelib.load_vae(ref, config_dir or None).to(dev)
    config = json.loads(json.dumps(dict(model.config), default=list))
    settings = {"vae": ref, "vae_config_dir": config_dir, "vae_config": config, "size": size, "images": str(root)}
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = Parts(out.with_name(out.name + ".parts"), settings)
    done = {**_reusable_output(out, settings), **parts.open()}
    todo = [f for f in files if f not in done]
    reused = len(files) - len(todo)
    loader = DataLoader(_Images(root, todo, size), batch_size=batch_size, num_workers=workers)
    bar = progress_bar(total=len(files), initial=reused, unit="img", desc="encode", show=progress)
    try:
        _encode_all(loader, model, dev, todo, done, parts, bar, shard_size)
    finally:
        bar.close()
    scale, shift = vaelib.latent_factors(model)
    save_npz_atomic(out, {
        "x": np.stack([done[f] for f in files]).astype(np.float32), "y": np.array(labels, dtype=np.int64),
        "classes": np.array(classes, dtype=str), "files": np.array(files), "scaling_factor": np.float64(scale),
        "shift_factor": np.float64(shift), "vae": np.array(ref), "vae_config_dir": np.array(config_dir),
        "vae_config": np.array(json.dumps(config, sort_keys=True)), "size": np.int64(size), "images": np.array(str(root)),
    })
    shutil.rmtree(parts.folder, ignore_errors=True)
    return {"path": str(out), "total": len(files), "encoded": len(todo), "reused": reused}
