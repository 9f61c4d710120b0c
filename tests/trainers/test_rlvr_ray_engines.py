"""Rollout engines as Ray actors in a placement group (``rollout.ray_engines.RayEngineGroup``), on CPU with
TorchEngine: two engine actors give exactly the samples of one in-process engine, before and after a weight
update pushed through the group."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Ray start-up plus two engine actors cost ~1-2 min on the shared 2 cores: outside the default budget
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    repo = str(Path(__file__).resolve().parents[2])  # the actors import megatron_tulu from this checkout
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": repo}})
    yield ray
    ray.shutdown()


def test_ray_engine_group_matches_local_engine(ray_local, tiny_hf):
    from megatron_tulu.rollout.base import SamplingConfig
    from megatron_tulu.rollout.torch_engine import TorchEngine
    from megatron_tulu.rollout.ray_engines import RayEngineGroup

    prompts = [[1, 5, 9, 13], [2, 4], [7, 7, 7], [3, 30, 300, 100, 10]]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=6, n=2, seed=11)
    local = TorchEngine(tiny_hf)
    group = RayEngineGroup("torch", tiny_hf, num_engines=2, engine_tp=1, timeout_s=300)
    try:
        # placement: one CPU bundle per engine, both engines scheduled in it
        assert len(group.actors) == 2 and group.pg.bundle_count == 2
        want, got = local.generate(prompts, sampling), group.generate(prompts, sampling)
        assert [g.prompt_index for g in got] == [0, 1, 2, 3]
        assert [g.token_ids for g in got] == [g.token_ids for g in want]
        for a, b in zip(got, want):
            assert torch.allclose(torch.tensor(sum(a.logprobs, [])), torch.tensor(sum(b.logprobs, [])), atol=1e-5)
        # a weight update through the group reaches every engine: outputs follow the new weights
        g = torch.Generator().manual_seed(0)
        named = [(k, v + 0.05 * torch.randn(v.shape, generator=g)) for k, v in local.model.named_parameters()
                 if k.endswith("mlp.down_proj.weight")]
        local.update_weights(named)
        group.update_weights(named)
        want2, got2 = local.generate(prompts, sampling), group.generate(prompts, sampling)
        assert [g.token_ids for g in got2] == [g.token_ids for g in want2]
        assert [g.token_ids for g in want2] != [g.token_ids for g in want]  # the update did change the samples
    finally:
        group.shutdown()


def test_engine_actors_run_under_the_given_python(ray_local, tiny_hf, tmp_path):
    """``python_executable`` (the container's ``$MT_VLLM_PYTHON``: vLLM's own environment) is the interpreter of
    the engine actors: a wrapper interpreter that marks its environment is the one the actor runs under."""
    import os

    from megatron_tulu.rollout.base import SamplingConfig
    from megatron_tulu.rollout.ray_engines import RayEngineGroup
    from megatron_tulu.testing import python_wrapper

    wrapper = python_wrapper(tmp_path / "engine-python", "export MT_ENGINE_PYTHON_MARK=engine-env")
    group = RayEngineGroup("torch", tiny_hf, num_engines=1, timeout_s=300, python_executable=wrapper)
    try:
        env = ray_local.get(group.actors[0].__ray_call__.remote(lambda self: os.environ.get("MT_ENGINE_PYTHON_MARK")),
                            timeout=120)
        assert env == "engine-env"
        out = group.generate([[1, 2, 3]], SamplingConfig(temperature=0.0, max_new_tokens=3))
        assert len(out[0].token_ids[0]) == 3
    finally:
        group.shutdown()


def test_shutdown_after_a_timed_out_generation_returns_and_kills_the_actors(ray_local, tiny_hf):
    """A generation past ``timeout_s`` leaves the actor busy with it (an actor takes one call at a time): the group's
    shutdown then waits a bounded time, logs instead of raising (the timeout is the error to report), and kills the
    actors. It used to raise its own ``EngineRPCTimeout``, replacing the first in the driver's message."""
    import time

    from megatron_tulu.rollout.base import EngineRPCTimeout, SamplingConfig
    from megatron_tulu.rollout.ray_engines import RayEngineGroup

    group = RayEngineGroup("torch", tiny_hf, num_engines=1, engine_tp=1, timeout_s=60)
    actor = group.actors[0]
    group.timeout_s = 1.0  # started; now every call is bounded by 1 s
    long = SamplingConfig(temperature=1.0, max_new_tokens=900, n=8, seed=0)
    with pytest.raises(EngineRPCTimeout, match="generate: no answer within 1s"):
        group.generate([[1, 2, 3, 4]] * 64, long)  # minutes of decoding on CPU
    t0 = time.monotonic()
    group.shutdown()  # no exception
    assert time.monotonic() - t0 < 20 and group.actors == []
    with pytest.raises(ray_local.exceptions.RayActorError):
        ray_local.get(actor.num_workers.remote(), timeout=30)  # killed, not left decoding
