"""Bucket planning, byte-bucket broadcast over a stateless gloo group, timeouts, metadata validation.

No vLLM here: the peers are plain processes running the receiver code the worker extension uses.
"""

import multiprocessing as mp
import time

import pytest
import torch

from megatron_tulu.parallel import free_port
from megatron_tulu.rollout.vllm_worker_ext import validate_metas
from megatron_tulu.rollout.weight_sync import (
    BucketSender,
    TensorMeta,
    WeightSyncTimeout,
    WeightSyncValidationError,
    init_stateless_group,
    metas_of,
    plan_buckets,
)
from sync_peers import receiver_main

pytestmark = pytest.mark.timeout(120)


def _items():
    g = torch.Generator().manual_seed(0)
    return [
        ("a.weight", torch.randn(10, 7, generator=g)),
        ("b.bias", torch.randn(3, generator=g).to(torch.bfloat16)),
        ("c.weight", torch.randn(33, 5, generator=g)),
        ("d.weight", torch.randn(4, 4, generator=g).half()),
        ("e.weight", torch.randn(2, 100, generator=g)),
    ]


def test_plan_buckets_bounds_sizes_and_keeps_order():
    metas = metas_of(_items())
    plan = plan_buckets(metas, bucket_bytes=800)
    flat = [i for b in plan for i, _ in b]
    assert flat == list(range(len(metas)))
    for b in plan:
        end = b[-1][1] + metas[b[-1][0]].nbytes
        assert len(b) == 1 or end <= 800  # a tensor bigger than the bucket travels alone
        assert all(off % 16 == 0 for _, off in b)
    assert len(plan) >= 3
    assert len(plan_buckets(metas, bucket_bytes=1 << 30)) == 1
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(metas, 0)


def _spawn_receiver(port, world, rank, items, bucket_bytes, timeout_s, die_after):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    wire = [m.to_wire() for m in metas_of(items)]
    p = ctx.Process(target=receiver_main, args=(port, world, rank, wire, bucket_bytes, timeout_s, die_after, q), daemon=True)
    p.start()
    assert q.get(timeout=120) == "started"  # spawn start-up (imports) is slow on a loaded machine
    return p, q


@pytest.mark.slow
def test_bucketed_broadcast_roundtrip_mixed_dtypes():
    items = _items()
    port = free_port()
    p, q = _spawn_receiver(port, 2, 1, items, 400, 30.0, None)
    group = init_stateless_group("127.0.0.1", port, 0, 2, "gloo", 30.0)
    sender = BucketSender(group, metas_of(items), 400, torch.device("cpu"), 30.0)
    nbytes = sender.send([t for _, t in items])
    status, sums, dtypes = q.get(timeout=60)
    p.join(30)
    group.shutdown()
    assert status == "ok", sums
    assert len(sender.plan) >= 3
    assert nbytes >= sum(t.numel() * t.element_size() for _, t in items)
    for name, t in items:
        assert dtypes[name] == t.dtype
        assert sums[name] == pytest.approx(t.sum().item(), rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_streamed_send_pulls_one_bucket_at_a_time_and_checks_each_tensor():
    """With the metadata known up front the sender consumes a lazy stream: when a bucket goes out, it has
    pulled exactly that bucket's tensors (rank 0 never holds the model); a tensor that does not match its
    metadata entry stops the send with the entry named."""
    items = _items()
    port = free_port()
    p, q = _spawn_receiver(port, 2, 1, items, 400, 30.0, None)
    group = init_stateless_group("127.0.0.1", port, 0, 2, "gloo", 30.0)
    sender = BucketSender(group, metas_of(items), 400, torch.device("cpu"), 30.0)
    pulled, at_bucket = [], []

    def stream():
        for name, t in items:
            pulled.append(name)
            yield name, t

    sender.send(stream(), on_bucket=lambda b, n: at_bucket.append(len(pulled)))
    status, sums, _ = q.get(timeout=60)
    p.join(30)
    group.shutdown()
    assert status == "ok"
    assert at_bucket == [b[-1][0] + 1 for b in sender.plan]  # pulled up to this bucket's last tensor, no further
    for name, t in items:
        assert sums[name] == pytest.approx(t.sum().item(), rel=1e-6, abs=1e-6)
    bad = [(n, t) for n, t in items]
    bad[0] = ("a.weight", torch.zeros(7, 10))
    with pytest.raises(WeightSyncValidationError, match=r"tensor 0 is \('a.weight', 'float32', \(7, 10\)\)"):
        BucketSender(None, metas_of(items), 400, torch.device("cpu"), 1.0).send(iter(bad))


def test_peer_that_never_joins_times_out():
    t0 = time.perf_counter()
    with pytest.raises(WeightSyncTimeout, match="could not form the group"):
        init_stateless_group("127.0.0.1", free_port(), 0, 2, "gloo", timeout_s=2.0)
    assert time.perf_counter() - t0 < 20


@pytest.mark.slow
def test_peer_dying_mid_sync_times_out_not_hangs():
    items = [(f"w{i}", torch.randn(64, 64)) for i in range(8)]  # 16 KiB each
    port = free_port()
    p, q = _spawn_receiver(port, 2, 1, items, 16 * 1024, 3.0, 2)  # dies after 2 of 8 buckets
    group = init_stateless_group("127.0.0.1", port, 0, 2, "gloo", 3.0)
    sender = BucketSender(group, metas_of(items), 16 * 1024, torch.device("cpu"), 3.0)
    t0 = time.perf_counter()
    with pytest.raises(WeightSyncTimeout, match="bucket"):
        for _ in range(20):  # small buckets can sit in socket buffers; keep sending until the loss shows
            sender.send([t for _, t in items])
    assert time.perf_counter() - t0 < 30
    p.join(10)
    assert p.exitcode == 3
    group.shutdown()


def test_validate_metas_names_shapes_dtypes_and_completeness():
    table = {"model.embed_tokens.weight": ("f32", (300, 64)), "model.norm.weight": ("f32", (64,))}
    ok = [TensorMeta("model.embed_tokens.weight", "float32", (300, 64)), TensorMeta("model.norm.weight", "float32", (64,))]
    assert validate_metas(ok, table, "float32", tie_word_embeddings=False) == []
    assert validate_metas(ok + [TensorMeta("lm_head.weight", "float32", (300, 64))], table, "float32", True) == []
    probs = validate_metas(ok + [TensorMeta("lm_head.weight", "float32", (300, 64))], table, "float32", False)
    assert any("lm_head.weight: unknown parameter name" in p for p in probs)
    probs = validate_metas([ok[0], TensorMeta("model.norm.weight", "float32", (65,))], table, "float32", False)
    assert any("shape (65,) != expected (64,)" in p for p in probs)
    probs = validate_metas([ok[0], TensorMeta("model.norm.weight", "int64", (64,))], table, "float32", False)
    assert any("dtype int64" in p for p in probs)
    probs = validate_metas([ok[0]], table, "float32", False)
    assert any("missing 1 tensors" in p for p in probs)
    probs = validate_metas(ok + [ok[1]], table, "float32", False)
    assert any("sent twice" in p for p in probs)
