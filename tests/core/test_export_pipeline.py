"""`onestep export` and OneStepPipeline: an exported generator samples exactly what the trainer
samples, and broken export folders fail with one-line errors."""
import json

import pytest
import torch

from onestep.api import compose
from onestep.cli import main
from onestep.errors import CheckpointError, ConfigError
from onestep.export import OneStepPipeline, export_checkpoint
from onestep.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", overrides=[
        f"output_dir={out}/run", "train.progress=false", "data.labelled=true", "data.size=2000",
        "objective.nfe=3", "backbone.width=32", "backbone.depth=1", "train.steps=10", "train.batch_size=64",
        "sample.num=200", "eval.num_samples=200", "eval.metrics=[sinkhorn]"])
    run = Trainer(cfg, console=False)
    summary = run.fit()
    return run, summary["checkpoint"], export_checkpoint(summary["checkpoint"], out / "export")


def test_pipeline_samples_equal_trainer_samples(trained):
    run, _, export = trained
    pipe = OneStepPipeline.from_pretrained(export, device="cpu")
    assert pipe.default_nfe == 3 and pipe.spec == run.spec
    assert torch.equal(pipe(num_images=40, seed=11), run.sample(40, seed=11))
    assert torch.equal(pipe(num_images=40, seed=11, nfe=1), run.sample(40, nfe=1, seed=11))
    label = torch.full((6,), 5, dtype=torch.long)
    assert torch.equal(pipe(class_labels=5, num_images=6, seed=2), run.sample(6, y=label, seed=2))
    assert not torch.equal(pipe(num_images=8, seed=1), pipe(num_images=8, seed=2))
    with pytest.raises(ConfigError, match="0..7"):
        pipe(class_labels=[8])


