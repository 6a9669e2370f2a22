"""What a latent data source of a trained autoencoder (``autoencoded``, ``autoencoded-kl``) can reach at best: the autoencoder's reconstructions of the
held-out images, scored like the board (the image source's classifier features, against the real
held-out images), beside a no-learning baseline (a Gaussian per class fitted to the training codes,
decoded). A latent row of the board cannot beat the first; it must beat the second to have learnt
anything beyond per-class means and covariances.

    python tools/autoencoder_ceiling.py [--data autoencoded-kl] [--eval-samples N] [data options, e.g. data.source=mnist]

Trains the autoencoder on a cache miss (as the board would), so run it where the board runs.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from onestep.api import compose
from onestep.components import build_components
from onestep.config import EvalConfig
from onestep.metrics.evaluate import held_out, score
from onestep.registry import Registry

METRICS = ["fid", "precision-recall", "class-accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="autoencoded", help="the latent source: autoencoded or autoencoded-kl")
    ap.add_argument("--eval-samples", type=int, default=None)
    ap.add_argument("overrides", nargs="*", metavar="data.key=value")
    a = ap.parse_args()
    registry = Registry.discover()
    started = time.perf_counter()
    source = build_components(compose(objective="flow-matching", backbone="mlp", data=a.data,
                                      overrides=a.overrides, registry=registry), registry).source
    ref, ref_y = held_out(source, a.eval_samples)
    print(f"autoencoder ready and the data encoded in {time.perf_counter() - started:.0f} s (training it on a cache miss)",
          flush=True)
    ev, cache, out = EvalConfig(metrics=METRICS, num_samples=len(ref)), {}, {}

    def report(name: str, samples: torch.Tensor) -> None:
        r = score(samples, ref_y, ref, ref_y, source, METRICS, ev, registry, cache)
        out[name] = {k.split("[")[0]: round(v, 4) for k, v in r.items()}
        print(f"{name}: {json.dumps(out[name])}", flush=True)

    report("reconstructions of the held-out images (the ceiling)", ref)
    codes, labels = source.dataset("train").tensors
    codes = codes.flatten(1)
    g = torch.Generator().manual_seed(0)
    gauss = torch.empty(len(ref), codes.shape[1])
    for c in labels.unique().tolist():
        own = codes[labels == c]
        cov = torch.cov(own.T) + 1e-5 * torch.eye(own.shape[1])
        chol = torch.linalg.cholesky(cov)
        rows = ref_y == c
        gauss[rows] = own.mean(0) + torch.randn(int(rows.sum()), own.shape[1], generator=g) @ chol.T
    report("a Gaussian per class in the latent, decoded (no learning)", gauss.reshape(ref.shape))
    print(json.dumps({"cache": str(source.cache_path()), "results": out}))


if __name__ == "__main__":
    main()
