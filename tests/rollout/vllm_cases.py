"""Real-vLLM test bodies shared by the TP=1 and TP=2 modules (each module starts ONE engine, fp32).

Collected through ``from vllm_cases import *`` in ``test_vllm_engine_tp*.py``; each module provides the
``engine``, ``model_dir`` and ``ref`` fixtures. Order matters only in that tests leave the engine holding
the reference's current weights (every test that changes weights updates ``ref`` the same way).
"""

import time

import pytest
import torch

from megatron_tulu.rollout.base import SamplingConfig
from megatron_tulu.rollout.weight_sync import (
    WeightSyncGroup,
    WeightSyncTimeout,
    WeightSyncValidationError,
    check_probe_logprobs,
)
from tiny_llama import hf_greedy, hf_logprobs, perturbed_state, prompts_for_test

PROMPTS = prompts_for_test(6)
NEW = 12
ATOL = 1e-4


def _greedy(engine):
    return engine.generate(PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=NEW))


def assert_matches_reference(engine, ref):
    want = hf_greedy(ref, PROMPTS, NEW)
    gens = _greedy(engine)
    assert [g.token_ids[0] for g in gens] == want
    ref_lp = hf_logprobs(ref, PROMPTS, want)
    worst = max(abs(a - b) for g, r in zip(gens, ref_lp) for a, b in zip(g.logprobs[0], r))
    assert worst < ATOL, worst
    return want


def test_greedy_tokens_and_logprobs_match_transformers(engine, ref):
    assert_matches_reference(engine, ref)


def test_sampled_logprobs_are_at_the_temperature_and_seeded(engine, ref):
    s = SamplingConfig(temperature=0.8, max_new_tokens=8, n=2, seed=7)
    a, b = engine.generate(PROMPTS[:3], s), engine.generate(PROMPTS[:3], s)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    for i, g in enumerate(a):
        assert len(g.token_ids) == 2 and g.finish_reasons == ["length", "length"]
        for toks, lps in zip(g.token_ids, g.logprobs):
            with torch.no_grad():
                logits = ref(input_ids=torch.tensor([PROMPTS[i] + toks])).logits[0, len(PROMPTS[i]) - 1 : -1]
            want = torch.log_softmax(logits / 0.8, -1).gather(-1, torch.tensor(toks)[:, None])[:, 0]
            assert torch.allclose(torch.tensor(lps), want, atol=ATOL)


def test_seeded_sampling_of_more_prompt_tokens_than_one_engine_step(engine):
    # 128 prompts x 40 tokens > one step's token budget: vLLM splits a prefill across steps, and for a seeded
    # request its CPU build then rewound a CPU generator and killed the engine ("CPU Generator does not use
    # offset") -- what an RLVR batch of n samples per prompt does. The engine must stay up and stay seeded.
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 300, (40,), generator=g).tolist() for _ in range(128)]
    s = SamplingConfig(temperature=1.0, max_new_tokens=3, n=2, seed=11)
    a, b = engine.generate(prompts, s), engine.generate(prompts, s)
    assert len(a) == 128 and all(len(x.token_ids) == 2 and len(x.token_ids[0]) == 3 for x in a)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]


def test_stop_token_ends_the_sample(engine):
    full = _greedy(engine)[0].token_ids[0]
    stop = full[4]
    g = engine.generate(PROMPTS[:1], SamplingConfig(temperature=0.0, max_new_tokens=NEW, stop_token_ids=[stop]))[0]
    assert g.token_ids[0] == full[: full.index(stop) + 1] and g.finish_reasons == ["stop"]


@pytest.fixture(scope="module")
def sync_group(engine):
    group = WeightSyncGroup([engine], bucket_bytes=64 * 1024, timeout_s=30.0)  # small buckets: several per sync
    group.connect()
    yield group
    group.close()


def test_bucketed_broadcast_sync_then_repeated_syncs(engine, ref, sync_group, record_property):
    before = [g.token_ids[0] for g in _greedy(engine)]  # also fills the prefix cache with old-weight KV
    for step in range(3):
        items = perturbed_state(ref, scale=0.05, seed=100 + step)
        stats = sync_group.sync(items)
        assert stats.buckets >= 4 and stats.tensors == len(items) and stats.metadata_sent == (step == 0)
        want = assert_matches_reference(engine, ref)
        if step == 0:
            assert want != before  # the new weights change the greedy outputs
        record_property(f"sync{step}", f"{stats.bytes} B in {stats.buckets} buckets, {stats.seconds:.3f} s")
    worst = check_probe_logprobs(engine, lambda p, r: hf_logprobs(ref, p, r), PROMPTS[:2], atol=ATOL)
    assert worst < ATOL


def test_validation_failure_refuses_before_loading_and_engine_survives(engine, ref, sync_group):
    good = [(n, p.detach().clone()) for n, p in ref.named_parameters()]
    bad_shape = [(n, t[:-1] if n == "model.norm.weight" else t) for n, t in good]
    with pytest.raises(WeightSyncValidationError, match=r"model.norm.weight: shape \(63,\) != expected \(64,\)"):
        sync_group.sync(bad_shape)
    with pytest.raises(WeightSyncValidationError, match="model.layers.9.mlp.up_proj.weight: unknown parameter name"):
        sync_group.sync(good + [("model.layers.9.mlp.up_proj.weight", torch.zeros(128, 64))])
    assert_matches_reference(engine, ref)  # still alive, still the old weights
    sync_group.sync(perturbed_state(ref, scale=0.05, seed=200))  # and still syncable
    assert_matches_reference(engine, ref)


def test_in_process_update_weights(engine, ref):
    engine.update_weights(perturbed_state(ref, scale=0.05, seed=300))
    assert_matches_reference(engine, ref)
    with pytest.raises(ValueError, match="unknown parameter name"):
        engine.update_weights([(n, p.detach().clone()) for n, p in ref.named_parameters()] + [("bogus.weight", torch.zeros(2))])
    assert_matches_reference(engine, ref)


def test_worker_that_never_joins_times_out(engine, ref):
    group = WeightSyncGroup([engine], timeout_s=3.0)
    group.world_size += 1  # one rank that nobody will ever play
    t0 = time.perf_counter()
    with pytest.raises(WeightSyncTimeout):
        group.connect()
    assert time.perf_counter() - t0 < 30
    assert_matches_reference(engine, ref)  # the engine's workers gave up cleanly
