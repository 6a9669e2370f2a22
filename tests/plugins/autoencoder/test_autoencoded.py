"""The ``autoencoded`` data source: an image source seen through a small autoencoder that is
trained once and cached (and resumes an interrupted training), whose codes decode back to real
reconstructions, whose samples are scored against the wrapped source's real held-out images with
its classifier, whose bad settings are one-line errors, and in whose latent a method learns."""
import attrs
import pytest
import torch

import onestep_autoencoder.source as ae_source
from onestep.api import compose
from onestep.config import EvalConfig, structure
from onestep.errors import ConfigError, OnestepError
from onestep.interfaces import EvalContext
from onestep.metrics import fidelity
from onestep.metrics.evaluate import held_out, score
from onestep.trainer import Trainer
from onestep_autoencoder.network import AutoencoderArch, TrainRecipe, train_autoencoder
from onestep_autoencoder.source import Autoencoded


pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
CLASSIFIER = "onestep-digits-classifier"
TINY = {"source": "digits", "dim": 8, "width": 128, "depth": 2, "steps": 300, "lr": 3.0e-3, "batch_size": 128,
        "device": "cpu"}


@pytest.fixture(autouse=True)
def only_tiny_autoencoders(tmp_path, monkeypatch):
    """Caches under tmp_path, and a test whose settings did not reach the source fails at once
    instead of training the default autoencoder (MNIST, 20,000 steps)."""
    monkeypatch.setenv("ONESTEP_CACHE", str(tmp_path / "cache"))

    def tiny_only(x, arch, recipe, *args, **kwargs):
        assert arch.width <= TINY["width"] and recipe.steps <= TINY["steps"], (arch, recipe)
        return train_autoencoder(x, arch, recipe, *args, **kwargs)

    monkeypatch.setattr(ae_source, "train_autoencoder", tiny_only)
    return tiny_only


def ae_config(tmp_path, **kw):
    return structure({**TINY, "cache_dir": str(tmp_path / "ae"), **kw}, Autoencoded.Config, "data")


def autoencoded(registry, tmp_path, **kw):
    return registry.build("data", "autoencoded", ae_config(tmp_path, **kw))


@pytest.fixture
def digits(registry):
    return registry.build("data", "digits", registry.get("data", "digits").cls.Config())


def images_and_labels(source, split):
    ds = source.dataset(split)
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])


def no_training(*args, **kwargs):
    raise AssertionError("the autoencoder was trained again")


def test_the_autoencoder_is_trained_once_cached_and_reloaded(registry, tmp_path, monkeypatch, digits,
                                                            only_tiny_autoencoders):
    first = autoencoded(registry, tmp_path)
    spec = first.spec()
    assert (spec.kind, spec.shape, spec.num_classes) == ("latents", (8,), 10)
    codes, labels = first.dataset("test").tensors
    _, digit_labels = images_and_labels(digits, "test")
    assert codes.shape == (len(digit_labels), 8) and torch.equal(labels, digit_labels)  # the test split, in order
    files = sorted((tmp_path / "ae").iterdir())
    assert [f.name for f in files] == [first.cache_path().name]  # one file, no partial file left
    assert files[0].name.startswith("digits-ae-") and files[0].suffix == ".safetensors"

    monkeypatch.setattr(ae_source, "train_autoencoder", no_training)
    again = autoencoded(registry, tmp_path)
    assert again.cache_path() == first.cache_path()
    torch.testing.assert_close(again.dataset("test").tensors[0], codes, rtol=0, atol=0)
    torch.testing.assert_close(again.decode(codes[:5]), first.decode(codes[:5]), rtol=0, atol=0)

    other = autoencoded(registry, tmp_path, dim=4)  # another recipe is another network, in another file
    assert other.cache_path() != first.cache_path() and other.cache_path().parent == tmp_path / "ae"
    with pytest.raises(AssertionError, match="trained again"):
        other.dataset("test")
    monkeypatch.setattr(ae_source, "train_autoencoder", only_tiny_autoencoders)
    assert other.dataset("test").tensors[0].shape == (len(digit_labels), 4)
    assert sorted(f.name for f in (tmp_path / "ae").iterdir()) == sorted([first.cache_path().name, other.cache_path().name])


