"""OT-NFM on MNIST end to end on the CPU (a short run; the long one is on the GPU, see
tools/RESULTS.md): the flow-map loss falls, one-step samples move from the noise towards the digits,
and the run writes an 8x8 grid of 28x28 samples."""
import json

import torch
from PIL import Image

from onestep.api import compose
from onestep.metrics.toy import sinkhorn_divergence
from onestep.trainer import Trainer

SHORT = ["train.steps=30", "train.batch_size=32", "train.log_every=1", "backbone.width=64", "backbone.depth=1",
         "objective.lr=2e-3", "objective.class_conditional=false", "eval.metrics=[]", "sample.grid=64"]


def test_mnist_short_run_learns_and_writes_a_sample_grid(quiet, tmp_path):
    run = Trainer(compose(objective="ot-nfm", backbone="mlp", data="mnist", coupler="online",
                            overrides=[*quiet, *SHORT]), console=False)
    summary = run.fit()
    losses = [r["flow-map/loss"] for r in map(json.loads, open(f"{summary['out_dir']}/metrics.jsonl")) if "step" in r
              and "flow-map/loss" in r]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses

    samples = run.sample(200).flatten(1)
    digits, _ = run.reference(200)
    digits = digits.flatten(1)
    noise = torch.randn_like(digits)
    assert sinkhorn_divergence(samples, digits, blur=0.5) < 0.8 * sinkhorn_divergence(noise, digits, blur=0.5)

    grid = Image.open(summary["samples_png"])
    assert grid.width >= 10 * 28 and grid.height >= 7 * 28  # 64 samples, a row per 10 (the class count)
