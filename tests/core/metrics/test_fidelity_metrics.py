"""FID, KID, Inception Score and precision/recall through torch-fidelity with local feature
networks: the data-trained classifier (scikit-learn's 8x8 digits) and the Inception path."""
from pathlib import Path

import pytest
import torch

from onestep.errors import ConfigError, OnestepError
from onestep.interfaces import EvalContext
from onestep.metrics.classifier import ClassifierRecipe, cache_path, ensure_classifier
from onestep.metrics.conditional import ClassAccuracy
from onestep.metrics.fidelity import (FID, INCEPTION, KID, InceptionScore, PrecisionRecall, import_fidelity,
                                      resolve_extractor)

try:
    import_fidelity()
except OnestepError as exc:  # e.g. a CUDA torchvision wheel beside a CPU torch
    pytest.skip(str(exc), allow_module_level=True)

LABEL = "[onestep-digits-classifier]"


@pytest.fixture(scope="module")
def digits(registry, tmp_path_factory):
    """The held-out digits split in two halves, plus each metric's config, whose classifier
    (3 epochs) is cached in a temp folder."""
    source = registry.build("data", "digits", registry.get("data", "digits").cls.Config())
    ds = source.dataset("test")
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])
    cache = str(tmp_path_factory.mktemp("features"))
    recipe = ClassifierRecipe(epochs=3)
    config = {cls: cls.Config(cache_dir=cache, classifier=recipe)
              for cls in (FID, KID, InceptionScore, PrecisionRecall, ClassAccuracy)}
    config[KID].subsets = 20
    half = len(x) // 2
    return source, config, (x[:half], y[:half]), (x[half:], y[half:])


def compute(metric_cls, digits, samples, reference=None):
    source, config, _, (b, _) = digits
    ref = b if reference is None else reference
    return metric_cls(config[metric_cls]).compute(EvalContext(samples, None, ref, None, source, source.spec()))


def noise_like(x):
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1


def blurred(x):
    return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def test_fid_and_kid_rank_real_data_far_below_noise_and_blur(digits):
    _, _, (a, _), _ = digits
    fid = {k: compute(FID, digits, x)["fid" + LABEL] for k, x in
           (("self", a), ("noise", noise_like(a)), ("blur", blurred(a)))}
    assert fid["self"] < fid["noise"] / 4 and fid["self"] < fid["blur"] / 3, fid
    kid = {k: compute(KID, digits, x) for k, x in (("self", a), ("noise", noise_like(a)), ("blur", blurred(a)))}
    assert set(kid["self"]) == {"kid" + LABEL, "kid_std" + LABEL}
    value = {k: v["kid" + LABEL] for k, v in kid.items()}
    assert value["self"] < 0.1 * value["blur"] and value["self"] < 0.1 * value["noise"], value


def test_inception_score_of_digits_beats_noise(digits):
    _, _, (a, _), _ = digits
    real = compute(InceptionScore, digits, a)["inception_score" + LABEL]
    noise = compute(InceptionScore, digits, noise_like(a))["inception_score" + LABEL]
    assert real > noise + 1.0, (real, noise)


def test_precision_recall_see_mode_dropping_and_off_manifold_samples(digits):
    source, _, (a, _), _ = digits
    train = source.dataset("train")
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.as_tensor([int(train[i][1]) for i in range(len(train))])
    same = compute(PrecisionRecall, digits, x[:len(a)])
    assert same["precision" + LABEL] > 0.7 and same["recall" + LABEL] > 0.7, same
    few_classes = compute(PrecisionRecall, digits, x[y < 3][:len(a)])  # 3 of 10 digits: mode dropping
    assert few_classes["precision" + LABEL] > 0.6 and few_classes["recall" + LABEL] < 0.4, few_classes
    noise = compute(PrecisionRecall, digits, noise_like(a))
    assert noise["precision" + LABEL] < 0.5 and noise["recall" + LABEL] < 0.3, noise


