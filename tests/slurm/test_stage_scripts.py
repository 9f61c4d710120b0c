"""The stage scripts themselves under the local SLURM, with the real trainers (tiny, CPU).

sbatch --wait slurm/sft_tiny.sh leaves a checkpoint; USR1 mid-run -> checkpoint -> requeue -> resume=auto ->
the same final loss as the uninterrupted run; rlvr_tiny.sh runs the tiny RLVR with Ray brought up by the script.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.slurm_helpers import ROOT, cancel, job_env, job_field, log_of, sbatch, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
needs_sft = pytest.mark.skipif(not (ROOT / "launch/sft.py").exists(), reason="launch.sft not available yet")
needs_rlvr = pytest.mark.skipif(not (ROOT / "launch/rlvr.py").exists(), reason="launch.rlvr not available yet")
STEPS = 10


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The synthetic suite (tokenizer + jsonl), generated locally: nothing is downloaded."""
    out = tmp_path_factory.mktemp("slurm_data") / "data"
    subprocess.run([sys.executable, "-m", "megatron_tulu.data.synthetic", "--out", str(out), "--scale", "ci"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return out


def _sft(workdir: Path, data: Path, wait: bool):
    run = workdir / "run"
    job, r = sbatch(ROOT / "slurm/sft_tiny.sh", workdir, f"data.root={data}", f"train.max_steps={STEPS}",
                    "checkpoint.interval=5", "logging.progress_bar=false", wait=wait, timeout=600,
                    env=job_env(MT_RUN_DIR=run))
    return job, r, run


def _final_loss(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["final"]["loss"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
    work = tmp_path_factory.mktemp("sft_plain")
    job, r, run = _sft(work, data_root, wait=True)
    assert r.returncode == 0, (r.stderr, log_of(work)[-4000:])
    return run


@needs_sft
def test_sft_tiny_leaves_a_checkpoint(slurm, uninterrupted):
    ckpts = uninterrupted / "checkpoints"
    latest = (ckpts / "latest").read_text().strip()
    assert (ckpts / latest / "COMPLETE").exists()
    assert json.loads((uninterrupted / "summary.json").read_text())["steps"] == STEPS


def _usr1_and_requeue(job: str, ready, workdir: Path) -> str:
    """Once ``ready()`` (two steps logged), send the job USR1 as SLURM's preemption warning would; the job must
    checkpoint, requeue itself once and complete. Returns its log."""
    try:
        wait_for(ready, 300, "two logged training steps")
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        wait_for(lambda: job_field(job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 420,
                 f"job {job} to finish after requeue")
    finally:
        if job_field(job, "JobState") in ("PENDING", "RUNNING"):
            cancel(job)
    log = log_of(workdir)
    assert job_field(job, "JobState") == "COMPLETED", log[-4000:]
    assert job_field(job, "Restarts") == "1", log[-4000:]
    assert f"scontrol requeue {job}" in log
    return log


@needs_sft
def test_sft_tiny_usr1_requeue_resume_same_final_loss(slurm, uninterrupted, data_root, tmp_path):
    job, r, run = _sft(tmp_path, data_root, wait=False)
    assert r.returncode == 0 and job, r.stderr

    def steps_logged() -> int:
        m = run / "metrics.jsonl"
        return len(m.read_text().splitlines()) if m.exists() else 0

    log = _usr1_and_requeue(job, lambda: steps_logged() >= 2, tmp_path)
    assert "resumed from" in log
    assert _final_loss(run) == pytest.approx(_final_loss(uninterrupted), rel=1e-5)


RLVR_STEPS = 12


def _rlvr(workdir: Path, data: Path, wait: bool, *overrides: str, steps: int = RLVR_STEPS):
    """rlvr_tiny.sh from a random init (no DPO export here) with TorchEngine actors, to keep a job under a minute."""
    run = workdir / "run"
    job, r = sbatch(ROOT / "slurm/rlvr_tiny.sh", workdir, f"data.root={data}", "model.init_hf=null",
                    "rlvr.engine=torch", "rlvr.max_new_tokens=16", f"train.max_steps={steps}",
                    "checkpoint.interval=0", "logging.progress_bar=false", *overrides, wait=wait, timeout=600,
                    env=job_env(MT_RUN_DIR=run, MT_RAY_WAIT_S=120))
    return job, r, run


def _per_step(run: Path, key: str) -> dict:
    """``{step: value}`` from metrics.jsonl; a step logged again after a resume keeps its last record."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if key in rec:
            out[rec["step"]] = rec[key]
    return out


@pytest.fixture(scope="module")
def rlvr_uninterrupted(tmp_path_factory, data_root):
    work = tmp_path_factory.mktemp("rlvr_plain")
    job, r, run = _rlvr(work, data_root, wait=True)
    return job, r, run, log_of(work)


@needs_rlvr
def test_rlvr_tiny_with_ray(slurm, rlvr_uninterrupted):
    job, r, run, log = rlvr_uninterrupted
    assert r.returncode == 0, (r.stderr, log[-4000:])
    assert "ray: 1 nodes alive" in log and "Ray stopped" in log
    # the trainer ranks are their own srun step; rank 0 placed the engine as a Ray actor on the engine slot
    assert "trainer step: srun --nodes=1 --ntasks=1 --ntasks-per-node=1" in log
    assert "ray on this node: --num-cpus=1" in log
    assert "rollout engines: 1 x torch TP=1 as Ray actors" in log
    assert json.loads((run / "summary.json").read_text())["steps"] == RLVR_STEPS
    # from a random init the KL reference is the initial policy itself: zero KL before the first update
    assert _per_step(run, "reward/kl_seq_mean")[1] == 0.0
    wait_for(lambda: _procs(f"/tmp/ray-mt-{job}") is None, 30, "Ray processes to exit")


@needs_rlvr
def test_rlvr_tiny_colocated_runs_without_ray(slurm, data_root, tmp_path):
    """rlvr_tiny.sh with rlvr.engine_placement=colocated: both CPU slots are trainer ranks, each hosting an engine
    (in rank 0's process on one node); the plan has no engine slot, so the script starts no Ray cluster."""
    job, r, run = _rlvr(tmp_path, data_root, True, "rlvr.engine_placement=colocated", steps=2)
    log = log_of(tmp_path)
    assert r.returncode == 0, (r.stderr, log[-4000:])
    assert "no Ray cluster: the plan has no engine slots" in log and "ray on this node" not in log
    assert "trainer step: srun --nodes=1 --ntasks=2 --ntasks-per-node=2" in log
    assert "rollout engines: 2 x torch TP=1 colocated on the trainer's 2 devices" in log
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    calls = [json.loads(line)["call"] for line in (run / "engine_events.jsonl").read_text().splitlines()]
    assert calls == ["generate", "sleep", "wake", "update_weights", "generate"] * 2


@needs_rlvr
def test_rlvr_tiny_usr1_requeue_resume_same_steps(slurm, rlvr_uninterrupted, data_root, tmp_path):
    """USR1 mid-run: the trainer checkpoints (policy, value model, optimizers, prompt position) and exits 75, Ray
    is torn down, the job requeues itself, brings Ray and a fresh engine up, resumes, and every step's loss and
    reward equal the uninterrupted run's."""
    ref_run = rlvr_uninterrupted[2]
    job, r, run = _rlvr(tmp_path, data_root, wait=False)
    assert r.returncode == 0 and job, r.stderr
    log = _usr1_and_requeue(job, lambda: (run / "metrics.jsonl").exists() and len(_per_step(run, "loss")) >= 2,
                            tmp_path)
    assert re.search(r"SIGUSR1: checkpointed step \d+; exiting with 75", log), log[-2000:]  # run_steps' message
    for key in ("loss", "value_loss", "reward/score", "response_len"):
        got, want = _per_step(run, key), _per_step(ref_run, key)
        assert sorted(got) == list(range(1, RLVR_STEPS + 1)), key
        assert got == want, key


def _procs(tag: str):
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, timeout=30).stdout
    return [line for line in ps.splitlines() if tag in line and "ps -eo" not in line] or None


PREFGEN_PROMPTS = 48


@pytest.fixture(scope="module")
def prefgen_inputs(tmp_path_factory):
    """Random-weight tiny models and 48 verifiable prompts (tests/prefgen's helpers)."""
    from tests.prefgen.prefgen_helpers import gsm_rows, make_model, make_tokenizer, write_jsonl

    root = tmp_path_factory.mktemp("prefgen_inputs")
    make_tokenizer(root / "tok")
    return (write_jsonl(root / "prompts.jsonl", gsm_rows(PREFGEN_PROMPTS)), make_model(root / "pool", root / "tok", 0),
            make_model(root / "policy", root / "tok", 1))


def test_prefgen_tiny_two_workers_usr1_requeue_resume(slurm, prefgen_inputs, tmp_path):
    """prefgen_tiny.sh: two SLURM tasks are the two workers; USR1 mid-run -> they stop at once and exit 75 -> the
    job requeues itself -> the workers resume from the finished shards: every prompt once, the same completions as
    one uninterrupted worker writes (sampling is seeded per model and shard)."""
    from megatron_tulu.prefgen.run import RunFiles, read_jsonl
    from tests.prefgen.prefgen_helpers import overrides

    prompts, pool, policy = prefgen_inputs
    # 24 shards x 2 models, up to 160 tokens x 3 completions per prompt: USR1 lands mid-run
    ov = lambda run: overrides(run, prompts, "rlvr", pool, policy, None, shard_size=2) + [  # noqa: E731
        "pool=[{name: pool-a, path: %s, n: 1, temperature: 1.0, max_new_tokens: 160}]" % pool,
        "policy={name: policy-b, path: %s, n: 2, temperature: 1.0, max_new_tokens: 160}" % policy]
    run = tmp_path / "run"
    job, r = sbatch(ROOT / "slurm/prefgen_tiny.sh", tmp_path, *ov(run), wait=False, env=job_env())
    assert r.returncode == 0 and job, r.stderr
    log = _usr1_and_requeue(job, lambda: any(run.glob("completions/*/shard_*.jsonl")), tmp_path)
    assert re.search(r"\[prefgen [01]/2\] SIGUSR1: stopping; .* exiting with 75", log), log[-3000:]
    assert "[prefgen 0/2" in log and "[prefgen 1/2" in log and "[mt] finished with exit code 0" in log

    files = RunFiles(run)
    report = json.loads(files.report.read_text())
    ids = [p["id"] for p in read_jsonl(files.prompts)]
    got = read_jsonl(files.preferences)
    assert len(ids) == PREFGEN_PROMPTS and sorted([g["id"] for g in got] + list(report["dropped"])) == sorted(ids)

    # the same run by one worker, uninterrupted, in a process of its own with one thread (as each SLURM task)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    one = subprocess.run([sys.executable, "-m", "launch.prefgen", "--config", "prefgen/tiny", *ov(tmp_path / "one")],
                         cwd=ROOT, env=dict(env, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)), capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    def completions(root: Path) -> list:
        return [(p.relative_to(root).as_posix(), read_jsonl(p)) for p in sorted(root.glob("completions/*/shard_*"))]

    shards = PREFGEN_PROMPTS // 2
    assert completions(run) == completions(tmp_path / "one") and len(completions(run)) == 2 * shards  # x 2 models
    assert got == read_jsonl(RunFiles(tmp_path / "one").preferences)  # (random weights: mostly tied, dropped)
