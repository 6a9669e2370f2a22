"""`onestep board` builds the data every row trains on and is scored against from the methods'
assembled data sections (presets and overrides included), and refuses methods that would train
on different data, before anything trains."""
import pytest
import yaml

from onestep.compare.plan import BoardSettings, plan_board
from onestep.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["flow-matching", "flow-matching@wide"]


@pytest.fixture(autouse=True)
def only_tiny_autoencoders(tmp_path, monkeypatch):
    """Caches under tmp_path, and a board that built any autoencoder but the tiny one its
    overrides ask for fails at once instead of training the default (MNIST, 20,000 steps)."""
    ae_source = pytest.importorskip("onestep_autoencoder.source")
    monkeypatch.setenv("ONESTEP_CACHE", str(tmp_path / "cache"))
    train = ae_source.train_autoencoder

    def tiny_only(x, arch, recipe, *args, **kwargs):
        assert (arch.shape, arch.dim, arch.width, recipe.steps) == ((1, 8, 8), 8, 64, 200), (arch, recipe)
        return train(x, arch, recipe, *args, **kwargs)

    monkeypatch.setattr(ae_source, "train_autoencoder", tiny_only)


def tiny_autoencoder(tmp_path):
    return ["data.source=digits", "data.dim=8", "data.width=64", "data.depth=2", "data.steps=200", "data.lr=3e-3",
            "data.batch_size=128", "data.device=cpu", f"data.cache_dir={tmp_path / 'ae'}"]


def settings(tmp_path, overrides, **kw):
    return BoardSettings(data="autoencoded", minutes=1, marks=0, methods=kw.pop("methods", METHODS),
                         out_dir=tmp_path / "board", backbone="mlp", overrides=overrides, **kw)


def test_the_board_source_is_the_data_section_its_overrides_assemble(registry, tmp_path):
    common = tiny_autoencoder(tmp_path)
    plan = plan_board(settings(tmp_path, [*common, "flow-matching@wide:backbone.width=64"], metrics=["fid"]), registry)
    assert plan.source.name == "autoencoded" and plan.source.image_source().name == "digits"
    assert plan.source.config.dim == 8 and plan.source.config.width == 64
    assert (plan.spec.kind, plan.spec.shape, plan.spec.num_classes) == ("latents", (8,), 10)
    assert plan.n_test == plan.n_eval == 180  # the digits' held-out split
    assert [p.name for p in (tmp_path / "ae").iterdir()] == [plan.source.cache_path().name]  # trained before the runs
    # the image metrics' classifier is the digits' one, trained before the runs too
    assert [p.name.split("-")[:2] for p in (tmp_path / "cache" / "features").iterdir()] == [["digits", "cnn"]]
    for m in METHODS:  # every run gets the same data options
        assert plan.argv[m][plan.argv[m].index("--data") + 1] == "autoencoded"
        assert all(o in plan.argv[m] for o in common)
    assert "backbone.width=64" in plan.argv["flow-matching@wide"] and "backbone.width=64" not in plan.argv["flow-matching"]


def test_a_plain_image_board_still_uses_its_data_options(registry, tmp_path):
    plan = plan_board(BoardSettings(data="digits", minutes=1, marks=0, methods=METHODS, out_dir=tmp_path / "board",
                                    backbone="mlp", overrides=["data.test_fraction=0.2"], metrics=[]), registry)
    assert plan.source.name == "digits" and plan.source.image_source() is plan.source
    assert plan.n_test == 359  # 20% of the 1,797 digits, not the default 10% (180)


def write_preset(tmp_path, data):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "fm.yaml").write_text(yaml.safe_dump({"objective": {"name": "flow-matching"}, "data": data}))
    (folder / "af.yaml").write_text(yaml.safe_dump({"objective": {"name": "adversarial-flow"},
                                                    "data": {"name": "autoencoded"}}))
    return str(folder)


@pytest.mark.parametrize("how", ["scoped override", "preset"])
def test_methods_that_would_train_on_different_data_are_refused_naming_both(registry, tmp_path, how):
    if how == "scoped override":
        s = settings(tmp_path, [*tiny_autoencoder(tmp_path), "flow-matching@wide:data.dim=4"])
        first, other = METHODS
        differ = ("'dim': 4", "'dim': 8")
    else:
        presets = write_preset(tmp_path, {"name": "autoencoded", "seed": 1})  # an option no override sets
        s = settings(tmp_path, tiny_autoencoder(tmp_path), methods=["adversarial-flow", "flow-matching"], presets=presets)
        first, other = "adversarial-flow", "flow-matching"
        differ = ("'seed': 1", "'seed': 0")
    with pytest.raises(ConfigError) as err:
        plan_board(s, registry)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"board: method {other!r} would train on data")
    assert f"but {first!r} on" in message and all(d in message for d in differ)
    assert not (tmp_path / "ae").exists() and not (tmp_path / "board").exists()  # refused before anything trained
