"""Train (or find) the data's feature classifier of the image metrics into $ONESTEP_CACHE, so a GPU
call can carry it instead of training it (~25 s of a 10-minute call for the full MNIST; 26 minutes
on 2 CPU cores). Usage: ONESTEP_CACHE=.onestep-cache python tools/feature_classifier.py [DATA]"""
import sys
import time

from onestep.metrics.classifier import ClassifierRecipe, ensure_classifier
from onestep.registry import Registry

data = sys.argv[1] if len(sys.argv) > 1 else "mnist-full"
registry = Registry.discover()
source = registry.build("data", data, registry.get("data", data).cls.Config())
start = time.perf_counter()
path = ensure_classifier(source, ClassifierRecipe())
print(f"{path} ({time.perf_counter() - start:.0f} s)")
