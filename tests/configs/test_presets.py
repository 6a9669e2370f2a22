"""The presets under configs/: every one loads and validates (its components build), and each
ImageNet-256 recipe, shrunk to tiny sizes on synthetic latents, trains 2 steps on CPU through the
trainer, checkpoints, and resumes to the same weights as an uninterrupted run."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_same_checkpoint_weights
from onestep.api import compose
from onestep.compare.presets import presets_by_objective
from onestep.config import assemble, build_config
from onestep.interfaces import DataSpec
from onestep.trainer import Trainer

CONFIGS = Path(__file__).parents[2] / "configs"
PRESETS = sorted(CONFIGS.rglob("*.yaml"))
IMAGENET = sorted((CONFIGS / "imagenet256").glob("*.yaml"))
# what a data source that needs a dataset file or package would report (no file is read here)
SPECS = {"latents": DataSpec((4, 32, 32), 1000, "latents"), "mnist-full": DataSpec((1, 28, 28), 10, "images"),
         "mnist": DataSpec((1, 28, 28), 10, "images"), "autoencoded": DataSpec((16,), 10, "latents")}


STACKED = {CONFIGS / "guidance" / "af-mnist-guided.yaml": CONFIGS / "af-mnist.yaml",
           CONFIGS / "mnist-latent" / "guidance" / "af-guided.yaml": CONFIGS / "mnist-latent" / "af.yaml",
           CONFIGS / "imagenet256" / "guidance" / "af-xl2-guided.yaml": CONFIGS / "imagenet256" / "af-xl2.yaml"}
"""Stage presets given after the preset they amend (``--config BASE --config STAGE``)."""


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_preset_loads_and_builds_its_components(registry, path):
    config = build_config(assemble([STACKED[path], path] if path in STACKED else [path]), registry)
    data = config.data.name
    spec = SPECS.get(data) or registry.build("data", data, config.data.config).spec()
    objective = registry.build_objective(config, spec)
    backbone = registry.build("backbone", config.backbone.name, config.backbone.config)
    assert objective.networks() and objective.phases()
    assert backbone.name == config.backbone.name


def test_imagenet_presets_exist_and_stay_out_of_method_preset_discovery():
    names = {p.stem for p in IMAGENET}
    assert {"af-b2", "af-xl2", "af-xl2-2nfe", "af-xl2-deep56", "wflow-b2", "wflow-l2", "wflow-xl2"} <= names
    found = {p for runs in presets_by_objective(CONFIGS).values() for p, _ in runs}
    assert not any("imagenet256" in str(p) for p in found)


def tiny(preset: Path) -> list[str]:
    """The preset at toy size: a 2-block DiT on 4 x 8 x 8 synthetic latents of 4 classes."""
    common = ["backbone.size=P/2", "data.name=synthetic-latents", "data.shape=[4,8,8]", "data.num_classes=4",
              "data.size=64", "train.progress=false", "eval.at_end=false", "sample.grid=4", "train.log_every=1"]
    if preset.stem.startswith("wflow"):
        return common + ["train.batch_size=16", "train.grad_accum=2", "objective.per_class=4",
                         "objective.bank_per_class=8", "features.width=4", "features.batch_size=32"]
    return common + ["train.batch_size=8"]


def _fit(registry, preset, out, steps, resume=None):
    overrides = tiny(preset) + [f"output_dir={out}", f"train.steps={steps}", "train.checkpoint_every=1",
                                f"features.cache_dir={out.parent / 'features'}" if preset.stem.startswith("wflow") else "seed=0"]
    run = Trainer(compose(files=[preset], overrides=overrides, registry=registry), registry=registry, console=False)
    run.fit(resume=resume)
    return run


@pytest.mark.parametrize("preset", IMAGENET, ids=lambda p: p.stem)
def test_imagenet_preset_trains_two_steps_checkpoints_and_resumes(registry, tmp_path, preset, one_thread):
    full = _fit(registry, preset, tmp_path / "full", 2)
    _fit(registry, preset, tmp_path / "half", 1)
    resumed = _fit(registry, preset, tmp_path / "half", 2, resume=str(tmp_path / "half"))
    assert full.step == resumed.step == 2
    names = [f"{n}.safetensors" for n in sorted(full.engines)] + ["generator.ema.safetensors"]
    after = assert_same_checkpoint_weights(tmp_path / "full", tmp_path / "half", 2, names)
    first = load_file(str(tmp_path / "full/checkpoints/step-0000001/generator.safetensors"))
    assert any(not torch.equal(after[k], first[k]) for k in after)  # the second step changed the generator


def test_imagenet_guided_recipe_runs_its_three_stages(registry, tmp_path, one_thread):
    """The paper's guided one-step AF recipe at toy size, as configs/imagenet256/guidance/ lays it out:
    the B/2 classifier preset trains, the unguided XL/2 preset trains, and the guided stage stacked on
    it starts from that run's EMA generator with the classifier frozen: the guidance term is in the
    log, the generator moves, and the classifier's weights are still its run's."""
    guidance = CONFIGS / "imagenet256" / "guidance"
    af = CONFIGS / "imagenet256" / "af-xl2.yaml"
    base = tiny(af) + ["train.steps=2", "seed=0"]

    def trainer(files, *extra):
        return Trainer(compose(files=files, overrides=base + list(extra), registry=registry), registry=registry,
                       console=False)

    trainer([guidance / "classifier-b2.yaml"], f"output_dir={tmp_path}/classifier").fit()
    trainer([af], f"output_dir={tmp_path}/af").fit()
    guided = trainer([af, guidance / "af-xl2-guided.yaml"], f"output_dir={tmp_path}/guided",
                     f"guidance.weights={tmp_path}/classifier", f"train.init_from={tmp_path}/af")
    guided.init_from(tmp_path / "af")  # what fit() does first (train.init_from)
    start = {k: v.detach().clone() for k, v in guided.engines["generator"].module.state_dict().items()}
    ema = load_file(str(tmp_path / "af/checkpoints/step-0000002/generator.ema.safetensors"))
    assert all(torch.equal(start[k], ema[k]) for k in ema)  # the fine-tuning starts at the unguided EMA
    guided.fit()
    after = guided.engines["generator"].module.state_dict()
    assert any(not torch.equal(after[k], start[k]) for k in start)
    saved = load_file(str(tmp_path / "classifier/checkpoints/step-0000002/classifier.ema.safetensors"))
    held = guided.guidance.classifier.state_dict()
    assert all(torch.equal(saved[k], held[k].cpu()) for k in saved)
    rows = [json.loads(line) for line in open(tmp_path / "guided" / "metrics.jsonl")]
    assert any("generator/guidance_cross_entropy" in r for r in rows)
    assert guided.guidance.config.scale == 0.003 and guided.objective.lambda_ot(0) == 0.005
