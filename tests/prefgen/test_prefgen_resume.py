"""Two prefgen workers (one engine each), killed mid-run and started again: the run finishes with every prompt id
exactly once (in a pair or among the counted drops), and the shards finished before the kill are not redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_tulu.prefgen.run import RunFiles, read_jsonl
from prefgen_helpers import gsm_rows, overrides, write_jsonl

pytestmark = pytest.mark.slow  # four worker processes on 2 cores (~40 s)
ROOT = Path(__file__).resolve().parents[2]


def _start(worker: int, ov: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, RANK=str(worker), WORLD_SIZE="2", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "launch.prefgen", "--config", "prefgen/tiny", *ov], cwd=ROOT,
                            env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def test_prefgen_two_workers_killed_and_resumed(tmp_path, prefgen_models):
    tok, pool, policy = prefgen_models
    prompts = write_jsonl(tmp_path / "prompts.jsonl", gsm_rows(16))
    run = tmp_path / "run"
    # long completions (up to 160 tokens x 3 per prompt) so that a shard takes a while: the kill lands mid-run
    ov = overrides(run, prompts, "rlvr", pool, policy, None, shard_size=2) + [
        "pool=[{name: pool-a, path: %s, n: 1, temperature: 1.0, max_new_tokens: 160}]" % pool,
        "policy={name: policy-b, path: %s, n: 2, temperature: 1.0, max_new_tokens: 160}" % policy]
    files = RunFiles(run)
    procs = [_start(w, ov, tmp_path / f"w{w}.log") for w in (0, 1)]
    deadline = time.time() + 240
    while len(list(run.glob("completions/pool-a/shard_*.jsonl"))) < 4:
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            "\n".join((tmp_path / f"w{w}.log").read_text()[-2000:] for w in (0, 1))
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not files.preferences.exists(), "the kill came after the end: nothing left to resume"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("shard_*") if not p.name.startswith(".")}
    assert len(list(run.glob("completions/pool-a/shard_*.jsonl"))) < 8  # 16 prompts / 2 per shard

    procs = [_start(w, ov, tmp_path / f"w{w}.log") for w in (0, 1)]
    for w, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, (tmp_path / f"w{w}.log").read_text()[-3000:]

    report = json.loads(files.report.read_text())
    prompt_ids = [p["id"] for p in read_jsonl(files.prompts)]
    assert len(prompt_ids) == 16
    ids = [r["id"] for r in read_jsonl(files.preferences)] + list(report["dropped"])
    assert sorted(ids) == sorted(prompt_ids)  # none missing, none twice
    for model, n in (("pool-a", 1), ("policy-b", 2)):
        rows = [r for k in range(8) for r in read_jsonl(files.completions(model, k))]
        assert sorted((r["id"], r["index"]) for r in rows) == sorted((i, j) for i in prompt_ids for j in range(n))
        assert report["models"][model]["counts"]["completions"] == 16 * n
    # what was finished before the kill was reused, not redone
    assert before and all(p.stat().st_mtime_ns == t for p, t in before.items())
    logs = (tmp_path / "w0.log").read_text() + (tmp_path / "w1.log").read_text()
    assert "pairs from 16 prompts" in logs
