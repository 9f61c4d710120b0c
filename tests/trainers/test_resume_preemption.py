"""Exact resume through the real entry point (``python -m launch.sft``), against the uninterrupted reference run.

One run, four processes, the same run_dir:
  1. killed with SIGKILL once the step-4 checkpoint is ``latest``; its step-4 checkpoint is then damaged (COMPLETE
     removed), so ``resume=auto`` must refuse it (naming it) and fall back to step 2;
  2. resumed from step 2, sent SIGUSR1: it checkpoints at the next step boundary and exits with
     ``REQUEUE_EXIT_CODE``;
  3. resumed from that checkpoint, sent SIGTERM: the same, and a stale temp dir of a dead save is cleaned up;
  4. resumed again and run to the end: only the newest ``keep_last`` checkpoints remain.
The per-step losses (last record per step in metrics.jsonl) must equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_tulu.preemption import REQUEUE_EXIT_CODE
from trainer_helpers import REF_STEPS, base_overrides, step_records

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _launch(overrides: list[str], log: Path) -> subprocess.Popen:
    # One thread, like the run_distributed reference, so both compute in the same order (bit-exact).
    env = dict(os.environ, OMP_NUM_THREADS="1", MEGATRON_TULU_DEVICE="cpu", LOGLEVEL="WARNING")
    # its own process group: the SIGKILL below goes to the group, as SLURM's kill reaches a job step's every process.
    # megatron's checkpoint writer starts a multiprocessing manager process (spawned, once per process) that does not
    # watch its parent: a SIGKILL of the trainer alone left it running after the test
    return subprocess.Popen([sys.executable, "-m", "launch.sft", "--config", "sft/tiny", *overrides], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {what}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"timed out waiting for {what}")


def _latest(run_dir: Path) -> str | None:
    p = run_dir / "checkpoints" / "latest"
    try:
        return p.read_text().strip()
    except FileNotFoundError:
        return None


def test_exact_resume_after_kill9_and_sigusr1(one_rank_runs, sft_data, tiny_hf, tmp_path):
    run_dir = tmp_path / "run"
    overrides = base_overrides(sft_data, run_dir, **{
        "model.init_hf": str(tiny_hf), "train.max_steps": REF_STEPS, "checkpoint.interval": 2, "checkpoint.keep_last": 3})
    ckpts = run_dir / "checkpoints"

    # 1. SIGKILL after the step-4 checkpoint is complete and pointed to
    p1 = _launch(overrides, tmp_path / "p1.log")
    _wait_for(lambda: _latest(run_dir) == "step_00000004", p1, "the step-4 checkpoint")
    os.killpg(p1.pid, signal.SIGKILL)
    assert p1.wait(timeout=60) == -signal.SIGKILL
    # damage the newest checkpoint: resume=auto has to refuse it and take step 2
    (ckpts / "step_00000004" / "COMPLETE").unlink()

    # 2. resume, then SIGUSR1 (SLURM's preemption warning) as soon as it has resumed
    p2 = _launch(overrides, tmp_path / "p2.log")
    log2 = tmp_path / "p2.log"
    _wait_for(lambda: "resumed from" in log2.read_text(), p2, "the resume message")
    p2.send_signal(signal.SIGUSR1)
    assert p2.wait(timeout=300) == REQUEUE_EXIT_CODE, log2.read_text()[-3000:]
    text2 = log2.read_text()
    assert f"{ckpts / 'step_00000004'}: no COMPLETE marker" in text2, "the refused checkpoint must be named"
    assert f"resumed from {ckpts / 'step_00000002'} at step 2" in text2, text2[-3000:]
    stopped = _latest(run_dir)
    assert stopped is not None and 2 < int(stopped.split("_")[1]) < REF_STEPS, stopped
    assert f"SIGUSR1: checkpointed step {int(stopped.split('_')[1])}" in text2

    # 3. resume, then SIGTERM (what SLURM sends at the time limit or on scancel): checkpoint and requeue code too.
    # A save that died mid-write left a temp dir: the next save must clean it up.
    (ckpts / ".step_00000099.tmp").mkdir()
    p3 = _launch(overrides, tmp_path / "p3.log")
    log3 = tmp_path / "p3.log"
    _wait_for(lambda: "resumed from" in log3.read_text(), p3, "the resume message")
    p3.send_signal(signal.SIGTERM)
    assert p3.wait(timeout=300) == REQUEUE_EXIT_CODE, log3.read_text()[-3000:]
    assert f"resumed from {ckpts / stopped}" in log3.read_text()
    stopped3 = _latest(run_dir)
    assert int(stopped3.split("_")[1]) > int(stopped.split("_")[1]), (stopped, stopped3)
    assert f"SIGTERM: checkpointed step {int(stopped3.split('_')[1])}" in log3.read_text()

    # 4. resume to the end
    p4 = _launch(overrides, tmp_path / "p4.log")
    assert p4.wait(timeout=300) == 0, (tmp_path / "p4.log").read_text()[-3000:]
    assert f"resumed from {ckpts / stopped3}" in (tmp_path / "p4.log").read_text()

    ref, got = step_records(one_rank_runs["ref"]), step_records(run_dir)
    assert sorted(got) == sorted(ref)
    assert [got[s]["loss"] for s in got] == [ref[s]["loss"] for s in ref]
    assert [got[s]["grad_norm"] for s in got] == [ref[s]["grad_norm"] for s in ref]
    assert _latest(run_dir) == f"step_{REF_STEPS:08d}"
    # keep_last=3: exactly the newest three checkpoints remain, all complete, and no temp dir of a dead save
    dirs = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step_"))
    assert len(dirs) == 3 and dirs[-1] == f"step_{REF_STEPS:08d}", dirs
    assert all((ckpts / d / "COMPLETE").exists() for d in dirs), dirs
    assert not list(ckpts.glob(".*.tmp"))