def test_without_cache_dir_the_cache_lives_under_onestep_cache(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("ONESTEP_CACHE", str(tmp_path / "shared"))
    source = autoencoded(registry, tmp_path, cache_dir="")
    assert source.cache_path().parent == tmp_path / "shared" / "autoencoders"


class Crash(Exception):
    pass


def test_an_interrupted_training_resumes_to_the_same_autoencoder(digits, tmp_path):
    x, _ = images_and_labels(digits, "train")
    arch = AutoencoderArch((1, 8, 8), dim=8, width=64, depth=2)
    recipe = TrainRecipe(steps=200, batch_size=128, lr=3.0e-3, latent_noise=0.05, code_penalty=1.0e-3, seed=0,
                         checkpoint_every=50)
    whole, _ = train_autoencoder(x, arch, recipe, CPU, tmp_path / "a.partial.pt")

    def crash_at_100(step, loss):
        if step == 100:
            raise Crash

    partial = tmp_path / "b.partial.pt"
    with pytest.raises(Crash):
        train_autoencoder(x, arch, recipe, CPU, partial, log=crash_at_100)
    assert torch.load(partial, weights_only=True)["step"] == 100
    seen = []
    resumed, numbers = train_autoencoder(x, arch, recipe, CPU, partial, log=lambda step, loss: seen.append(step))
    assert seen == [150]  # it continued from step 100, it did not start over
    assert numbers["steps"] == 200
    assert whole.state_dict().keys() == resumed.state_dict().keys()
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)  # weights and the standardisation buffers


def test_the_source_resumes_from_the_partial_file_beside_its_cache(registry, tmp_path, monkeypatch, digits):
    whole = autoencoded(registry, tmp_path / "a")
    want = whole.dataset("test").tensors[0]
    source = autoencoded(registry, tmp_path / "b")
    partial = source.cache_path().with_name(source.cache_path().name + ".partial.pt")
    partial.parent.mkdir(parents=True)
    x, _ = images_and_labels(digits, "train")

    def crash_at_100(step, loss):
        if step == 100:
            raise Crash

    with pytest.raises(Crash):  # as a killed run leaves it
        train_autoencoder(x, source.arch(), attrs.evolve(source.recipe(), checkpoint_every=50), CPU, partial,
                          log=crash_at_100)
    calls = []

    def spy(x, arch, recipe, device, partial_path, log=None):
        calls.append(torch.load(partial_path, weights_only=True)["step"])
        return train_autoencoder(x, arch, recipe, device, partial_path, log)

    monkeypatch.setattr(ae_source, "train_autoencoder", spy)
    torch.testing.assert_close(source.dataset("test").tensors[0], want)
    assert calls == [100]
    assert [f.name for f in partial.parent.iterdir()] == [source.cache_path().name]  # the partial file is gone


def test_codes_are_standardised_and_decode_to_real_reconstructions(registry, tmp_path, digits):
    source = autoencoded(registry, tmp_path)
    train_codes = source.dataset("train").tensors[0]
    torch.testing.assert_close(train_codes.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(train_codes.std(0), torch.ones(8), atol=1e-3, rtol=0)
    x, _ = images_and_labels(digits, "test")
    decoded = source.decode(source.dataset("test").tensors[0])
    assert decoded.shape == x.shape == (len(x), *digits.spec().shape)
    assert decoded.min() >= -1 and decoded.max() <= 1
    mse = (decoded - x).pow(2).mean().item()
    baseline = x.var(0).mean().item()  # the MSE of predicting every image by the mean image
    assert mse < 0.4 * baseline, (mse, baseline)
    # and it is these images' reconstruction, not some digit: others are much further away
    assert mse < 0.5 * (decoded - x.roll(1, 0)).pow(2).mean().item()
    assert source.decode(torch.zeros(0, 8)).shape == (0, 1, 8, 8)


def test_image_metrics_judge_decoded_samples_against_the_real_held_out_images(registry, tmp_path, digits):
    source = autoencoded(registry, tmp_path)
    assert source.image_source() is source.base() and source.image_source().name == "digits"
    cache = tmp_path / "features"
    eval_config = EvalConfig(metrics=["fid", "class-accuracy"],
                             options={"fid": {"cache_dir": str(cache)}, "class-accuracy": {"cache_dir": str(cache)}})
    n = 120
    codes, labels = held_out(source, n)  # the test codes: their decodings are reconstructions
    real, real_labels = held_out(digits, n)
    assert torch.equal(labels, real_labels)
    ctx = EvalContext(codes, labels, codes, labels, source, source.spec())
    torch.testing.assert_close(fidelity.reference_images(ctx), real, rtol=0, atol=0)

    latent = score(codes, labels, codes, labels, source, ["fid", "class-accuracy"], eval_config, registry)
    pixels = score(real, real_labels, real, real_labels, digits, ["fid", "class-accuracy"], eval_config, registry)
    assert set(latent) == set(pixels) == {f"fid[{CLASSIFIER}]", f"class_accuracy[{CLASSIFIER}]",
                                          f"class_accuracy_data[{CLASSIFIER}]"}
    assert abs(pixels[f"fid[{CLASSIFIER}]"]) < 1e-3  # the real images against themselves
    assert latent[f"fid[{CLASSIFIER}]"] > 0.5, latent  # reconstructions against the real images, not themselves
    assert latent[f"class_accuracy_data[{CLASSIFIER}]"] == pixels[f"class_accuracy_data[{CLASSIFIER}]"]  # one classifier
    assert latent[f"class_accuracy[{CLASSIFIER}]"] > 0.8
    assert [p.name.split("-")[:2] for p in cache.iterdir()] == [["digits", "cnn"]]  # trained once, for digits

    shuffled = EvalContext(codes, labels, codes, labels.roll(1), source, source.spec())
    with pytest.raises(OnestepError, match="not those of its image source 'digits'"):
        fidelity.reference_images(shuffled)


def build_and_load(registry, tmp_path, **kw):
    source = autoencoded(registry, tmp_path, **kw)
    source.spec()
    source.dataset("train")
    return source


@pytest.mark.parametrize("options, message", [
    ({"source": "no-such-source"}, r"^data\.source: unknown data source 'no-such-source'; installed: .*digits.*mnist-full"),
    ({"source": "gmm8"}, r"^data\.source: 'gmm8' holds points, not images"),
    ({"source": "autoencoded"}, r"^data\.source: 'autoencoded' cannot encode itself"),
    ({"dim": 0}, r"^data\.dim: expected >= 1, got 0"),
    ({"device": "tpu"}, r"^data\.device: expected auto, cpu or cuda\[:N\], got 'tpu'"),
    ({"source_options": {"test_fraction": "a lot"}}, r"^data\.source_options\.test_fraction"),
], ids=["unknown-source", "points-source", "itself", "dim-0", "device", "source-options"])
def test_bad_settings_are_one_line_errors_naming_the_field(registry, tmp_path, monkeypatch, options, message):
    monkeypatch.setattr(ae_source, "train_autoencoder", no_training)
    with pytest.raises(ConfigError, match=message) as err:
        build_and_load(registry, tmp_path, **options)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "ae").exists()  # nothing trained, nothing written


