"""The one-command GPU session runner (benchmarks/gpu_session.py) and the kernel benchmark's time budget.

What a lent GPU lease runs must work before the lease: here the runner's time-boxing (step timeouts, the total
budget, partial results) with stand-in steps. Its end-to-end CPU ``--smoke`` run, with the files it leaves, is
``tests/gpu_readiness/test_gpu_session_bare_box.py``, in a venv as bare as the GPU box (one smoke run, not two).
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_runner_times_out_a_step_keeps_going_and_stops_at_the_total_budget(tmp_path, monkeypatch):
    gs = _load("gpu_session")
    py = sys.executable
    fake = [
        dict(name="fails", timeout=30, argv=[py, "-c", "raise SystemExit(3)"]),
        dict(name="writes", timeout=30, files=["x.txt"],
             argv=[py, "-c", f"open({str(tmp_path / 'x.txt')!r}, 'w').write('1')"]),
        dict(name="hangs", timeout=1, argv=[py, "-c", "import time; time.sleep(60)"]),
        dict(name="takes_the_rest", timeout=None, argv=[py, "-c", "import time; time.sleep(60)"]),
        dict(name="left_over", timeout=30, argv=[py, "-c", "pass"]),
    ]
    monkeypatch.setattr(gs, "steps", lambda out, smoke: fake)
    monkeypatch.setattr(gs, "MIN_STEP_S", 0.5)
    # 12 s in all: room for three interpreter start-ups on a busy 2-core machine before the open-ended step, which
    # then gets what is left (less than the total, more than nothing) and is timed out at the budget's end
    summary = gs.run(tmp_path, smoke=True, total_s=12.0, wheel_dir=None)
    by = {s["name"]: s for s in summary["steps"]}
    assert by["fails"]["status"] == "failed (rc 3)"
    assert by["writes"]["status"] == "ok" and by["writes"]["files"] == ["x.txt"]
    assert by["hangs"]["status"] == "timed out after 1 s" and by["hangs"]["rc"] is None
    assert by["takes_the_rest"]["status"].startswith("timed out") and 0.5 <= by["takes_the_rest"]["timeout_s"] < 11
    assert by["left_over"]["status"] == "not run: --total-s spent"
    assert summary["ok"] is False
    assert [s["name"] for s in json.loads((tmp_path / "summary.json").read_text())["steps"]] == list(by)


def test_missing_wheels_are_reported_not_fatal(tmp_path):
    gs = _load("gpu_session")
    with open(tmp_path / "log", "w") as log:
        problem = gs.install_wheels(tmp_path / "none", log)
    assert "no wheels" in problem and "fetch_gpu_wheels.sh" in problem


def test_kernel_grid_runs_the_target_shape_first_and_honours_the_budget():
    kb = _load("kernel_bench")
    order = kb.shape_order(kb.GPU_SHAPES)
    assert order[0] == kb.TARGET_SHAPE == (8192, 4096, 128256)
    assert len(order) == len(set(order)) == 16
    costs = [n * d * v for n, d, v in order[1:]]
    assert costs == sorted(costs)
    # A budget already spent: every shape becomes a row that says so, none is measured.
    rows = kb.bench_logprob(kb.SMOKE_SHAPES, cuda=False, only=None, deadline=0.0)
    assert len(rows) == 4 and all(res == {"all": {"err": "not run: --budget-s spent"}} for _, res in rows)
