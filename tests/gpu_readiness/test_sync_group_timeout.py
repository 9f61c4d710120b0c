"""GPU readiness #7: a weight-sync collective that does not finish within the wait ends in
``WeightSyncTimeout`` -- never in the NCCL watchdog killing the process. The NCCL group is created with a
timeout longer than the wait, and when the wait expires the group is aborted before the error is raised.
(ProcessGroupNCCL does not exist in the CPU build: the NCCL wait is exercised with a fake work object that
behaves like an NCCL one, polled, never completing; the gloo case is real.)"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from megatron_tulu.parallel import free_port
from megatron_tulu.rollout import weight_sync as ws

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("wait_s", [1.0, 30.0, 300.0, 1800.0])
def test_nccl_group_timeout_is_longer_than_the_wait(wait_s):
    t = ws.group_timeout_s("nccl", wait_s)
    assert t >= 2 * wait_s and t - wait_s >= 60  # the wait, then our abort, always come first
    assert ws.group_timeout_s("gloo", wait_s) == wait_s  # gloo raises at its timeout; no watchdog


class _NeverDoneWork:
    """An NCCL work whose collective never completes (a peer stalled): ``is_completed`` stays False;
    ``wait(timeout)`` blocks for the timeout (ProcessGroupNCCL's watchdog would take the process meanwhile)."""

    def __init__(self, group):
        self.group = group

    def is_completed(self):
        return self.group.aborted

    def wait(self, timeout=None):
        time.sleep(timeout.total_seconds() if timeout is not None else 3600)
        return False


class _FakeNcclGroup:
    backend = "nccl"

    def __init__(self):
        self.aborted = False
        self.abort_calls = 0

    def broadcast(self, buf, root):
        return _NeverDoneWork(self)

    def abort(self):
        self.abort_calls += 1
        self.aborted = True


def test_expired_nccl_wait_aborts_the_group_then_raises_timeout():
    g = _FakeNcclGroup()
    t0 = time.perf_counter()
    with pytest.raises(ws.WeightSyncTimeout, match=r"bucket 3/9: broadcast did not complete within 0.5s"):
        ws.collective_with_timeout(g, "broadcast", torch.empty(8, dtype=torch.uint8), 0.5, "bucket 3/9")
    assert time.perf_counter() - t0 < 5
    assert g.abort_calls == 1  # aborted by us before the error reached the caller


def test_gloo_peer_that_stalls_gives_weight_sync_timeout_and_an_aborted_group():
    """Rank 1 waits for a bucket that rank 0 (joined, then stalled) never sends. (gloo's ``work.wait`` ends at
    the group's own timeout, which is the wait for gloo: see ``group_timeout_s``.)"""
    port = free_port()
    ranks = {}
    th = threading.Thread(target=lambda: ranks.setdefault(0, ws.init_stateless_group("127.0.0.1", port, 0, 2, "gloo",
                                                                                      2.0)))
    th.start()
    g1 = ws.init_stateless_group("127.0.0.1", port, 1, 2, "gloo", 2.0)
    th.join(30)
    try:
        t0 = time.perf_counter()
        with pytest.raises(ws.WeightSyncTimeout, match="bucket 1/4"):
            ws.collective_with_timeout(g1, "broadcast", torch.empty(1024, dtype=torch.uint8), 2.0, "bucket 1/4")
        assert time.perf_counter() - t0 < 10
        assert g1.aborted
        with pytest.raises(ws.WeightSyncError, match="aborted"):  # no second wait on a broken group
            g1.broadcast(torch.empty(4, dtype=torch.uint8), 0)
    finally:
        g1.shutdown()
        ranks[0].shutdown()