def test_a_corrupt_cache_file_is_a_one_line_error_naming_it(registry, tmp_path, monkeypatch):
    source = autoencoded(registry, tmp_path)
    path = source.cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage, as a full disk leaves it")
    monkeypatch.setattr(ae_source, "train_autoencoder", no_training)  # never trained over silently
    with pytest.raises(ConfigError) as err:
        source.dataset("test")
    message = str(err.value)
    assert "\n" not in message and message.startswith("data.cache_dir")
    assert repr(str(path)) in message and "not a safetensors file" in message and "delete it" in message
    assert path.read_bytes().startswith(b"\x00garbage")


def test_a_method_learns_in_the_latent_and_is_scored_on_the_digits(registry, tmp_path):
    cache = tmp_path / "features"
    data = [f"data.{k}={v}" for k, v in TINY.items()] + [f"data.cache_dir={tmp_path / 'ae'}"]
    cfg = compose(objective="flow-matching", backbone="mlp", data="autoencoded", registry=registry, overrides=[
        *data, f"output_dir={tmp_path / 'run'}", "train.progress=false", "train.log_every=100",
        "train.steps=400", "train.batch_size=128", "train.precision=fp32", "train.optim.lr=2e-3",
        "backbone.width=128", "backbone.depth=2", "objective.nfe=4", "sample.num=64",
        "eval.metrics=[fid]", "eval.num_samples=180", f"eval.options.fid.cache_dir={cache}"])
    run = Trainer(cfg, registry=registry, console=False)
    assert run.spec.shape == (8,) and run.source.image_source().name == "digits"
    key = f"fid[{CLASSIFIER}]"
    before = run.evaluate(["fid"])[key]
    after = run.fit()["metrics"][key]
    few = run.evaluate(["fid"], nfe=2)[key]
    assert after < before / 3 and few < before / 3, (before, after, few)
    decoded = run.source.decode(run.sample(16))
    assert decoded.shape == (16, 1, 8, 8) and decoded.abs().max() <= 1
    # the export carries the autoencoder: its samples decode to the same digits without the data
    # source's cache
    from onestep.export import OneStepPipeline, export_checkpoint

    labels = torch.arange(10)
    from_run = OneStepPipeline.from_checkpoint(tmp_path / "run", registry=registry)(class_labels=labels, seed=3)
    folder = export_checkpoint(tmp_path / "run", tmp_path / "export")
    for f in (tmp_path / "ae").iterdir():
        f.unlink()
    exported = OneStepPipeline.from_pretrained(folder, registry=registry)
    images = exported(class_labels=labels, seed=3)
    assert images.shape == (10, 1, 8, 8) and images.abs().max() <= 1
    torch.testing.assert_close(images, from_run)
    assert exported(class_labels=labels, seed=3, output_type="model").shape == (10, 8)
    assert not any((tmp_path / "ae").iterdir())  # nothing was trained again
