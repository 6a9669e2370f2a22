"""Class accuracy of class-conditional samples: the share of samples generated for label y that
the data's own classifier (:mod:`onestep.metrics.classifier`, trained once on the ``train`` split
and cached) assigns to y. It measures what FID does not: whether the label is obeyed. This is the
number classifier guidance (AF Sec. 3.9) and baked-in CFG (W-Flow) should move. The classifier's
own accuracy on held-out data is reported beside it as the ceiling."""
from __future__ import annotations

import torch

from ..interfaces import EvalContext, Metric
from .classifier import accuracy, ensure_classifier, load_classifier
from .fidelity import FeatureConfig, to_uint8


class ClassAccuracy(Metric):
    """Share of class-conditional samples the data's classifier assigns to their label (higher is better)."""

    name = "class-accuracy"
    Config = FeatureConfig
    applies_to = ("images", "latents")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.sample_labels is None or ctx.spec.num_classes < 2:
            return {}  # an unconditional model has no label to obey
        c = self.config
        view = ctx.source.image_source()
        path = ensure_classifier(view, c.classifier, root=c.cache_dir)
        net, meta = load_classifier(path)
        net.to("cuda" if torch.cuda.is_available() else "cpu")
        images = to_uint8(ctx.source.decode(ctx.samples)).float().div(127.5).sub(1.0)  # as a saved image reads
        label = f"onestep-{view.name}-classifier"
        return {f"class_accuracy[{label}]": accuracy(net, images, ctx.sample_labels.cpu(), c.batch_size),
                f"class_accuracy_data[{label}]": float(meta["test_accuracy"])}
