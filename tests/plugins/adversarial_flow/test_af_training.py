"""AF trained end to end through ``compose``/``Trainer``: the 8-mode toy with and without the OT
loss, the 1D mixture's map across seeds, and MNIST with the DiT backbone (with and without
classifier guidance)."""
import json
import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch.distributions import Normal

from onestep.api import compose
from onestep.trainer import Trainer


pytestmark = pytest.mark.usefixtures("one_thread")


def train(tmp_path, name, data, overrides, backbone="mlp", **kw):
    cfg = compose(objective="adversarial-flow", backbone=backbone, data=data, overrides=[
        f"output_dir={tmp_path}/{name}", "train.progress=false", "train.log_every=50", *overrides], **kw)
    run = Trainer(cfg, console=False)
    return run, run.fit()


def one_step_map(run, z):
    n = z.shape[0]
    with torch.no_grad():
        return run.objective.transport(run.nets.ema("generator"), z, torch.ones(n), torch.zeros(n), None)


GMM8 = ["backbone=mlp", "backbone.width=64", "backbone.depth=2", "data.std=0.5", "train.steps=500", "objective.ot_decay_steps=500",
        "train.batch_size=512", "objective.lambda_gp=0.1", "objective.lr=3e-3", "train.networks.generator.lr=1e-3",
        "eval.num_samples=1000", "sample.num=500"]


def transport_cost_ratio(z: torch.Tensor, x: torch.Tensor) -> float:
    """E||G(z) - z||^2 over the exact W2^2 between the same noise and the map's own samples (an
    optimal assignment): 1 for an optimal-transport map, above 1 for any other map."""
    cost = torch.cdist(z, x).square()
    rows, cols = linear_sum_assignment(cost.double().numpy())
    return float(cost.diagonal().mean() / cost[rows, cols].mean())


@pytest.mark.slow
def test_gmm8_without_the_ot_loss_the_map_is_neither_optimal_nor_unique(tmp_path):
    """With the OT loss both seeds cover the 8 modes, match the data (Sinkhorn divergence well
    below a blurred ring's ~0.25) and learn the OT map: transport cost within 3% of W2^2, and the
    two seeds' maps agree. The same runs without it match the data as well but learn some other
    map: a higher transport cost and maps that differ between seeds (measured: cost ratios 1.01,
    1.01 vs 1.17, 3.0; seed gap 0.57 vs 7.8). The generator here is the plain G(z) = g(z)
    (Eq. 29): the default residual G(z) = z - g(z) starts at the identity and on this toy stays
    near the OT map even without the loss (ratios ~1.00 either way)."""
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    maps, ratios = {}, {}
    for name, extra in (("ot", []), ("no_ot", ["objective.lambda_ot=0", "objective.lambda_ot_end=0"])):
        for seed in (0, 1):
            # the head the measurements below were taken with (generator_out_norm: 2-D samples on a ring)
            run, summary = train(tmp_path, f"{name}{seed}", "gmm8", GMM8 + extra + [
                "objective.residual=false", "backbone.generator_out_norm=true", f"seed={seed}"])
            maps[name, seed] = x = one_step_map(run, z)
            ratios[name, seed] = transport_cost_ratio(z, x)
            assert summary["metrics"]["modes_covered"] == 8 and summary["metrics"]["sinkhorn"] < 0.2, (name, seed, summary)
    gap = {name: float((maps[name, 0] - maps[name, 1]).norm(dim=1).mean()) for name in ("ot", "no_ot")}
    assert max(ratios["ot", 0], ratios["ot", 1]) < 1.03, ratios
    assert ratios["no_ot", 0] + ratios["no_ot", 1] > ratios["ot", 0] + ratios["ot", 1] + 0.1, ratios
    assert gap["no_ot"] > 3 * gap["ot"], gap


TARGETS_1D = {"three-modes": [], "two-modes": ["data.means=[-1.0,2.0]", "data.weights=[0.6,0.4]"]}


