import fcntl
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
    "tests/trainers/test_rlvr_engines.py",  # launches with real vLLM engines
)


# `make test` runs two pytest-xdist workers, a test file each (`-n 2 --dist loadfile`). A file with a test that starts
# real vLLM engines (vLLM's start-up memory check counts what the other worker holds) or submits SLURM jobs (the local
# SLURM has the machine's 2 CPUs) runs while holding a lock the workers share, so no two such files overlap.
EXCLUSIVE_MARKS = ("vllm", "slurm")


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("::")[0] in SLOW or item.nodeid in SLOW:
            item.add_marker(pytest.mark.slow)
    config.exclusive_files = {item.path for item in items
                              if any(item.get_closest_marker(m) for m in EXCLUSIVE_MARKS)}

    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; run on the lent H100/H200 (see benchmarks/README.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


_exclusive_lock: dict = {}  # "file": the open lock file while this worker runs an exclusive file


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist, hold the workers' shared lock while this worker runs a file of :data:`EXCLUSIVE_MARKS`
    tests: taken before the file's first test starts (before its module fixtures start engines or jobs, and before
    pytest-timeout's timer: the wait for the other worker's file is not charged to that test), released after the
    file's last test (its module fixtures torn down)."""
    if ("PYTEST_XDIST_WORKER" in os.environ and "file" not in _exclusive_lock
            and item.path in getattr(item.config, "exclusive_files", ())):
        uid = os.environ.get("PYTEST_XDIST_TESTRUNUID", "run")
        f = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"megatron-tulu-exclusive-{uid}.lock", "w")
        fcntl.flock(f, fcntl.LOCK_EX)
        _exclusive_lock["file"] = f
    yield
    if "file" in _exclusive_lock and (nextitem is None or nextitem.path != item.path):
        f = _exclusive_lock.pop("file")
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
