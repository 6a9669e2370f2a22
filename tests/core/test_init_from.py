"""A fine-tuning stage (``train.init_from`` / ``onestep run --init-from``): a new run whose networks
start from another run's weights, the generator from its EMA as in the paper's guided fine-tuning."""
import pytest
import torch
import yaml
from safetensors.torch import load_file

from onestep.api import compose
from onestep.cli import main
from onestep.errors import CheckpointError, ConfigError
from onestep.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["train.progress=false", "train.batch_size=64", "backbone.width=32", "backbone.depth=1", "eval.at_end=false",
         "sample.num=50"]


def run_of(tmp_path, name, objective="adversarial-flow", extra=()):
    return Trainer(compose(objective=objective, backbone="mlp", data="gmm8",
                           overrides=[*SMALL, f"output_dir={tmp_path}/{name}", *extra]), console=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """An AF run of 20 steps: its generator, generator EMA and critic differ from each other."""
    root = tmp_path_factory.mktemp("init")
    summary = run_of(root, "source", extra=["train.steps=20", "train.ema_decay=0.9"]).fit()
    return root / "source", summary["checkpoint"]


def same(module, tensors) -> bool:
    state = module.state_dict()
    return state.keys() == tensors.keys() and all(torch.equal(state[k].float(), tensors[k].float()) for k in tensors)


@pytest.mark.parametrize("from_ema", [True, False])
def test_networks_start_from_the_checkpoint_and_nothing_else_does(source, tmp_path, from_ema):
    folder, checkpoint = source
    files = {n: load_file(f"{checkpoint}/{n}.safetensors") for n in ("generator", "generator.ema", "critic")}
    assert not same(run_of(tmp_path, "probe").engines["generator"].module, files["generator.ema"])
    run = run_of(tmp_path, "fine", extra=[f"train.init_from={folder}", f"train.init_from_ema={str(from_ema).lower()}"])
    run.init_from(folder)
    assert same(run.engines["generator"].module, files["generator.ema" if from_ema else "generator"])
    assert same(run.engines["critic"].module, files["critic"])
    assert same(run.ema["generator"].module, files["generator.ema"])
    assert run.step == 0 and all(not e.optimizer.state for e in run.engines.values())


def test_a_fine_tuning_run_counts_its_own_steps_and_records_its_start(source, tmp_path, capsys):
    folder, _ = source
    assert main(["run", "--objective", "adversarial-flow", "--backbone", "mlp", "--data", "gmm8", *SMALL,
                 "train.steps=5", "--init-from", str(folder), "--out", str(tmp_path / "fine")]) == 0
    config = yaml.safe_load((tmp_path / "fine" / "config.yaml").read_text())
    assert config["train"]["init_from"] == str(folder)
    assert [p.name for p in (tmp_path / "fine" / "checkpoints").iterdir()] == ["step-0000005"]
    assert '"initialised"' in (tmp_path / "fine" / "log.jsonl").read_text()


def test_a_checkpoint_that_lacks_a_network_or_a_path_that_holds_none_is_refused(source, tmp_path):
    fm = run_of(tmp_path, "fm", objective="flow-matching", extra=["train.steps=2"])
    fm.fit()
    with pytest.raises(ConfigError, match=r"^train.init_from: checkpoint .* has no network 'critic' \(it holds generator\)"):
        run_of(tmp_path, "af").init_from(tmp_path / "fm")
    with pytest.raises(CheckpointError, match=r"^train.init_from: checkpoint .*nowhere.*: no complete checkpoint"):
        run_of(tmp_path, "af2").init_from(tmp_path / "nowhere")
