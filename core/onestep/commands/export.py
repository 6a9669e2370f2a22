"""``onestep export``: a checkpoint's EMA generator as ``model.safetensors`` + ``config.json``
(+ the VAE for latent data), loadable with :class:`onestep.export.OneStepPipeline`."""
from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, args.overrides, copy_vae=not args.reference_vae,
                            overwrite=args.overwrite)
    print(f"exported to {out} (load with onestep.export.OneStepPipeline.from_pretrained({str(out)!r}))")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint's EMA generator for OneStepPipeline")
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at DIR (nothing else)")
    p.add_argument("--reference-vae", action="store_true",
                   help="latent data: record the VAE's path instead of copying it into DIR/vae")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="amend the saved config, e.g. data.vae=PATH")
    p.set_defaults(func=cmd_export)
