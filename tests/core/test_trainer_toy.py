"""End to end through the trainer: the flow-matching baseline learns the 8-mode toy; metric
settings from the run config reach the metrics."""
import torch

from onestep.api import compose
from onestep.metrics.toy import sinkhorn_divergence
from onestep.trainer import Trainer


def test_flow_matching_matches_gmm8(registry, quiet):
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", registry=registry,
                  overrides=quiet + ["train.steps=600", "train.batch_size=256", "train.optim.lr=2e-3",
                                     "backbone.width=128", "backbone.depth=2", "objective.nfe=20",
                                     "eval.num_samples=1000", "sample.num=500"])
    run = Trainer(cfg, registry=registry, console=False)
    ref = torch.stack([run.source.dataset("test")[i][0] for i in range(1000)])
    before = sinkhorn_divergence(run.sample(1000), ref)
    summary = run.fit()
    after = summary["metrics"]["sinkhorn"]
    floor = sinkhorn_divergence(torch.stack([run.source.dataset("train")[i][0] for i in range(1000)]), ref)
    assert after < before / 10, (before, after)
    assert after < floor + 0.3, (after, floor)
    assert summary["metrics"]["modes_covered"] == 8
    out = run.out_dir
    assert (out / "config.yaml").is_file() and any((out / "samples").glob("*.png"))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 60 and '"velocity/loss"' in lines[0]


def test_eval_options_reach_the_metric(registry, quiet, tmp_path):
    """``eval.options.sinkhorn.blur``: a blur as wide as the data hides the (untrained) model's
    error that the default blur shows."""
    def divergence(*options):
        cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", registry=registry,
                      overrides=quiet + ["train.steps=1", "eval.num_samples=500", f"output_dir={tmp_path}", *options])
        return Trainer(cfg, registry=registry, console=False).evaluate(["sinkhorn"])["sinkhorn"]

    sharp, wide = divergence(), divergence("eval.options.sinkhorn.blur=8.0")
    assert wide < sharp / 5, (sharp, wide)
