"""FID, KID, Inception Score and precision/recall of generated images, computed by torch-fidelity
with a LOCAL feature network (nothing is downloaded):

- ``eval.feature_weights`` / ``onestep eval --feature-weights PATH``: torch-fidelity's standard
  ``inception-v3-compat`` network with the user's copy of its weights file, the network behind
  published FID numbers;
- otherwise: a small CNN classifier trained once on the data source's own ``train`` split and
  cached (:mod:`onestep.metrics.classifier`), registered with torch-fidelity as a feature
  extractor. Its numbers compare runs on the same data; they are not comparable with
  Inception-based numbers from papers.

Every key names the extractor that produced it: ``fid[inception-v3-compat]``,
``fid[onestep-mnist-classifier]``. The definitions are torch-fidelity's: FID (Heusel et al. 2017,
Eq. 6, Frechet distance of Gaussian fits), KID (Binkowski et al. 2018, unbiased MMD^2 with the
cubic polynomial kernel, averaged over subsets), IS (Salimans et al. 2016, exp E KL(p(y|x)||p(y))
over 10 splits) and precision/recall (Kynkaanniemi et al. 2019, k-NN manifolds, k = 3).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from ..errors import ConfigError, OnestepError
from ..interfaces import DataSource, EvalContext, Metric
from .classifier import ClassifierRecipe, ensure_classifier, load_classifier
from .evaluate import held_out

INCEPTION = "inception-v3-compat"
CLASSIFIER = "onestep-classifier"


def import_fidelity():
    """``torch_fidelity``, or a one-line error saying why it cannot be imported (it imports
    torchvision, which fails beside a torch build it was not made for)."""
    try:
        import torch_fidelity
    except Exception as exc:  # ImportError, or torchvision's RuntimeError for a mismatched build
        raise OnestepError(
            f"image metrics need torch-fidelity, which failed to import ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
            "install torch-fidelity with a torchvision built for the installed torch"
        ) from None
    _register_classifier_extractor(torch_fidelity)
    return torch_fidelity


def _register_classifier_extractor(tf) -> None:
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if CLASSIFIER in FEATURE_EXTRACTORS_REGISTRY:
        return

    class ClassifierFeatures(FeatureExtractorBase):
        """The onestep feature classifier (file ``feature_extractor_weights_path``) as a
        torch-fidelity extractor: ``features`` (penultimate activations) for FID, KID and
        precision/recall, ``logits`` for the Inception Score. Input: uint8 images [B, C, H, W]."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.net, self.meta = load_classifier(feature_extractor_weights_path)

        @staticmethod
        def get_provided_features_list():
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "logits" if metric == "isc" else "features"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            raise NotImplementedError

        def forward(self, x):
            x = x.to(next(self.net.parameters()).device).float().div(127.5).sub(1.0)
            features, logits = self.net.features_and_logits(x)
            found = {"features": features, "logits": logits}
            return tuple(found[name] for name in self.features_list)

    tf.register_feature_extractor(CLASSIFIER, ClassifierFeatures)


class _Images(torch.utils.data.Dataset):
    """uint8 images as torch-fidelity reads them (one tensor per item)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def to_uint8(x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """Images in [-1, 1] [N, C, H, W] -> uint8 [N, channels or C, H, W] (grey repeated to RGB)."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels is not None and x.shape[1] != channels:
        raise ConfigError(f"image metrics: images with {x.shape[1]} channels cannot feed a {channels}-channel feature network")
    return x.contiguous()


@attrs.define
class Extractor:
    """A resolved feature network: torch-fidelity's registered name, its weights file, the name
    shown in metric keys, and the channels it reads."""

    fidelity_name: str
    weights: str
    label: str
    channels: int | None


def resolve_extractor(source: DataSource, feature_weights: str | None, recipe: ClassifierRecipe,
                      cache_dir: str = "") -> Extractor:
    """Inception from ``feature_weights`` when given, else the data's cached classifier (trained
    on the first call)."""
    if feature_weights:
        check_inception_weights(feature_weights)
        return Extractor(INCEPTION, str(feature_weights), INCEPTION, 3)
    source = source.image_source()
    path = ensure_classifier(source, recipe, root=cache_dir)
    return Extractor(CLASSIFIER, str(path), f"onestep-{source.name}-classifier", None)


