"""GPU readiness #4: every member of the weight-sync group reports its NCCL version in the handshake and a
mismatch fails at start-up, naming both versions, before any rank joins the group (NCCL itself refuses a
communicator across versions, at the first collective, far from the cause). The container side (one
libnccl for the trainer and /opt/vllm) is in the Dockerfile; its static checks are here too."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ws_fakes import FakeEngine, FakeWorker, tiny_state, write_checkpoint  # noqa: E402

import megatron_tulu.rollout.vllm_worker_ext as ext  # noqa: E402
import megatron_tulu.rollout.weight_sync as ws  # noqa: E402

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def test_version_comparison_names_both_versions():
    from megatron_tulu.rollout.weight_sync import WeightSyncError, check_nccl_versions

    check_nccl_versions({"trainer (rank 0)": "2.27.3", "engine 0 rank 1": "2.27.3"})
    check_nccl_versions({"trainer (rank 0)": None, "engine 0 rank 1": None})  # gloo: nothing to compare
    with pytest.raises(WeightSyncError) as e:
        check_nccl_versions({"trainer (rank 0)": "2.21.5", "engine 0 rank 1": "2.27.3", "engine 0 rank 2": "2.27.3"})
    msg = str(e.value)
    assert "2.21.5" in msg and "2.27.3" in msg and "trainer (rank 0)" in msg and "engine 0 rank 1" in msg
    with pytest.raises(WeightSyncError, match="no NCCL"):  # a member without CUDA/NCCL in an nccl group
        check_nccl_versions({"trainer (rank 0)": "2.27.3", "engine 0 rank 1": None})


def test_nccl_version_format():
    assert ws.format_nccl_version((2, 27, 3)) == "2.27.3"
    assert ws.format_nccl_version((2, 28, 9, "+cuda12.9")) == "2.28.9+cuda12.9"
    assert ws.format_nccl_version(21903) == "2.19.3"
    assert ws.format_nccl_version(2708) == "2.7.8"
    assert ws.local_nccl_version("gloo") is None
    if not torch.cuda.is_available():
        assert ws.local_nccl_version("nccl") is None


def _engine(tmp_path, workers=2):
    items = tiny_state(layers=1)
    d = write_checkpoint(items, tmp_path / "ckpt")
    return items, FakeEngine([FakeWorker(items, d, rank=r) for r in range(workers)])


def test_handshake_refuses_mismatched_nccl_before_joining(tmp_path, monkeypatch):
    # trainer: the NGC image's NCCL; engine workers: the pip NCCL of /opt/vllm's torch
    monkeypatch.setattr(ws, "local_nccl_version", lambda backend: "2.21.5", raising=False)
    monkeypatch.setattr(ext, "local_nccl_version", lambda backend: "2.27.3", raising=False)
    _, engine = _engine(tmp_path)
    group = ws.WeightSyncGroup([engine], timeout_s=5.0, backend="gloo", device=torch.device("cpu"))
    try:
        with pytest.raises(ws.WeightSyncError) as e:
            group.connect()
        msg = str(e.value)
        assert "2.21.5" in msg and "2.27.3" in msg, msg
        assert "weight_sync_init" not in engine.rpcs  # refused before any rank joined the group
        assert group.pg is None
    finally:
        engine.close()


def test_handshake_with_equal_versions_connects_and_syncs(tmp_path, monkeypatch):
    monkeypatch.setattr(ws, "local_nccl_version", lambda backend: "2.27.3", raising=False)
    monkeypatch.setattr(ext, "local_nccl_version", lambda backend: "2.27.3", raising=False)
    items, engine = _engine(tmp_path)
    group = ws.WeightSyncGroup([engine], bucket_bytes=4096, timeout_s=10.0, backend="gloo", device=torch.device("cpu"))
    try:
        group.connect()
        assert engine.rpcs[:2] == ["weight_sync_versions", "weight_sync_init"]
        group.sync(items)
        for w in engine.workers:
            assert all(torch.equal(w.params[n], t) for n, t in items)
    finally:
        group.close()
        engine.close()


def test_dockerfile_makes_the_vllm_env_load_the_trainers_libnccl():
    text = (ROOT / "Dockerfile").read_text()
    # the NCCL library the trainer's (NGC) torch maps, linked in place of the pip wheel's in /opt/vllm ...
    runs = [m.group(0) for m in re.finditer(r"^RUN .*(?:\n(?!\s*\n).*)*", text, re.M)]  # RUN + continuations
    run = next((r for r in runs if "libnccl" in r), "")
    assert "/proc/self/maps" in run and "ln -sf" in run and "/opt/vllm/lib/python3" in run, run
    # ... and the build fails unless both environments then report the same NCCL version
    assert run.count("torch.cuda.nccl.version()") >= 2 and "/opt/vllm/bin/python" in run
    # the install of vLLM comes first (the link replaces the wheel's file)
    assert text.index('"vllm==${VLLM_VERSION}"') < text.index(run)
