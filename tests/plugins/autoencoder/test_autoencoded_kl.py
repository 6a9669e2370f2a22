"""The ``autoencoded-kl`` data source: an image source in the spatial latent of a diffusers
``AutoencoderKL`` trained once and cached (resumable), whose latents decode back to the images they
encode, in which a DiT trains, and whose exports sample decoded images in a fresh process through
the same VAE mechanism as ``onestep encode``'s latents."""
import json
import subprocess
import sys

import pytest
import torch

import onestep_autoencoder.source as ae_source
from onestep.api import compose
from onestep.config import structure
from onestep.errors import ConfigError
from onestep.trainer import Trainer
from onestep_autoencoder.kl import KLArch, KLRecipe, load_kl, train_kl
from onestep_autoencoder.source import AutoencodedKL

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
TINY = {"source": "digits", "widths": [8, 16], "latent_channels": 4, "steps": 200, "batch_size": 64, "lr": 2.0e-3,
        "device": "cpu"}


def kl_source(registry, tmp_path, **kw) -> AutoencodedKL:
    return registry.build("data", "autoencoded-kl", structure({**TINY, "cache_dir": str(tmp_path / "ae"), **kw},
                                                              AutoencodedKL.Config, "data"))


def images_of(source, split):
    ds = source.dataset(split)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def no_training(*args, **kwargs):
    raise AssertionError("the autoencoder was trained again")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny autoencoder for the module (cache folder ``ae`` under its own tmp folder)."""
    from onestep.registry import Registry

    root = tmp_path_factory.mktemp("kl")
    source = kl_source(Registry.discover(), root)
    source.dataset("train")
    return root, source


def test_the_spatial_latent_is_cached_standardised_and_decodes_to_the_images(registry, trained, monkeypatch):
    root, first = trained
    spec = first.spec()
    assert (spec.kind, spec.shape, spec.num_classes) == ("latents", (4, 4, 4), 10)  # 8x8 digits, one down-sampling
    codes = first.dataset("train").tensors[0]
    assert abs(codes.mean().item()) < 1e-3 and abs(codes.std().item() - 1) < 1e-3  # the scaling/shift factors
    assert [f.name for f in (root / "ae").iterdir()] == [first.cache_path().name]  # no partial file left
    assert first.cache_path().name.startswith("digits-kl-")

    x = images_of(first.base(), "test")
    test_codes = first.dataset("test").tensors[0]
    decoded = first.decode(test_codes)
    assert decoded.shape == x.shape and decoded.abs().max() <= 1
    mse = (decoded - x).pow(2).mean().item()
    assert mse < 0.3 * x.var(0).mean().item(), mse  # far better than the mean image
    assert mse < 0.4 * (decoded - x.roll(1, 0)).pow(2).mean().item()  # these images, not some digits

    monkeypatch.setattr(ae_source, "train_kl", no_training)
    again = kl_source(registry, root)
    torch.testing.assert_close(again.dataset("test").tensors[0], test_codes, rtol=0, atol=0)
    torch.testing.assert_close(again.decode(test_codes), decoded, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="trained again"):  # another recipe is another network
        kl_source(registry, root, kl_weight=1e-3).dataset("test")


class Crash(Exception):
    pass


def test_an_interrupted_training_resumes_to_the_same_autoencoder(trained, tmp_path):
    _, source = trained
    x = images_of(source.base(), "train")
    arch = KLArch((1, 8, 8), 4, (8, 16), 1)
    recipe = KLRecipe(steps=60, batch_size=32, lr=2e-3, kl_weight=1e-4, seed=0, checkpoint_every=20)
    whole, _ = train_kl(x, arch, recipe, CPU, tmp_path / "a.partial.pt")

    def crash_at_40(step, loss):
        if step == 40:
            raise Crash

    partial = tmp_path / "b.partial.pt"
    with pytest.raises(Crash):
        train_kl(x, arch, recipe, CPU, partial, log=crash_at_40)
    seen = []
    resumed, numbers = train_kl(x, arch, recipe, CPU, partial, log=lambda step, loss: seen.append(step))
    assert seen == [] and numbers["steps"] == 60  # it continued from step 40 (no checkpoint after 40 < 60)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert whole.config.scaling_factor == pytest.approx(resumed.config.scaling_factor)


@pytest.mark.parametrize("options, message", [
    ({"widths": []}, r"^data\.widths: expected a non-empty list"),
    ({"kl_weight": -1.0}, r"^data\.kl_weight: expected >= 0"),
    ({"source": "autoencoded-kl"}, r"^data\.source: 'autoencoded-kl' cannot encode itself"),
    ({"source": "gmm8"}, r"^data\.source: 'gmm8' holds points, not images"),
], ids=["no-widths", "kl-weight", "itself", "points-source"])
def test_bad_settings_are_one_line_errors_naming_the_field(registry, tmp_path, monkeypatch, options, message):
    monkeypatch.setattr(ae_source, "train_kl", no_training)
    with pytest.raises(ConfigError, match=message) as err:
        kl_source(registry, tmp_path, **options).dataset("train")
    assert "\n" not in str(err.value) and not (tmp_path / "ae").exists()


def test_a_corrupt_cache_file_is_a_one_line_error_and_is_kept(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00not a weights file")
    with pytest.raises(ConfigError, match=r"^data\.cache_dir: .*not a safetensors file.*delete it"):
        load_kl(path)
    assert path.read_bytes().startswith(b"\x00not")


FRESH_PROCESS = """
import json, sys, torch
from onestep.export import OneStepPipeline
pipe = OneStepPipeline.from_pretrained(sys.argv[1])
images = pipe(class_labels=list(range(10)), seed=3)
torch.save(images, sys.argv[2])
"""


def test_a_dit_trains_on_the_spatial_latent_and_its_export_samples_digits_in_a_fresh_process(registry, trained, tmp_path):
    root, source = trained
    data = [f"data.{k}={json.dumps(v)}" for k, v in TINY.items()] + [f"data.cache_dir={root / 'ae'}"]
    cfg = compose(objective="flow-matching", backbone="dit", data="autoencoded-kl", registry=registry, overrides=[
        *data, f"output_dir={tmp_path / 'run'}", "train.progress=false", "train.log_every=25", "train.steps=300",
        "train.batch_size=64", "train.precision=fp32", "train.optim.lr=2e-3", "backbone.size=P/1",
        "objective.nfe=4", "sample.grid=10", "eval.metrics=[]"])
    run = Trainer(cfg, registry=registry, console=False)
    assert run.spec.shape == (4, 4, 4)
    real = images_of(source.base(), "test").flatten(1)

    def distance_to_the_digits(images=None) -> float:  # mean distance of images to their nearest real test digit
        images = run.source.decode(run.sample(100, seed=5)) if images is None else images
        return torch.cdist(images.flatten(1), real).min(1).values.mean().item()

    untrained = distance_to_the_digits()  # decoded noise: the generator's output starts at zero
    reconstructions = distance_to_the_digits(run.source.decode(run.source.dataset("train").tensors[0][:100]))
    run.fit()
    losses = [r["velocity/loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "velocity/loss" in r]
    assert losses[-1] < 0.8 * losses[0], losses
    assert distance_to_the_digits() < untrained - 0.25 * (untrained - reconstructions)  # a quarter of the way

    from onestep.export import OneStepPipeline, export_checkpoint

    labels = torch.arange(10)
    in_process = OneStepPipeline.from_checkpoint(tmp_path / "run", registry=registry)(class_labels=labels, seed=3)
    folder = export_checkpoint(tmp_path / "run", tmp_path / "export")
    assert (folder / "vae" / "config.json").is_file()  # the diffusers folder, as `onestep encode`'s latents export
    assert json.loads((folder / "config.json").read_text())["decoder"]["data"] == "autoencoded-kl"
    out = tmp_path / "images.pt"
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder), str(out)], check=True, timeout=300)
    images = torch.load(out, weights_only=True)
    assert images.shape == (10, 1, 8, 8) and images.abs().max() <= 1
    torch.testing.assert_close(images, in_process, atol=1e-5, rtol=1e-5)
