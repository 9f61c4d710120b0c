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


# Multi-process modules marked `slow` here, not in the file: the files were being rewritten by another change when
# the marks were added (issue 20); move a mark into its file (`pytestmark = pytest.mark.slow`) when next editing it.
SLOW = (
    "tests/trainers/test_rlvr_driver.py",  # one launch running 11 RLVR trainings (minutes)
    "tests/trainers/test_rlvr_engines.py",  # 2-rank launches with TorchEngine / real vLLM engines
)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("::")[0] in SLOW or item.nodeid in SLOW:
            item.add_marker(pytest.mark.slow)

    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; run on the lent H100/H200 (see benchmarks/README.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
