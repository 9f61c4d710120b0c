"""GPU readiness §9: a step's grandchildren (pytest's, torchrun's workers) must not outlive the step and keep the
GPU into later steps. gpu_session.py runs each step in its own process group and kills the group."""

import os
import sys
import time
from pathlib import Path

import pytest
from bench_loader import load_benchmark

pytestmark = pytest.mark.slow  # process trees started and killed

# The step starts a grandchild that would sleep a minute, records its pid, then waits or exits.
STEP = r"""
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open({pidfile!r}, "w").write(str(g.pid))
time.sleep({child_s})
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())  # a zombie holds no GPU


def _wait_dead(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("child_s,timeout,status", [(60, 2, "timed out after 2 s"), (0, 30, "ok")],
                         ids=["step-times-out", "step-exits-leaving-a-grandchild"])
def test_a_steps_grandchildren_die_with_it(tmp_path, monkeypatch, child_s, timeout, status):
    gs = load_benchmark("gpu_session")
    pidfile = tmp_path / "grandchild.pid"
    step = dict(name="spawns", timeout=timeout,
                argv=[sys.executable, "-c", STEP.format(pidfile=str(pidfile), child_s=child_s)])
    monkeypatch.setattr(gs, "steps", lambda out, smoke: [step])
    monkeypatch.setattr(gs, "MIN_STEP_S", 0.5)
    summary = gs.run(tmp_path / "out", smoke=True, total_s=60.0, wheel_dir=None)
    assert summary["steps"][0]["status"] == status
    pid = int(pidfile.read_text())
    try:
        assert _wait_dead(pid), f"grandchild {pid} outlived its step"
    finally:
        if _alive(pid):
            os.kill(pid, 9)
