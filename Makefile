# bnspike: `make train` then `make test`. The first call creates .venv and installs.
# TORCH picks the torch requirement; the default is the CPU wheel (no multi-GB CUDA download).
# For a CUDA build: make TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126'
# Paths may contain spaces (the checkout, VENV, CONFIG, LOGDIR, --run-dir inside ARGS): recipes
# quote them, and the one target named by a path escapes its spaces (make splits names on them).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
CONFIG ?= configs/whitened_spike.yaml
ARGS ?=
PORT ?= 6006
LOGDIR ?= runs
BIN := $(VENV)/bin
space := $(subst ,, )
INSTALLED := $(subst $(space),\$(space),$(BIN))/.installed

.PHONY: train test bench tensorboard report clean-venv

$(INSTALLED): pyproject.toml
	"$(PYTHON)" -m venv "$(VENV)"
	"$(BIN)/pip" install --quiet --upgrade pip
	"$(BIN)/pip" install --quiet $(TORCH)
	"$(BIN)/pip" install --quiet -e ".[dev]"
	touch "$@"

train: $(INSTALLED)
	"$(BIN)/bnspike" train "$(CONFIG)" $(ARGS)

test: $(INSTALLED)
	"$(BIN)/python" -m pytest -q

# Instrumentation cost against a bare PyTorch loop (minutes; not part of `make test`):
# writes bench/results.md and bench/results.json. BENCH_ARGS=--help lists the knobs.
BENCH_ARGS ?=
bench: $(INSTALLED)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$(BIN)/python" bench/bench.py $(BENCH_ARGS)

# Every point of every series (the default serves 1,000 samples and hides a short spike;
# scalars=0 serves none with TensorBoard 2.21), loopback only, reload every second.
tensorboard: $(INSTALLED)
	"$(BIN)/tensorboard" --logdir "$(LOGDIR)" --host 127.0.0.1 --port $(PORT) --load_fast=false \
		--reload_interval 1 --samples_per_plugin scalars=1000000

clean-venv:
	rm -rf "$(VENV)"

# The multi-panel figure of a finished run: make report RUN=runs/whitened_spike-...
report: $(INSTALLED)
	@test -n "$(RUN)" || { echo "make report: set RUN=<run directory>, e.g. RUN=runs/whitened_spike-20260101-120000"; exit 2; }
	"$(BIN)/bnspike" report "$(RUN)"
