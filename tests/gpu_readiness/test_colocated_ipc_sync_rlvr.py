"""Colocated weight sync (issue 24): workers on the trainer's own device get each bucket through an IPC handle of
the trainer's bucket buffer (``weight_sync.IpcChannel``), the others by broadcast, in one streamed sync.

The workers are the real worker extension on fake vLLM workers (``ws_fakes``), in threads of this process; on CPU
the handles are shared-memory files (``reduce_tensor`` under the ``file_system`` strategy), the serialisation a
CUDA IPC handle goes through on GPU. The handle opened by another process is tested with real vLLM in
``tests/rollout/test_colocated_vllm_rlvr.py``; CUDA handles themselves need a GPU."""

from __future__ import annotations

import time

import pytest
import torch

from megatron_tulu.rollout import weight_sync as ws
from megatron_tulu.rollout.vllm_worker_ext import WeightSyncWorkerExtension
from ws_fakes import FakeEngine, FakeWorker, tiny_state, write_checkpoint

pytestmark = pytest.mark.timeout(120)


class PlainWorker(FakeWorker):
    """Without the memory tracker (its dispatch mode costs seconds here; the streaming peak is tested elsewhere)."""

    def weight_sync_receive(self, *args):
        return WeightSyncWorkerExtension.weight_sync_receive(self, *args)


class ElsewhereWorker(PlainWorker):
    """A worker on another device than the trainer (another GPU): it must stay on the broadcast."""

    def weight_sync_versions(self, backend):
        return {**super().weight_sync_versions(backend), "device": "cuda:GPU-another"}


def _check(engine, items):
    for w in engine.workers:
        assert all(torch.equal(w.params[n], t) for n, t in items), w.rank


def test_colocated_ipc_handles_round_trip_rlvr():
    t = torch.arange(12, dtype=torch.float32)
    shared = ws.open_shared(ws.share_tensor(t[3:7]))
    assert shared.tolist() == [3.0, 4.0, 5.0, 6.0]
    t[3] = -1.0  # the handle is the memory, not a copy: later writes show (the sender reuses its bucket buffer)
    assert shared[0].item() == -1.0
    assert ws.device_key() == ws.device_key() and ws.device_key().startswith(("cpu@", "cuda:"))


def test_colocated_streamed_sync_by_ipc_and_broadcast_rlvr(tmp_path):
    items = tiny_state(layers=2)
    d = write_checkpoint(items, tmp_path / "ckpt")
    same = FakeEngine([PlainWorker(items, d, rank=r) for r in range(2)])  # both on this device (CPU: this host)
    mixed = FakeEngine([PlainWorker(items, d, rank=0), ElsewhereWorker(items, d, rank=1)])  # TP=2 over two GPUs
    group = ws.WeightSyncGroup([same, mixed], bucket_bytes=4096, timeout_s=20.0, backend="gloo",
                               device=torch.device("cpu"), ipc=True)
    try:
        group.connect()
        assert group.members == {"broadcast": [(1, 1)], "ipc": [(0, 0), (0, 1), (1, 0)]}
        stats = group.sync(items)
        assert stats.buckets > 4  # many buckets: the one reused buffer is handed over again and again
        for e in (same, mixed):
            _check(e, items)
        # streamed: the trainer's tensors consumed lazily from the metadata, bucket by bucket
        new = [(n, t * 2 + 1) for n, t in items]
        group.sync(iter(new), metas=ws.metas_of(new))
        for e in (same, mixed):
            _check(e, new)
            assert e.resets == 2
        # a sync that breaks midway marks the engines stale, and the aborted groups end the workers' waits at once
        # (not at their timeout: the shm manager, forked on first share, must not hold the groups' sockets open)
        t0 = time.monotonic()
        with pytest.raises(ws.WeightSyncValidationError):
            group.sync(iter(new[:5]), metas=ws.metas_of(new))
        assert time.monotonic() - t0 < 10.0
        assert group.stale and same.weights_stale
        # the next sync forms new groups and resends everything
        group.sync(items)
        assert group.stale is None and same.weights_stale is None
        assert group.members["ipc"] == [(0, 0), (0, 1), (1, 0)]
        for e in (same, mixed):
            _check(e, items)
    finally:
        group.close()
        same.close()
        mixed.close()
