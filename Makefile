# Two commands for a fresh machine: `make demo` (the miniature study) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xbench-installed
# On machines without an NVIDIA GPU the CPU build of torch is installed first, so that pip never
# resolves the multi-GB CUDA build. Elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu
# if your default index serves CUDA wheels. GPU machines get the normal install.
TORCH_CPU ?= torch==2.13.0
TORCH_INDEX ?=
EXPERIMENT ?= mini_vs_gold
# The miniature study's second sweep: GOLD-A's two terms alone (issue 18's diagnostic) and the
# untrained base, 3 seeds, into the same sweep directory and report.
DEMO_EXTRA := cell=gold-A-common,gold-A-uld,base seed=0,1,2
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export MPLBACKEND ?= Agg
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint slurm-up slurm-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_CPU)"; fi
	$(PY) -m pip install -q -e ".[dev,notebooks]"
	touch $(STAMP)

demo: install
	$(PY) -m xbench.sweep +experiment=$(EXPERIMENT)
	$(if $(filter mini_vs_gold,$(EXPERIMENT)),$(PY) -m xbench.sweep +experiment=mini_vs_gold $(DEMO_EXTRA))

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check xbench tests benchmarks
	$(VENV)/bin/ruff format --check xbench tests benchmarks

slurm-up:
	bash slurm/install_deps.sh && bash slurm/local_cluster.sh up

slurm-down:
	bash slurm/local_cluster.sh down

clean:
	rm -rf $(VENV) results/sweeps