def cached_features(ctx: EvalContext, which: str, extractor: Extractor, batch_size: int) -> dict[str, torch.Tensor]:
    """Every layer torch-fidelity's ``extractor`` provides, for the samples or the reference of
    ``ctx``, extracted once per evaluation (the reference once per run: see ``EvalContext.cache``)."""
    key = (which, "fidelity-features", extractor.fidelity_name, extractor.weights,
           len(ctx.samples if which == "samples" else ctx.reference))
    if key not in ctx.cache:
        import_fidelity()
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
        from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

        cuda = torch.cuda.is_available()
        layers = list(FEATURE_EXTRACTORS_REGISTRY[extractor.fidelity_name].get_provided_features_list())
        if extractor.fidelity_name == INCEPTION:
            layers = ["2048", "logits_unbiased"]
        net = create_feature_extractor(extractor.fidelity_name, layers, cuda=cuda, verbose=False,
                                       feature_extractor_weights_path=extractor.weights)
        images = ctx.source.decode(ctx.samples) if which == "samples" else reference_images(ctx)
        data = _Images(to_uint8(images, extractor.channels))
        ctx.cache[key] = get_featuresdict_from_dataset(data, net, batch_size, cuda, True, False)
    return ctx.cache[key]


def reference_images(ctx: EvalContext) -> torch.Tensor:
    """The held-out images ``ctx.reference`` stands for: decoded, or, for a source that encodes
    another image source (:meth:`DataSource.image_source`), that source's own held-out images,
    drawn the same way (same split, same order), with the labels checked to agree."""
    view = ctx.source.image_source()
    if view is ctx.source:
        return ctx.source.decode(ctx.reference)
    images, labels = held_out(view, len(ctx.reference))
    if len(images) != len(ctx.reference) or (
            ctx.reference_labels is not None and labels is not None and not torch.equal(labels, ctx.reference_labels.cpu())):
        raise OnestepError(f"data {ctx.source.name!r}: its held-out items are not those of its image source "
                           f"{view.name!r} in the same order, so its samples cannot be scored against that source's images")
    return images


