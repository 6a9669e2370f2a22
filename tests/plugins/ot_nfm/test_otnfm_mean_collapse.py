"""OT-NFM end to end on gmm8 with the mlp backbone: independent pairs collapse to the data mean,
minibatch-ot and online pairs match the target; a run with the online coupler resumes exactly."""
import pytest
import torch

from conftest import assert_same_checkpoint_weights
from onestep.api import compose
from onestep.trainer import Trainer

# 2,000 training points seen ~10 times each, so the online coupler's kept pairs are revisited
SMALL = ["backbone.width=128", "backbone.depth=2", "train.batch_size=128", "train.steps=150", "objective.lr=2e-3",
         "data.size=2000", "eval.metrics=[sinkhorn,mode-coverage]", "eval.num_samples=1000", "sample.num=300"]


def train(coupler, quiet, extra=()):
    run = Trainer(compose(objective="ot-nfm", backbone="mlp", data="gmm8", coupler=coupler,
                            overrides=[*quiet, *SMALL, *extra]), console=False)
    summary = run.fit()
    return run, summary["metrics"]


@pytest.fixture(scope="module")
def data_std():
    from onestep.registry import Registry

    info = Registry.discover().get("data", "gmm8")
    return info.cls(info.cls.Config()).dataset("train").tensors[0].std(0)


def test_independent_pairs_collapse_to_the_mean_and_ot_pairs_cure_it(quiet, tmp_path, data_std):
    out = {}
    for coupler in ("independent", "minibatch-ot", "online"):
        run, metrics = train(coupler, [f"output_dir={tmp_path}/{coupler}", *quiet[1:]])
        x = run.sample(2000)
        out[coupler] = (x.std(0), x.mean(0), metrics)
        if coupler == "online":
            assert len(run.coupler.keys) == 2000  # one kept noise per training point, revisited
    std, mean, m = out["independent"]
    assert (std < 0.25 * data_std).all()  # every output near one point ...
    assert mean.norm() < 0.5  # ... the data mean (the origin for gmm8)
    assert m["modes_covered"] == 0
    for coupler in ("minibatch-ot", "online"):
        std, _, mc = out[coupler]
        assert ((std - data_std).abs() < 0.15 * data_std).all(), (coupler, std)
        assert mc["sinkhorn"] < 0.1 * m["sinkhorn"], (coupler, mc["sinkhorn"], m["sinkhorn"])
        assert mc["modes_covered"] == 8, (coupler, mc)


def test_online_coupler_resumes_exactly(quiet, tmp_path):
    short = ["train.steps=20", "train.checkpoint_every=10", "train.keep_checkpoints=3", "eval.metrics=[sinkhorn]",
             "eval.num_samples=200", "sample.num=100"]
    straight, _ = train("online", [f"output_dir={tmp_path}/a", *quiet[1:]], short)
    resumed = Trainer(compose(objective="ot-nfm", backbone="mlp", data="gmm8", coupler="online",
                                overrides=[f"output_dir={tmp_path}/b", *quiet[1:], *SMALL, *short]), console=False)
    resumed.fit(resume=f"{tmp_path}/a/checkpoints/step-0000010")
    assert_same_checkpoint_weights(tmp_path / "a", tmp_path / "b", 20)
    sa, sb = straight.coupler.state_dict(), resumed.coupler.state_dict()
    assert len(sa["keys"]) > 0 and all(torch.equal(sa[k], sb[k]) for k in sa)
