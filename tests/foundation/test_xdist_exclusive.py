"""`make test`'s scheduling of its two xdist workers (tests/xdist_exclusive.py), on a small suite of its own: the
files marked vllm or slurm run on one worker, one after another and first, the slow file is handed out before the
others, and every test still runs once. (xdist's own ``loadgroup`` was silently ignored under pytest 9: this checks
the scheduling that `make test` relies on, not only that its tests pass.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import pytest
from xdist_exclusive import (  # noqa: F401
    prepare_items, pytest_runtest_protocol, pytest_sessionfinish, pytest_xdist_make_scheduler,
)

def pytest_configure(config):
    for m in ("vllm", "slurm", "slow"):
        config.addinivalue_line("markers", m + ": test mark")

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    prepare_items(config, items)
"""

TEST_FILE = """
import json, os, time
import pytest
{mark}

@pytest.mark.parametrize("i", range({n}))
def test_records(i):
    start = time.time()
    time.sleep({sleep})
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps([os.environ["PYTEST_XDIST_WORKER"], __name__, i, start, time.time()]) + "\\n")
"""


def test_exclusive_files_run_first_on_one_worker_and_the_slow_file_next(tmp_path):
    files = {  # name: (mark line, tests, seconds each)
        "test_a_plain": ("", 6, 0.05), "test_b_engine": ("pytestmark = pytest.mark.vllm", 2, 0.3),
        "test_c_more": ("", 6, 0.05), "test_d_jobs": ("pytestmark = pytest.mark.slurm", 2, 0.3),
        "test_e_slow": ("pytestmark = pytest.mark.slow", 2, 0.3),
    }
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name, (mark, n, sleep) in files.items():
        (tmp_path / f"{name}.py").write_text(TEST_FILE.format(mark=mark, n=n, sleep=sleep))
    record = tmp_path / "record.jsonl"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "RECORD": str(record), "PYTHONPATH": str(TESTS), "TMPDIR": str(tmpdir)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider",
                        str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted((m, i) for _, m, i, _, _ in rows) == sorted((m, i) for m, (_, n, _) in files.items() for i in range(n))
    by_worker: dict = {}
    for worker, module, _, start, _ in sorted(rows, key=lambda row: row[3]):
        by_worker.setdefault(worker, []).append(module)
    assert len(by_worker) == 2, by_worker
    exclusive = ["test_b_engine"] * 2 + ["test_d_jobs"] * 2
    engine_worker = next(w for w, mods in by_worker.items() if "test_b_engine" in mods)
    assert by_worker[engine_worker][:4] == exclusive, by_worker  # one worker, first, one file after the other
    other = next(w for w in by_worker if w != engine_worker)
    assert by_worker[other][:2] == ["test_e_slow"] * 2, by_worker  # the slow file is handed out first
    assert "test_b_engine" not in by_worker[other] and "test_d_jobs" not in by_worker[other]
    # the run's scheduling files are gone (the list read by the scheduler, the lock removed by the controller)
    assert not list(tmpdir.glob("megatron-tulu-*")), sorted(p.name for p in tmpdir.iterdir())