def test_precision_recall_report_nothing_rather_than_fail_for_k_or_fewer_points(digits):
    """A run whose held-out split has no more than k items (a tiny latents file, a quick check)
    gets no precision/recall instead of a torch error from inside torch-fidelity."""
    _, _, (a, _), (b, _) = digits
    k = PrecisionRecall.Config().neighborhood
    assert compute(PrecisionRecall, digits, a[:50], reference=b[:k]) == {}
    assert compute(PrecisionRecall, digits, a[:k], reference=b[:50]) == {}
    assert set(compute(PrecisionRecall, digits, a[:k + 1], reference=b[:k + 1])) == {"precision" + LABEL, "recall" + LABEL}


def test_classifier_is_cached_once_per_data_and_recipe(digits):
    source, configs, _, _ = digits
    config = configs[FID]
    extractor = resolve_extractor(source, None, config.classifier, config.cache_dir)
    path = cache_path(source, config.classifier, Path(config.cache_dir))
    assert extractor.weights == str(path) and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert ensure_classifier(source, config.classifier, root=path.parent) == path
    assert path.stat().st_mtime_ns == stamp
    assert extractor.label == "onestep-digits-classifier"


def test_feature_weights_errors_name_the_field(digits, tmp_path):
    source, configs, (a, _), _ = digits
    config = configs[FID]
    missing = tmp_path / "missing.pth"
    with pytest.raises(ConfigError, match=r"^eval.feature_weights: file .*missing.pth.* not found"):
        resolve_extractor(source, str(missing), config.classifier)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(10, 128)}, wrong)
    with pytest.raises(ConfigError, match=r"^eval.feature_weights: .* not torch-fidelity's inception-v3-compat"):
        FID(config).compute(EvalContext(a, None, a, None, source, source.spec(), str(wrong)))


@pytest.mark.slow
def test_inception_features_from_a_local_weights_file(digits, tmp_path, monkeypatch):
    """The --feature-weights path end to end with torch-fidelity's Inception network (randomly
    initialised weights saved to a file stand in for the real ones)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    with monkeypatch.context() as m:
        m.setattr(inc, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            state = inc.FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    weights = tmp_path / "inception.pth"
    torch.save(state, weights)
    source, configs, (a, _), (b, _) = digits
    out = FID(configs[FID]).compute(EvalContext(a[:3], None, b[:3], None, source, source.spec(), str(weights)))
    assert list(out) == [f"fid[{INCEPTION}]"] and torch.isfinite(torch.tensor(out[f"fid[{INCEPTION}]"]))


def test_class_accuracy_is_high_when_samples_obey_their_labels_and_chance_when_not(digits):
    source, config, (a, y), (b, _) = digits
    metric = ClassAccuracy(config[ClassAccuracy])
    key, ceiling = "class_accuracy" + LABEL, "class_accuracy_data" + LABEL

    def score(labels):
        return metric.compute(EvalContext(a, labels, b, None, source, source.spec()))

    obeyed = score(y)
    shuffled = score(y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))])
    assert obeyed[key] > 0.85 and abs(obeyed[key] - obeyed[ceiling]) < 0.1, obeyed
    assert shuffled[key] < 0.25, shuffled
    assert score(None) == {}  # unconditional samples have no label to obey


def test_the_classifier_cache_is_a_weights_file_and_a_pickle_is_never_loaded(digits, tmp_path):
    """The cache is safetensors with its format and architecture; a pickle at the cache's name is a
    one-line error naming the file, and an older onestep's ``.pt`` cache is left alone (retrained),
    neither of them unpickled."""
    import pickle

    from safetensors import safe_open

    from onestep.errors import ConfigError
    from onestep.metrics.classifier import load_classifier

    source, configs, _, _ = digits
    recipe = ClassifierRecipe(epochs=1)
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return open, (str(marker), "w")

    path = cache_path(source, recipe, tmp_path / "old")
    path.parent.mkdir()
    path.with_suffix(".pt").write_bytes(pickle.dumps({"state_dict": Trap()}))
    assert ensure_classifier(source, recipe, root=path.parent) == path
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "onestep-feature-classifier"
    net, meta = load_classifier(path)
    assert meta["source"] == "digits" and meta["test_accuracy"] > 0.5 and net.arch["num_classes"] == 10
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(pickle.dumps({"state_dict": Trap()}))
    with pytest.raises(ConfigError, match=r"^feature classifier: file '.*bad.safetensors' is not a safetensors file"):
        load_classifier(bad)
    assert not marker.exists()
