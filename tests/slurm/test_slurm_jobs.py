"""Real jobs on the local one-node SLURM (scripts/ci_slurm.sh): env derivation, USR1 -> requeue -> resume, Ray."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.slurm.slurm_helpers import ROOT, cancel, job_env, job_field, log_of, sbatch, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
JOBS = Path(__file__).resolve().parent / "jobs"


def test_srun_wrapper_derives_distributed_env(slurm, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job, r = sbatch(JOBS / "dist_job.sh", tmp_path, str(out), timeout=120)
    assert r.returncode == 0, (r.stderr, log_of(tmp_path))
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    assert [x["rank"] for x in ranks] == [x["procid"] for x in ranks] == [0, 1]
    assert {x["world"] for x in ranks} == {2}
    assert {x["local_rank"] for x in ranks} == {0, 1}
    assert {x["master_addr"] for x in ranks} == {ranks[0]["host"]}  # first node of the allocation
    assert {x["master_port"] for x in ranks} == {20000 + int(job) % 20000}
    assert all({"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= set(x["derived"]) for x in ranks)
    assert [x["allreduce"] for x in ranks] == [3.0, 3.0]  # 1 + 2: both ranks really joined one group


def test_usr1_checkpoints_requeues_and_resumes(slurm, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job, r = sbatch(JOBS / "preempt_job.sh", tmp_path, str(out), wait=False, timeout=60)
    assert r.returncode == 0 and job, r.stderr
    try:
        wait_for(lambda: (out / "ready0").exists() and (out / "ready1").exists(), 90, "both tasks ready")
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        wait_for(lambda: job_field(job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 120,
                 f"job {job} to finish after requeue")
    finally:
        if job_field(job, "JobState") in ("PENDING", "RUNNING"):
            cancel(job)
    log = log_of(tmp_path)
    assert job_field(job, "JobState") == "COMPLETED", log
    assert job_field(job, "Restarts") == "1", log
    assert f"scontrol requeue {job}" in log
    expected = sum(1.0 / (k + 1) for k in range(40))  # the uninterrupted run's total
    for rank in range(2):
        state = json.loads((out / f"state{rank}.json").read_text())
        final = json.loads((out / f"final{rank}.json").read_text())
        assert state["signal"] == "SIGUSR1" and state["step"] == 10
        assert final["resumed_from"] == 10 and final["restart"] == 1
        assert final["total"] == pytest.approx(expected, rel=1e-12)


def _ray_procs(tag: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, timeout=30).stdout
    return [line for line in ps.splitlines() if tag in line and "ps -eo" not in line] or None


def test_ray_cluster_bring_up_and_teardown(slurm, tmp_path):
    # Generous wait: on 2 loaded cores a raylet can miss Ray's fixed 30 s registration window and be restarted.
    env = job_env(MT_RAY_HEAD_NODE_WORKERS=1, MT_RAY_NUM_CPUS=1, MT_RAY_WAIT_S=240)
    job, r = sbatch(JOBS / "ray_job.sh", tmp_path, timeout=400, env=env)
    log = log_of(tmp_path)
    assert r.returncode == 0, (r.stderr, log)
    probe = json.loads(next(line for line in log.splitlines() if line.startswith("RAY_PROBE "))[10:])
    assert probe["alive"] == 2, probe  # head + one worker raylet
    assert sorted(probe["ran_on"]) == sorted(probe["nodes"]) and len(set(probe["ran_on"])) == 2
    assert "ray: 2 nodes alive" in log and "Ray stopped" in log
    tag = f"/tmp/ray-mt-{job}"
    wait_for(lambda: _ray_procs(tag) is None, 30, f"Ray processes of {tag} to exit")


def test_stage_script_finds_its_checkout_and_allocation_inside_a_job(slurm, tmp_path):
    """Inside a job $0 is SLURM's spool copy: the script finds the checkout via `scontrol show job`, and the
    plan uses the real allocation (host names from SLURM). DRY_RUN keeps the job to a few seconds."""
    env = {k: v for k, v in job_env(DRY_RUN=1).items() if k != "MT_ROOT"}
    job, r = sbatch(ROOT / "slurm/rlvr_tiny.sh", tmp_path, timeout=120, env=env)
    log = log_of(tmp_path)
    assert r.returncode == 0, (r.stderr, log)
    assert f"root: {ROOT}" in log
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, timeout=10).stdout.strip()
    assert "plan: rlvr/tiny (tiny) on 1 nodes x 2 CPU processes" in log
    assert f"node 0 ({host}): mixed" in log
    assert "total: engines 1 + trainers 1 = 2 (allocation 2) OK" in log


def test_ci_slurm_start_is_idempotent_and_quick(slurm):
    for cmd in ("start", "status"):
        r = subprocess.run(["bash", str(ROOT / "scripts/ci_slurm.sh"), cmd], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
    assert "already running" in subprocess.run(
        ["bash", str(ROOT / "scripts/ci_slurm.sh"), "start"], capture_output=True, text=True, timeout=60).stderr
