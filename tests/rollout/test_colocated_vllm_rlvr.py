"""A colocated real vLLM engine (issue 24): the weight sync hands each bucket to the engine's worker through an IPC
handle, which the worker -- in vLLM's engine-core process, not this one -- opens and copies from.

On CPU the handle names a shared-memory file (``reduce_tensor`` under the ``file_system`` strategy); on GPU the same
code sends a CUDA IPC handle, which needs a GPU (not run here)."""

import pytest

from megatron_tulu.testing import python_wrapper, require_vllm

require_vllm(module_level=True)

from megatron_tulu.rollout.base import SamplingConfig
from tiny_llama import hf_greedy, hf_logprobs, load_reference, make_tiny_llama, perturbed_state, prompts_for_test

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600)]  # slow: a real vLLM engine starts


@pytest.mark.parametrize("front_end", ["here", "child_process"])
def test_colocated_vllm_engine_loads_weights_by_ipc_handle_rlvr(tmp_path, monkeypatch, front_end):
    """``child_process``: as in the project's image, this process cannot import vLLM and ``$MT_VLLM_PYTHON`` names
    the interpreter that can; the engine's front-end runs in a child process of it, and its worker still opens the
    IPC handles of this process's buckets."""
    from megatron_tulu.rollout import factory
    from megatron_tulu.rollout.colocated import ColocatedEngineGroup
    from megatron_tulu.rollout.engine_process import EngineProcess
    from megatron_tulu.rollout.factory import make_engine

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # the worker in a process of its own
    monkeypatch.delenv("MT_VLLM_PYTHON", raising=False)
    if front_end == "child_process":
        monkeypatch.setenv("MT_VLLM_PYTHON", python_wrapper(tmp_path / "vllm-python"))
        monkeypatch.setattr(factory, "vllm_available", lambda: False)
    model_dir = make_tiny_llama(tmp_path / "tiny")
    ref = load_reference(model_dir)
    group = make_engine("vllm", model_dir, placement="colocated", num_engines=1, dtype="float32",
                        kv_cache_memory_bytes=256 * 2**20, sync_bucket_bytes=16 * 1024, timeout_s=120)
    try:
        assert isinstance(group, ColocatedEngineGroup)
        assert isinstance(group.engines[0], EngineProcess) == (front_end == "child_process")
        prompts, greedy = prompts_for_test(4), SamplingConfig(temperature=0.0, max_new_tokens=8)
        group.generate(prompts, greedy)
        group.sleep()  # vLLM has no sleep mode on CPU: the calls are no-ops, their order is what the loop keeps
        group.wake()
        new = perturbed_state(ref, 0.05, seed=3)  # also loaded into ref
        group.update_weights(iter(new), metas=[(n, "float32", tuple(t.shape)) for n, t in new])  # streamed
        assert group._sync.members == {"broadcast": [], "ipc": [(0, 0)]}
        want = hf_greedy(ref, prompts, 8)
        gens = group.generate(prompts, greedy)
        assert [g.token_ids[0] for g in gens] == want
        ref_lp = hf_logprobs(ref, prompts, want)
        assert max(abs(a - b) for g, r in zip(gens, ref_lp) for a, b in zip(g.logprobs[0], r)) < 1e-4
        assert [e["call"] for e in group.events] == ["generate", "sleep", "wake", "update_weights", "generate"]
        assert group.events[3]["buckets"] > 4 and group.events[3]["ipc_workers"] == 1
    finally:
        group.shutdown()
