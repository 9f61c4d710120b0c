"""W&B logging (``logging.wandb_project``) with the real ``wandb`` package in offline mode: a run stopped by
SIGUSR1 and resumed logs into ONE W&B run (same id, ``resume="allow"``), every step once with the values of
metrics.jsonl, with the run's config and the final summary. The offline ``.wandb`` files are read back with
wandb's own protobuf records (the format ``wandb sync`` uploads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from megatron_tulu.preemption import REQUEUE_EXIT_CODE
from trainer_helpers import base_overrides, rank_jobs, step_records

pytestmark = pytest.mark.slow


def _need_wandb():
    try:
        import wandb  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI"):  # `make test` installs the test extra, which pins wandb: never skip there
            raise
        pytest.skip(f"wandb is not installed: {e}")


def wandb_records(path: Path) -> list:
    """Records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB-log framing (32 KiB
    blocks; each fragment: crc32, little-endian length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4) of protobuf
    ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's trailer too short for a fragment header is zero padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _key(item) -> str:
    """An item's metric name (wandb-core writes ``nested_key`` parts where the Python SDK wrote ``key``)."""
    return item.key or "/".join(item.nested_key)


def test_wandb_run_survives_preemption(sft_data, tiny_hf, tmp_path, monkeypatch):
    _need_wandb()
    from megatron_tulu.testing import run_distributed

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    run = tmp_path / "run"
    ov = base_overrides(sft_data, run, **{"model.init_hf": str(tiny_hf), "train.max_steps": 4,
                                          "checkpoint.interval": 0, "logging.wandb_project": "megatron-tulu-test"})
    out = run_distributed(rank_jobs, 1, args=([("stop@2", ov), ("fit", ov)],), timeout_s=600)[0]
    assert out[0] == REQUEUE_EXIT_CODE and out[1]["steps"] == 4

    run_id = (run / "wandb_run_id").read_text().strip()
    sessions = sorted((run / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2, sessions
    history, configs, summary = {}, [], {}
    for i, session in enumerate(sessions):
        files = list(session.glob("run-*.wandb"))
        assert [f.name for f in files] == [f"run-{run_id}.wandb"], files  # both sessions are the same W&B run
        for rec in wandb_records(files[0]):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                items = {_key(it): json.loads(it.value_json) for it in rec.history.item}
                history.setdefault(i, {})[int(rec.history.step.num)] = items
            elif kind == "run":
                configs.append({_key(it): json.loads(it.value_json) for it in rec.run.config.update})
            elif kind == "summary" and i == 1:
                summary.update({_key(it): json.loads(it.value_json) for it in rec.summary.update})
    # steps 1-2 before the stop, 3-4 after the resume: each logged once, with metrics.jsonl's values
    assert sorted(history[0]) == [1, 2] and sorted(history[1]) == [3, 4], {k: sorted(v) for k, v in history.items()}
    jsonl = step_records(run)
    for steps in history.values():
        for step, items in steps.items():
            for key in ("loss", "grad_norm", "lr", "label_tokens"):
                assert items[key] == pytest.approx(jsonl[step][key], rel=1e-12), (step, key)
    assert configs and all(c["optim"]["lr"] == 1e-3 and c["train"]["max_steps"] == 4 for c in configs), configs
    assert summary["loss"] == pytest.approx(jsonl[4]["loss"], rel=1e-12)
