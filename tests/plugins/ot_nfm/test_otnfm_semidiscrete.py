"""OT-NFM with the semidiscrete-ot coupler (the recommended one) end to end: on a mixture of
well-separated modes its one-step samples cover every mode and leave few samples on the bridges
between modes (fewer than minibatch OT's), and a run resumes exactly (potentials included)."""
import pytest
import torch
from safetensors.torch import load_file

from onestep.api import build_run, compose

TOY = ["backbone.width=128", "backbone.depth=2", "train.batch_size=256", "train.steps=400", "objective.lr=2e-3",
       "objective.predict=data", "data.size=4000", "eval.metrics=[mode-coverage]", "eval.num_samples=2000",
       "sample.num=300", "coupler.fit_steps=100", "coupler.fit_batch=2048"]


def train(coupler, out, quiet, extra=()):
    overrides = [f"output_dir={out}", *quiet[1:], *TOY, *extra]
    if coupler != "semidiscrete-ot":
        overrides = [o for o in overrides if not o.startswith("coupler.")]
    run = build_run(compose(objective="ot-nfm", backbone="mlp", data="gmm8", coupler=coupler, overrides=overrides),
                    console=False)
    return run, run.fit()["metrics"]


@pytest.mark.slow
def test_few_samples_between_modes_and_every_mode_covered(quiet, tmp_path):
    _, ours = train("semidiscrete-ot", tmp_path / "sd", quiet)
    assert ours["modes_covered"] == 8, ours
    assert ours["off_mode_fraction"] < 0.10, ours
    _, theirs = train("minibatch-ot", tmp_path / "mb", quiet)
    assert ours["off_mode_fraction"] < theirs["off_mode_fraction"], (ours, theirs)


def test_semidiscrete_run_resumes_exactly(quiet, tmp_path):
    short = ["train.steps=20", "train.checkpoint_every=10", "train.keep_checkpoints=3", "eval.metrics=[sinkhorn]",
             "eval.num_samples=200", "sample.num=100", "coupler.fit_steps=20"]
    straight, _ = train("semidiscrete-ot", tmp_path / "a", quiet, short)
    resumed = build_run(compose(objective="ot-nfm", backbone="mlp", data="gmm8", coupler="semidiscrete-ot",
                                overrides=[f"output_dir={tmp_path}/b", *quiet[1:], *TOY, *short,
                                           "coupler.seed=5"]),  # a refit in prepare would give other potentials
                        console=False)
    resumed.fit(resume=f"{tmp_path}/a/checkpoints/step-0000010")
    for name in ("generator.safetensors", "generator.ema.safetensors"):
        a = load_file(f"{tmp_path}/a/checkpoints/step-0000020/{name}")
        b = load_file(f"{tmp_path}/b/checkpoints/step-0000020/{name}")
        assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = straight.coupler.state_dict(), resumed.coupler.state_dict()
    assert int(sa["steps"]) == 20 + 20  # fit + one refinement step per training step
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