def check_inception_weights(path: str) -> None:
    """One-line error unless ``path`` holds the inception-v3-compat state dict (2048 -> 1008 head)."""
    if not Path(path).is_file():
        raise ConfigError(f"eval.feature_weights: file {path!r} not found (a local copy of torch-fidelity's "
                          f"{INCEPTION} weights; onestep never downloads them)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"eval.feature_weights: {path!r} is not a PyTorch weights file ({type(exc).__name__})") from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if fc is None or tuple(fc.shape) != (1008, 2048):
        raise ConfigError(f"eval.feature_weights: {path!r} is not torch-fidelity's {INCEPTION} state dict "
                          "(expected an 'fc.weight' of shape [1008, 2048])")


@attrs.define
class FeatureConfig:
    batch_size: int = 250  # images per feature-network batch
    cache_dir: str = ""  # where the data classifier is cached; "" = $ONESTEP_CACHE/features or ~/.cache/onestep/features
    classifier: ClassifierRecipe = attrs.Factory(ClassifierRecipe)  # the data classifier (feature metrics: when eval.feature_weights is unset)


@attrs.define
class KIDConfig(FeatureConfig):
    subset_size: int = 1000  # capped at the smaller sample count
    subsets: int = 100


@attrs.define
class InceptionScoreConfig(FeatureConfig):
    splits: int = 10


@attrs.define
class PrecisionRecallConfig(FeatureConfig):
    neighborhood: int = 3  # k of the k-NN manifold radii


class FidelityMetric(Metric):
    """Shared part of the torch-fidelity metrics: decode, pick the extractor, run one metric."""

    Config = FeatureConfig
    applies_to = ("images", "latents")
    flag: ClassVar[str]  # torch-fidelity's switch for this metric
    keys: ClassVar[dict[str, str]]  # our key -> torch-fidelity's key

    def options(self, num_samples: int, num_reference: int) -> dict[str, Any]:
        """This metric's torch-fidelity keyword arguments."""
        return {}

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        c = self.config
        extractor = resolve_extractor(ctx.source, ctx.feature_weights, c.classifier, c.cache_dir)
        layer = self.feature_layer(extractor)
        samples = cached_features(ctx, "samples", extractor, c.batch_size)[layer]
        reference = None if self.flag == "isc" else cached_features(ctx, "reference", extractor, c.batch_size)[layer]
        raw = self.from_features(samples, reference, **self.options(len(samples), len(ctx.reference)))
        return {f"{key}[{extractor.label}]": float(raw[src]) for key, src in self.keys.items()}

    def feature_layer(self, extractor: "Extractor") -> str:
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        import_fidelity()
        return FEATURE_EXTRACTORS_REGISTRY[extractor.fidelity_name].get_default_feature_layer_for_metric(self.flag)

    def from_features(self, samples: torch.Tensor, reference: torch.Tensor | None, **options: Any) -> dict[str, float]:
        """torch-fidelity's metric from already extracted features (its keys)."""
        raise NotImplementedError


class FID(FidelityMetric):
    """Frechet distance between feature Gaussians of samples and held-out data (lower is better)."""

    name = "fid"
    flag = "fid"
    keys = {"fid": "frechet_inception_distance"}

    def from_features(self, samples, reference, **options):
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

        stats = [fid_features_to_statistics(f.double()) for f in (samples, reference)]
        return fid_statistics_to_metric(*stats, verbose=False)


class KID(FidelityMetric):
    """Kernel distance (unbiased MMD^2, cubic kernel) of sample and held-out features (lower is better)."""

    name = "kid"
    Config = KIDConfig
    flag = "kid"
    keys = {"kid": "kernel_inception_distance_mean", "kid_std": "kernel_inception_distance_std"}

    def options(self, num_samples, num_reference):
        return {"kid_subset_size": min(self.config.subset_size, num_samples, num_reference),
                "kid_subsets": self.config.subsets}

    def from_features(self, samples, reference, **options):
        from torch_fidelity.metric_kid import kid_features_to_metric

        return kid_features_to_metric(samples, reference, verbose=False, **options)


class InceptionScore(FidelityMetric):
    """exp E KL(p(y|x) || p(y)) of the samples under the feature network's classes (higher is better)."""

    name = "inception-score"
    Config = InceptionScoreConfig
    flag = "isc"
    keys = {"inception_score": "inception_score_mean", "inception_score_std": "inception_score_std"}

    def options(self, num_samples, num_reference):
        return {"isc_splits": min(self.config.splits, num_samples)}

    def from_features(self, samples, reference, **options):
        from torch_fidelity.metric_isc import isc_features_to_metric

        return isc_features_to_metric(samples, options["isc_splits"], True, 2020)


class PrecisionRecall(FidelityMetric):
    """Share of samples inside the data's k-NN feature manifold (precision) and of data inside the
    samples' (recall); higher is better."""

    name = "precision-recall"
    Config = PrecisionRecallConfig
    flag = "prc"
    keys = {"precision": "precision", "recall": "recall"}

    def options(self, num_samples, num_reference):
        return {"prc_neighborhood": self.config.neighborhood}

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if min(len(ctx.samples), len(ctx.reference)) <= self.config.neighborhood:
            return {}  # a k-NN manifold needs more than k points on each side: nothing to report
        return super().compute(ctx)

    def from_features(self, samples, reference, **options):
        from torch_fidelity.metric_prc import prc_features_to_metric

        device = "cuda" if torch.cuda.is_available() else "cpu"  # the k-NN radii are an N x N distance matrix
        return prc_features_to_metric(samples.to(device), reference.to(device), verbose=False, save_cpu_ram=True,
                                      **options)


FIDELITY_METRICS = [FID, KID, InceptionScore, PrecisionRecall]
