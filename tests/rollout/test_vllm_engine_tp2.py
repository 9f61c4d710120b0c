"""VLLMEngine at TP=2 (fp32, real vLLM, multiprocessing workers over gloo): the shared cases, plus a
worker killed in the middle of a sync (last: it kills this module's engine)."""

import json
import os
import signal
import time

import pytest

from megatron_tulu.testing import require_vllm

require_vllm(module_level=True)

from tiny_llama import load_reference, make_tiny_llama, perturbed_state
from vllm_cases import *  # noqa: F401,F403  (the shared test bodies)

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600)]  # slow: vLLM with 2 worker processes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama_tp2"))


@pytest.fixture(scope="module")
def ref(model_dir):
    return load_reference(model_dir)


@pytest.fixture(scope="module")
def engine(model_dir):
    from megatron_tulu.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(model_dir, tensor_parallel_size=2, dtype="float32", kv_cache_memory_bytes=256 * 2**20, seed=0)
    yield eng
    eng.shutdown()


def _wait_until_dead(pid: int, timeout_s: float = 30.0) -> None:
    """Return once ``pid`` is gone or a zombie (its parent, vLLM's engine process, reaps it later)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as f:
                if "\nState:\tZ" in f.read():
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive {timeout_s:g}s after SIGKILL")


def test_zz_worker_killed_mid_sync_raises_timeout_not_hang(engine, ref):
    from megatron_tulu.rollout.weight_sync import WeightSyncGroup, WeightSyncTimeout

    assert engine.num_workers == 2
    infos = [json.loads(x) for x in engine.llm.collective_rpc("weight_sync_debug_info")]
    victim = next(i["pid"] for i in infos if i["rank"] == 1)
    group = WeightSyncGroup([engine], bucket_bytes=16 * 1024, timeout_s=5.0)
    group.connect()

    def kill_after_first_bucket(index, nbytes):
        if index == 0:
            os.kill(victim, signal.SIGKILL)
            _wait_until_dead(victim)  # dead before the next broadcast, however busy the machine


    t0 = time.perf_counter()
    with pytest.raises(WeightSyncTimeout):
        group.sync(perturbed_state(ref, scale=0.05, seed=900), on_bucket=kill_after_first_bucket)
    assert time.perf_counter() - t0 < 60