def test_export_records_what_the_model_needs(trained):
    _, _, export = trained
    meta = json.loads((export / "config.json").read_text())
    assert meta["objective"] == "flow-matching" and meta["default_nfe"] == 3 and meta["step"] == 10
    assert meta["spec"] == {"shape": [2], "num_classes": 8, "kind": "points"} and meta["decoder"] is None
    assert meta["components"]["backbone"]["width"] == 32
    assert "run" not in meta and set(meta["components"]) == {"objective", "backbone", "features"}
    assert sorted(p.name for p in export.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_the_model_card_describes_the_run_and_its_lines_load_and_sample(trained, tmp_path):
    """README.md: what the model is and how it trained, as the run recorded it; its code block
    samples what the trainer samples; loading never needs the card."""
    import re
    import shutil

    import yaml

    from onestep.config import unstructure

    run, _, export = trained
    card = (export / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "onestep" and {"flow-matching", "mlp", "gmm8"} <= set(front["tags"])
    parameters = sum(p.numel() for p in run.ema["generator"].module.parameters())
    records = [json.loads(line) for line in (run.out_dir / "metrics.jsonl").read_text().splitlines()]
    minutes = [r["train_minutes"] for r in records if "samples_per_s" in r][-1]
    sinkhorn = next(r["eval"]["sinkhorn"] for r in records if "eval" in r)
    for line in (f"**Objective:** `flow-matching`", f"**Backbone:** `mlp`, {parameters:,} parameters",
                 "**Network evaluations per sample (NFE):** 3", "**Data:** `gmm8` (8 classes)", "**Steps:** 10",
                 f"**Training time:** {minutes:.1f} minutes", "**Device:** cpu", f"| sinkhorn | {sinkhorn:.4g} |",
                 "Evaluated at step 10 (the exported step), 3 network evaluations per sample"):
        assert line in card, line
    config = yaml.safe_load(re.search(r"```yaml\n(.*?)```", card, re.S).group(1))
    assert config == unstructure(run.config)
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert len(code.strip().splitlines()) == 3
    scope: dict = {}
    exec(code, scope)
    assert torch.equal(scope["images"], run.sample(4, y=torch.arange(4), seed=0))
    bare = tmp_path / "bare"
    shutil.copytree(export, bare)
    (bare / "README.md").unlink()
    assert torch.equal(OneStepPipeline.from_pretrained(bare)(num_images=3, seed=1), run.sample(3, seed=1))


def test_missing_or_corrupt_export_files_give_clear_errors(trained, tmp_path):
    import shutil

    _, _, export = trained
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors.*unreadable"):
        OneStepPipeline.from_pretrained(broken)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors.*missing"):
        OneStepPipeline.from_pretrained(broken)
    shutil.copy(export / "model.safetensors", weights)
    meta = json.loads((broken / "config.json").read_text())
    meta["components"]["backbone"]["width"] = 48
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit the mlp generator"):
        OneStepPipeline.from_pretrained(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        OneStepPipeline.from_pretrained(broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json missing"):
        OneStepPipeline.from_pretrained(broken)


def test_export_command(trained, tmp_path, capsys):
    run, checkpoint, _ = trained
    assert main(["export", checkpoint, "--out", str(tmp_path / "cli")]) == 0
    assert torch.equal(OneStepPipeline.from_pretrained(tmp_path / "cli")(num_images=5, seed=0), run.sample(5, seed=0))
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onestep: error: checkpoint") and "\n" not in err and not (tmp_path / "x").exists()


def test_export_never_deletes_a_folder_it_did_not_write(trained, tmp_path, capsys):
    run, checkpoint, _ = trained
    thesis = tmp_path / "mine"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    for extra in ([], ["--overwrite"]):
        assert main(["export", checkpoint, "--out", str(thesis), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"onestep: error: --out '{thesis}': ") and "\n" not in err
    assert (thesis / "thesis.tex").read_text() == "years of work"
    run_dir = run.out_dir
    assert main(["export", str(run_dir), "--out", str(run_dir), "--overwrite"]) == 2  # the run folder itself
    assert "holds the checkpoint being exported" in capsys.readouterr().err
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "metrics.jsonl").is_file()


def test_an_earlier_export_is_replaced_only_when_asked_and_atomically(trained, tmp_path, monkeypatch):
    import onestep.export as export_module

    _, checkpoint, _ = trained
    out = tmp_path / "export"
    export_checkpoint(checkpoint, out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="exists and is not empty; .*--overwrite"):
        export_checkpoint(checkpoint, out)

    def crash(tmp, *args):
        (tmp / "model.safetensors").write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_write_export", crash)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(checkpoint, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before  # the earlier export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary folder left beside it
    monkeypatch.undo()
    assert export_checkpoint(checkpoint, out, overwrite=True) == out
    assert OneStepPipeline.from_pretrained(out)(num_images=2, seed=0).shape == (2, 2)


LOAD_WITHOUT_TRAINING_PLUGINS = '''
import importlib.abc, sys
import numpy as np

class Uninstalled(importlib.abc.MetaPathFinder):
    """The coupler, sinkhorn and guidance plugins are absent on this machine."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("onestep_couplers", "onestep_sinkhorn", "onestep_guidance"):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Uninstalled())
from onestep.export import OneStepPipeline
from onestep.registry import Registry

registry = Registry.discover()
assert not registry.names("guidance") and not registry.names("coupler"), registry.names("coupler")
for export, out in zip(sys.argv[1::2], sys.argv[2::2]):
    pipe = OneStepPipeline.from_pretrained(export, registry=registry)
    np.save(out, pipe(num_images=16, seed=5).numpy())
'''


@pytest.mark.slow
def test_an_export_loads_in_a_fresh_process_without_coupler_guidance_or_training_paths(tmp_path):
    """Runs trained with a coupler (flow-matching) and with classifier guidance (AF), whose
    config names an evaluation weights file: their exports sample, in a new process where the
    coupler and guidance plugins cannot be imported and that file no longer exists, exactly what
    their trainers sample."""
    import subprocess
    import sys

    import numpy as np

    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"only needed by image metrics on the training machine")
    small = ["train.progress=false", "train.steps=3", "train.batch_size=32", "backbone.width=16", "backbone.depth=1",
             "data.labelled=true", "data.size=500", "eval.at_end=false", "sample.num=50", f"eval.feature_weights={weights}"]
    classifier = compose(objective="noised-classifier", backbone="mlp", data="gmm8", overrides=[
        *small, f"output_dir={tmp_path}/classifier"])
    Trainer(classifier, console=False).fit()
    runs = {"coupled": dict(objective="flow-matching", coupler="minibatch-ot", overrides=["objective.nfe=2"]),
            "guided": dict(objective="adversarial-flow", guidance="classifier",
                           overrides=["objective.conditional=true", f"guidance.weights={tmp_path}/classifier"])}
    args, expected = [], {}
    for name, choice in runs.items():
        overrides = small + choice.pop("overrides") + [f"output_dir={tmp_path}/{name}"]
        run = Trainer(compose(backbone="mlp", data="gmm8", overrides=overrides, **choice), console=False)
        checkpoint = run.fit()["checkpoint"]
        export_checkpoint(checkpoint, tmp_path / f"{name}-export")
        assert str(weights) not in (tmp_path / f"{name}-export" / "config.json").read_text()
        expected[name] = run.sample(16, seed=5).numpy()
        args += [str(tmp_path / f"{name}-export"), str(tmp_path / f"{name}.npy")]
    weights.unlink()
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_TRAINING_PLUGINS, *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in runs:
        assert np.array_equal(np.load(tmp_path / f"{name}.npy"), expected[name]), name
