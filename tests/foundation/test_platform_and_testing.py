"""platform's CPU shim (checked in a spawned process: it patches torch.cuda for the life of the process) and
``testing.run_distributed``'s error and timeout behaviour."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import foundation_helpers as fh
from megatron_tulu import platform
from megatron_tulu.testing import run_distributed

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cpu_shim_makes_cuda_calls_work_in_a_worker():
    out = run_distributed(fh.rank_platform_checks, world_size=1, timeout_s=300)[0]
    assert out["setup_again"] == "cpu"  # idempotent
    assert out["current_device"] == 0
    assert out["zeros_device"] == "cpu" and out["to_cuda_device"] == "cpu" and out["dot_cuda_device"] == "cpu"
    assert out["platform_device"] == "cpu" and out["backend"] == "gloo"
    assert out["rng_roundtrip"], "torch.cuda.get_rng_state/set_rng_state did not round-trip"
    assert out["cuda_seed_is_cpu_seed"], "torch.cuda.manual_seed does not seed the CPU generator"
    assert out["fork_restores_default"] and out["fork_stream_advances"]
    assert out["type_name"] == "torch.cuda.FloatTensor"
    assert out["streams_ok"], "torch.cuda.Stream/current_stream/stream()/Event do not work under the shim"
    assert out["backward_alloc_ok"], "device=current_device() inside a custom autograd backward is not rewritten"
    assert out["switch_error"] and "cuda" in out["switch_error"]


def test_platform_host_answers_without_setup():
    """In a fresh interpreter, where nothing has called ``platform.setup`` (in this one, earlier tests may have)."""
    code = ("from megatron_tulu import platform; assert platform._STATE['device'] is None; "
            "print(platform.has_gpu(), platform.backend(), platform.device().type)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, MEGATRON_TULU_DEVICE="cpu"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "gloo", "cpu"]


def test_platform_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="device must be"):
        platform.setup("tpu")


@pytest.mark.slow
def test_run_distributed_propagates_a_rank_exception_with_its_traceback():
    with pytest.raises(RuntimeError) as info:
        run_distributed(fh.rank_raise_on_one, world_size=2, timeout_s=300)
    msg = str(info.value)
    assert "failed on rank 1" in msg
    assert "Traceback" in msg and "ValueError: boom from rank one" in msg and "rank_raise_on_one" in msg
    assert not mp.active_children()


@pytest.mark.slow
def test_run_distributed_raises_timeout_for_a_hanging_rank():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 12"):
        run_distributed(fh.rank_hang_on_one, world_size=2, timeout_s=12)
    assert time.monotonic() - t0 < 12 + 40  # killed, not waited for (the hanging rank sleeps 600 s)
    assert not mp.active_children(), "a hanging rank was left running"


def test_free_port_is_below_the_ephemeral_range_and_bindable():
    """A rendezvous port from ``free_port`` is one no outgoing connection can take before it is bound: below the
    kernel's ephemeral range (and above Ray's worker ports), and free."""
    import socket

    from megatron_tulu.parallel import free_port

    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(20000 <= p < low for p in ports) and len(ports) > 1  # SystemRandom: not one fixed port
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))
