# Two commands for a newcomer:  `make demo` (install everything, train the default toy job)
# and `make test` (install everything, run the test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PKGS := core $(wildcard plugins/*)
STAMP := $(VENV)/.installed
export DS_BUILD_OPS := 0

.PHONY: install demo test test-all clean

$(STAMP): pyproject.toml $(foreach p,$(PKGS),$(p)/pyproject.toml)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# CPU torch unless a torch is already there (the GPU machine brings its own)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0" "torchvision==0.28.0"
	$(BIN)/pip install -q $(foreach p,$(PKGS),-e ./$(p)) -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/onestep run --config configs/demo.yaml

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
