# Entry points, each self-contained on a fresh machine:
#   make train     set up (venv, package, data) and train configs/default.py on the real data
#   make test      set up and run the default test tier (~3 minutes on 2 cores)
#   make test-all  set up and run the whole suite, the slow tier included (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default
CONFIG ?= configs/default.py
IDX_DIR ?= /usr/share/datasets/fashion-mnist
DATA_DIR ?= $(HOME)/tensorflow_datasets
PYTEST_ARGS ?=
# pytest-xdist workers: one per core (what they gain: docs/usage.md, "Tests")
WORKERS ?= auto

.PHONY: setup data train test test-all clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,tfds]'
	touch $@

setup: $(VENV)/.installed

# The real Fashion-MNIST IDX files. tfds cannot download here, so we take Debian's package
# when apt is available and the files are missing; elsewhere tfds' own download still works.
data:
	@if [ ! -f $(IDX_DIR)/train-images-idx3-ubyte.gz ] && [ -z "$$FMNIST_IDX_DIR" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian package dataset-fashion-mnist (the real IDX files)"; \
	    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	      (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist); \
	  else \
	    echo "No local IDX files; fmnist_jax will fall back to tfds' download."; \
	  fi; \
	fi

train: setup data
	$(PY) -m fmnist_jax.main --config $(CONFIG) --workdir $(WORKDIR)

# pytest exits 5 when it collected no tests: that is a failure here.
define run_pytest
	$(PY) -m fmnist_jax.dataset --prepare --data_dir $(DATA_DIR) || echo "Real data not prepared: real-data tests will be skipped."
	$(PY) -m pytest -q -n $(WORKERS) --durations=20 $(1) $(PYTEST_ARGS) tests; rc=$$?; \
	  if [ $$rc = 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
endef

test: setup data
	$(call run_pytest,-m "not slow")

test-all: setup data
	$(call run_pytest,)

clean:
	rm -rf $(VENV) build *.egg-info
