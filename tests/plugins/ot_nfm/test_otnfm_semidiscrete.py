"""OT-NFM with the semidiscrete-ot coupler (the recommended one) end to end: on a mixture of
four well-separated modes its one-step samples cover every mode and leave few samples on the
bridges between modes, and a run resumes exactly (potentials included)."""
import numpy as np
import pytest
import torch

from conftest import assert_same_checkpoint_weights
from onestep.api import compose
from onestep.trainer import Trainer
from onestep.metrics.toy import mode_masses

CORNERS = torch.tensor([[3.0, 3.0], [-3.0, 3.0], [-3.0, -3.0], [3.0, -3.0]])  # 20 std apart
STD = 0.3

GMM8 = ["backbone.width=64", "backbone.depth=1", "train.batch_size=128", "train.steps=20", "train.checkpoint_every=10",
        "train.keep_checkpoints=3", "objective.predict=data", "data.size=2000", "eval.metrics=[sinkhorn]",
        "eval.num_samples=200", "sample.num=100", "coupler.fit_steps=20", "coupler.fit_batch=1024"]


@pytest.mark.slow
@pytest.mark.parametrize("in_cell", [0.0, 0.2])
def test_few_samples_between_modes_and_every_mode_covered(quiet, tmp_path, one_thread, in_cell):
    """Four Gaussians (std 0.3) at the corners of a square of side 6. Measured with these settings
    (tools/RESULTS.md): semidiscrete-ot leaves 5-9% of the samples farther than 3 std from every
    mode, minibatch-ot at batch 256 ~30% (the issue's bridges). The in-cell extension of the latent
    preset (0.2) must not build bridges either."""
    g = torch.Generator().manual_seed(0)
    x = CORNERS[torch.randint(0, 4, (4000,), generator=g)] + STD * torch.randn(4000, 2, generator=g)
    np.savez(tmp_path / "corners.npz", x=x.numpy())
    run = Trainer(compose(objective="ot-nfm", backbone="mlp", coupler="semidiscrete-ot", overrides=[
        f"output_dir={tmp_path}/run", *quiet[1:], "data.name=npz", f"data.path={tmp_path}/corners.npz",
        "data.kind=points", "backbone.width=256", "backbone.depth=3", "train.batch_size=256", "train.steps=1500",
        "train.warmup_steps=50", "train.ema_decay=0.99", "objective.lr=3e-3", "objective.predict=data",
        "objective.one_step_share=0.9", "coupler.fit_steps=100", "coupler.fit_batch=2048", f"coupler.in_cell={in_cell}",
        "eval.metrics=[]",
        "sample.num=100"]), console=False)
    run.fit()
    mass, off = mode_masses(run.sample(4000), CORNERS, 3 * STD)
    assert off < 0.10, off
    assert (mass > 0.2 * 0.25).all(), mass  # every mode holds at least a fifth of its share


@pytest.mark.parametrize("in_cell", [0.0, 0.2])
def test_semidiscrete_run_resumes_exactly(quiet, tmp_path, in_cell):
    settings = [*GMM8, f"coupler.in_cell={in_cell}", "coupler.cell_draws=4"]
    straight = Trainer(compose(objective="ot-nfm", backbone="mlp", data="gmm8", coupler="semidiscrete-ot",
                                 overrides=[f"output_dir={tmp_path}/a", *quiet[1:], *settings]), console=False)
    straight.fit()
    resumed = Trainer(compose(objective="ot-nfm", backbone="mlp", data="gmm8", coupler="semidiscrete-ot",
                                overrides=[f"output_dir={tmp_path}/b", *quiet[1:], *settings,
                                           "coupler.seed=5"]),  # a refit in prepare would give other potentials
                        console=False)
    resumed.fit(resume=f"{tmp_path}/a/checkpoints/step-0000010")
    assert_same_checkpoint_weights(tmp_path / "a", tmp_path / "b", 20)
    sa, sb = straight.coupler.state_dict(), resumed.coupler.state_dict()
    assert int(sa["steps"]) == 20 + 20  # fit + one refinement step per training step
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
