"""Helpers for the SLURM tests: is the local SLURM ready, sbatch with bounded waits, job fields, logs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def slurm_ready() -> bool:
    if not shutil.which("sinfo"):
        return False
    r = subprocess.run(["bash", str(ROOT / "scripts/ci_slurm.sh"), "status"], capture_output=True, timeout=30)
    return r.returncode == 0


def job_env(**extra) -> dict:
    """Environment for sbatch: ours minus any SLURM_* of an enclosing job, plus MT_ROOT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(MT_ROOT=str(ROOT), **{k: str(v) for k, v in extra.items()})
    return env


def sbatch(script: Path, workdir: Path, *args: str, wait: bool = True, timeout: float = 180, env=None,
           sbatch_opts: tuple = ()) -> tuple[str, subprocess.CompletedProcess | None]:
    """Submit ``script`` with its log in ``workdir/logs``; with ``wait`` block (bounded) until it ends."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    cmd = ["sbatch", "--parsable", f"--chdir={workdir}", f"--output={workdir}/logs/%x-%j.out", *sbatch_opts]
    if wait:
        cmd.append("--wait")
    cmd += [str(script), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or job_env())
    job_id = r.stdout.strip().split(";")[0].splitlines()[0] if r.stdout.strip() else ""
    return job_id, r


def job_field(job_id: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    for tok in out.split():
        if tok.startswith(field + "="):
            return tok.split("=", 1)[1]
    return ""


def wait_for(pred, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def log_of(workdir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((workdir / "logs").glob("*.out")))


def cancel(job_id: str) -> None:
    if job_id:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
