"""What the ``autoencoded`` data source can reach at best: the autoencoder's reconstructions of the
held-out images, scored like the board (the image source's classifier features, against the real
held-out images), beside a no-learning baseline (a Gaussian per class fitted to the training codes,
decoded). A latent row of the board cannot beat the first; it must beat the second to have learnt
anything beyond per-class means and covariances.

    python tools/autoencoder_ceiling.py [--eval-samples N] [data options, e.g. data.source=mnist data.dim=32]

Trains the autoencoder on a cache miss (as the board would), so run it where the board runs.
"""
from __future__ import annotations

import argparse
import json

import torch

from onestep.api import compose
from onestep.components import build_components
from onestep.config import EvalConfig
from onestep.metrics.evaluate import held_out, score
from onestep.registry import Registry

METRICS = ["fid", "precision-recall", "class-accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-samples", type=int, default=None)
    ap.add_argument("overrides", nargs="*", metavar="data.key=value")
    a = ap.parse_args()
    registry = Registry.discover()
    source = build_components(compose(objective="flow-matching", backbone="mlp", data="autoencoded",
                                      overrides=a.overrides, registry=registry), registry).source
    ref, ref_y = held_out(source, a.eval_samples)
    ev, cache, out = EvalConfig(metrics=METRICS, num_samples=len(ref)), {}, {}

    def report(name: str, samples: torch.Tensor) -> None:
        r = score(samples, ref_y, ref, ref_y, source, METRICS, ev, registry, cache)
        out[name] = {k.split("[")[0]: round(v, 4) for k, v in r.items()}
        print(f"{name}: {json.dumps(out[name])}", flush=True)

    report("reconstructions of the held-out images (the ceiling)", ref)
    codes, labels = source.dataset("train").tensors
    g = torch.Generator().manual_seed(0)
    gauss = torch.empty_like(ref)
    for c in labels.unique().tolist():
        own = codes[labels == c]
        cov = torch.cov(own.T) + 1e-5 * torch.eye(own.shape[1])
        chol = torch.linalg.cholesky(cov)
        rows = ref_y == c
        gauss[rows] = own.mean(0) + torch.randn(int(rows.sum()), own.shape[1], generator=g) @ chol.T
    report("a Gaussian per class in the latent, decoded (no learning)", gauss)
    print(json.dumps({"cache": str(source.cache_path()), "results": out}))


if __name__ == "__main__":
    main()