@pytest.mark.slow
@pytest.mark.parametrize("form", ["residual", "direct"])
def test_1d_two_seeds_learn_the_same_monotone_ot_map_on_two_targets(tmp_path, form):
    """In 1D the OT map is the monotone quantile map F^-1(Phi(z)); AF's map is anchored to it, so
    two seeds (different initialisations, data order and noise) land on nearly the same monotone map,
    for the residual G(z) = z - g(z) and the direct G(z) = g(z) (the one-step form of the authors'
    code) alike. The direct form needs the OT loss to start strong (lambda_ot 1.0, decaying): at the
    paper's 0.2 one seed in two drops a mode for good on both targets (measured: Sinkhorn 2.6 and
    1.5 against 0.005-0.02, maps starting at +0.7 instead of -2.4), the local minimum the paper
    warns of for too small an OT weight (Sec. 3.2). A larger R1/R2 weight (1.0) does not help."""
    base = ["backbone=mlp", "backbone.width=64", "backbone.depth=2", "train.steps=400", "objective.ot_decay_steps=400",
            "train.batch_size=256", "objective.lambda_gp=0.1", "objective.lr=3e-3", "train.networks.generator.lr=1e-3",
            "eval.metrics=[sinkhorn]", "eval.num_samples=1000", "sample.num=200"]
    if form == "direct":
        base += ["objective.residual=false", "objective.lambda_ot=1.0"]
    z = torch.linspace(-2.0, 2.0, 81).unsqueeze(1)
    for target, data in TARGETS_1D.items():
        maps = []
        for seed in (0, 1):
            run, summary = train(tmp_path, f"{target}{seed}", "gmm1d", base + data + [f"seed={seed}"])
            assert summary["metrics"]["sinkhorn"] < 0.05, (target, seed, summary["metrics"])
            maps.append(one_step_map(run, z).squeeze(1))
        sorted_data = torch.sort(run.source.dataset("train").tensors[0].squeeze(1))[0]
        quantile = sorted_data[(Normal(0, 1).cdf(z.squeeze(1)) * (len(sorted_data) - 1)).long()]
        for m in maps:
            assert (m - quantile).abs().median() < 0.15, (target, m)
            assert (m[1:] - m[:-1]).min() > -0.4, (target, m)  # monotone up to wiggles inside a mode
        assert (maps[0] - maps[1]).abs().median() < 0.1, target
        assert (maps[0] - maps[1]).abs().mean() < 0.3, target  # only the jumps between modes may sit apart


@pytest.mark.parametrize("guidance", [None, "classifier"])
def test_mnist_with_the_dit_backbone_runs_end_to_end(tmp_path, guidance):
    small = ["backbone.size=P/7", "train.steps=6", "train.batch_size=16", "train.log_every=3", "eval.metrics=[]"]
    extra = []
    if guidance:  # the recipe's stages: a noised classifier, then guidance fine-tuning from an unguided run
        classifier = compose(objective="noised-classifier", backbone="dit", data="mnist", overrides=[
            *small, f"output_dir={tmp_path}/classifier", "train.progress=false", "train.steps=2"])
        Trainer(classifier, console=False).fit()
        train(tmp_path, "unguided", "mnist", [*small, "train.steps=2"], backbone=None, files=["configs/af-mnist.yaml"])
        extra = [f"guidance.weights={tmp_path}/classifier", f"train.init_from={tmp_path}/unguided"]
    run, summary = train(tmp_path, f"mnist-{guidance}", "mnist", [*small, "sample.grid=20", *extra],
                         backbone=None, files=["configs/af-mnist.yaml"], guidance=guidance)
    assert summary["samples_png"] and summary["samples_png"].endswith(".png")
    rows = [json.loads(line) for line in open(f"{tmp_path}/mnist-{guidance}/metrics.jsonl")]
    losses = {k: v for r in rows for k, v in r.items() if k.endswith("loss")}
    expected = {"critic/loss", "generator/loss"}
    assert expected <= set(losses) and all(math.isfinite(v) for v in losses.values())
    if guidance:
        assert any("generator/guidance_cross_entropy" in r for r in rows)
    x = run.sample(10, y=torch.arange(10))
    assert x.shape == (10, 1, 28, 28) and torch.isfinite(x).all()
