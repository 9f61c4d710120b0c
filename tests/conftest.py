import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # our top-level `kernels/` and `launch/` win over same-named site packages
os.environ.setdefault("MEGATRON_TULU_DEVICE", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:  # Triton kernels run in interpreter mode on CPU (must be set before triton is first imported)
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

import pytest  # noqa: E402


# `make test` runs two pytest-xdist workers, a file at a time each; the files that start vLLM engines or submit SLURM
# jobs run one after another on one of them, the long files first (xdist_exclusive.py).
from xdist_exclusive import (  # noqa: E402,F401  (hooks)
    prepare_items, pytest_runtest_protocol, pytest_sessionfinish, pytest_xdist_make_scheduler,
)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects and xdist reads the order
def pytest_collection_modifyitems(config, items):
    prepare_items(config, items)

    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; run on the lent H100/H200 (see benchmarks/README.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
