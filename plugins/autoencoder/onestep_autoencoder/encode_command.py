"""``onestep encode``: encode an image folder once with a local diffusers VAE (for ``data: latents``)."""
from __future__ import annotations

import argparse
import json


def cmd_encode(args: argparse.Namespace) -> int:
    from .encoding import encode_folder

    summary = encode_folder(
        args.vae, args.images, args.out, size=args.size, batch_size=args.batch, device=args.device,
        vae_config=args.vae_config, shard_size=args.shard_size, workers=args.workers, progress=not args.no_progress,
    )
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("encode", help="encode an image folder to VAE latents (.npz) for `data: latents`")
    p.add_argument("--vae", required=True, metavar="PATH",
                   help="local diffusers VAE folder, a .safetensors file (config.json beside it), or a cached hub name")
    p.add_argument("--vae-config", metavar="DIR", help="folder holding config.json for a single-file VAE")
    p.add_argument("--images", required=True, metavar="DIR", help="image folder; sub-folders are classes")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    p.add_argument("--size", type=int, default=256, help="centre-crop and resize images to SIZE x SIZE")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--shard-size", type=int, default=1024, help="images per resumable shard")
    p.add_argument("--workers", type=int, default=0, help="image-loading worker processes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_encode)
