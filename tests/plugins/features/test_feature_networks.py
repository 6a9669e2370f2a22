"""Feature networks: conv-mae trains once and is reloaded from its cache (and resumes an
interrupted training), latent-mae loads local weights with one-line errors, the registry passes
features only to objectives that take them, and sampling never needs them."""
import pytest
import torch

import onestep_features.conv_mae as conv_mae
from onestep.api import compose
from onestep.trainer import Trainer
from onestep.errors import ConfigError, OnestepError
from onestep.interfaces import DataSpec
from onestep_features import ConvEncoder, EncoderArch, save_encoder
from onestep_features.conv_mae import ConvMAEConfig, ConvMAEFeatures
from onestep_features.identity import IdentityFeatures
from onestep_features.latent_mae import LatentMAEConfig, LatentMAEFeatures


pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


@pytest.fixture
def registry():
    """Discovered plugins plus this package, whether or not its entry point is installed."""
    import onestep_features.plugin
    from onestep.registry import Registry

    return Registry.discover(extra=[("features", onestep_features.plugin)])


@pytest.fixture
def digits(registry):
    return registry.build("data", "digits", registry.get("data", "digits").cls.Config())


def tiny(tmp_path, **kw):
    return ConvMAEConfig(width=4, stages=2, epochs=2, batch_size=128, cache_dir=str(tmp_path / "cache"), **kw)


def test_conv_mae_is_cached_and_reloaded_without_retraining(digits, tmp_path, monkeypatch):
    spec = digits.spec()
    first = ConvMAEFeatures(tiny(tmp_path), spec=spec)
    first.prepare(digits, CPU)
    files = sorted((tmp_path / "cache").iterdir())
    assert [f.name for f in files] == [conv_mae.cache_path(digits, first.config).name]  # no partial file left
    assert files[0].name.startswith("digits-conv-mae-") and files[0].suffix == ".safetensors"
    x = torch.stack([digits.dataset("test")[i][0] for i in range(5)])
    maps = first(x)
    assert [tuple(m.shape) for m in maps] == [(5, 4, 4, 4), (5, 8, 2, 2)]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached network was trained again")

    monkeypatch.setattr(conv_mae, "train_mae", no_training)
    again = ConvMAEFeatures(tiny(tmp_path), spec=spec)
    again.prepare(digits, CPU)
    for a, b in zip(maps, again(x)):
        torch.testing.assert_close(a, b)
    # another recipe is another network (another key), and it is not the FID classifier's cache
    other = conv_mae.cache_path(digits, tiny(tmp_path, seed=1))
    assert other != files[0] and "cnn" not in other.name and other.parent.name == "cache"


def test_an_interrupted_conv_mae_training_resumes_to_the_same_network(digits, tmp_path):
    x = conv_mae.train_images(digits)
    config = tiny(tmp_path)
    whole, _ = conv_mae.train_mae(x, config, CPU, tmp_path / "a.partial.pt")

    class Crash(Exception):
        pass

    def crash_after_first_epoch(epoch, loss):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        conv_mae.train_mae(x, config, CPU, tmp_path / "b.partial.pt", log=crash_after_first_epoch)
    assert torch.load(tmp_path / "b.partial.pt", weights_only=True)["step"] == 1  # epochs done
    resumed, _ = conv_mae.train_mae(x, config, CPU, tmp_path / "b.partial.pt")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_latent_mae_loads_a_local_encoder_and_says_what_is_wrong(tmp_path):
    spec = DataSpec(shape=(4, 8, 8), kind="latents")
    torch.manual_seed(0)
    encoder = ConvEncoder(EncoderArch(in_channels=5, width=8, stages=2)).eval()
    path = save_encoder(encoder, tmp_path / "enc.safetensors", {"trained_on": "test"})
    features = LatentMAEFeatures(LatentMAEConfig(path=str(path)), spec=spec)
    with pytest.raises(OnestepError, match="before prepare"):
        features(torch.zeros(1, 4, 8, 8))
    features.prepare(None, CPU)
    x = torch.randn(3, 4, 8, 8)
    want = encoder(torch.cat([x, torch.zeros(3, 1, 8, 8)], 1))
    for a, b in zip(features(x), want):
        torch.testing.assert_close(a, b)
    assert features.meta == {"trained_on": "test"}

    def error(config, shape=(4, 8, 8)):
        with pytest.raises(ConfigError) as err:
            LatentMAEFeatures(config, spec=DataSpec(shape=shape, kind="latents")).prepare(None, CPU)
        assert "\n" not in str(err.value) and str(err.value).startswith("features.path")
        return str(err.value)

    assert "not found" in error(LatentMAEConfig(path=str(tmp_path / "missing.safetensors")))
    assert "required" in error(LatentMAEConfig())
    assert "5 input channels; the data have 3" in error(LatentMAEConfig(path=str(path)), shape=(3, 8, 8))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert "not a safetensors file" in error(LatentMAEConfig(path=str(bad)))


def test_features_reach_only_objectives_that_take_them_and_sampling_never_needs_them(registry, tmp_path):
    quiet = [f"output_dir={tmp_path}/run", "train.progress=false"]
    cfg = compose(objective="flow-matching", backbone="mlp", data="gmm8", features="identity", registry=registry,
                  overrides=quiet)
    with pytest.raises(ConfigError, match="features 'identity': objective 'flow-matching'") as err:
        Trainer(cfg, registry=registry, console=False)
    assert "\n" not in str(err.value)
    # a weights file that does not exist is no obstacle to building (what sample/export do) ...
    cfg = compose(objective="wflow", backbone="mlp", data="digits", registry=registry,
                  overrides=quiet + ["features.name=latent-mae", f"features.path={tmp_path}/none.safetensors",
                                     "train.steps=1", "eval.metrics=[]"])
    run = Trainer(cfg, registry=registry, console=False)
    assert isinstance(run.objective.features, LatentMAEFeatures) and run.sample(4).shape == (4, 1, 8, 8)
    # ... but training says which file is missing, in one line
    with pytest.raises(ConfigError, match="features.path: file .*none.safetensors.* not found"):
        run.fit()
    with pytest.raises(ConfigError, match="needs image or latent data"):
        ConvMAEFeatures(ConvMAEConfig(), spec=DataSpec(shape=(2,)))
    assert IdentityFeatures(None, spec=DataSpec(shape=(1, 2, 2)))(torch.ones(3, 1, 2, 2))[0].shape == (3, 4)
