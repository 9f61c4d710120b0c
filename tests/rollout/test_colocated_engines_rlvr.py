"""``rlvr.engine_placement=colocated`` (issue 24), fast parts: the placement's validation names the fields, the
prompt split over the colocated engines samples what one engine does, and the engine group records its
generate/sleep/wake/update_weights calls in order (the RLVR loop's turn-taking, observable on CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_tulu.rollout.base import SamplingConfig, prompt_chunks
from megatron_tulu.rollout.colocated import ColocatedEngineGroup, colocated_num_engines
from megatron_tulu.rollout.torch_engine import TorchEngine
from tiny_llama import make_tiny_llama, perturbed_state, prompts_for_test

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama_colocated"))


def test_colocated_placement_validation_names_the_fields_rlvr(tmp_path):
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.rlvr import RLVRConfig

    with pytest.raises(ValueError, match=r"rlvr.engine_placement=colocated needs rlvr.async_steps=0 \(got 1\)"):
        load_config(RLVRConfig, "rlvr/tiny", [f"run_dir={tmp_path}", "rlvr.engine_placement=colocated",
                                              "rlvr.async_steps=1"])
    cfg = load_config(RLVRConfig, "rlvr/tiny", [f"run_dir={tmp_path}", "rlvr.engine_placement=colocated",
                                                "rlvr.num_engines=2"])
    assert cfg.rlvr.engine_placement == "colocated"
    # the world checks (the driver runs them on every rank at engine start)
    assert colocated_num_engines(4, 2) == colocated_num_engines(4, 2, num_engines=2) == 2
    assert colocated_num_engines(2, 1) == 2 and colocated_num_engines(8, 8) == 1
    with pytest.raises(ValueError, match=r"rlvr.engine_tp=2 must divide the trainer's world of 3 ranks"):
        colocated_num_engines(3, 2)
    with pytest.raises(ValueError, match=r"rlvr.num_engines=3.*rlvr.engine_tp=2 make 2 engines"):
        colocated_num_engines(4, 2, num_engines=3)


def test_colocated_prompt_split_samples_what_one_engine_does_rlvr(model_dir):
    assert prompt_chunks(5, 2) == [(0, 3), (3, 5)] and prompt_chunks(1, 2) == [(0, 1)]
    one = TorchEngine(model_dir)
    group = ColocatedEngineGroup([TorchEngine(model_dir), TorchEngine(model_dir)])
    prompts = prompts_for_test(5, seed=3)
    s = SamplingConfig(temperature=1.0, max_new_tokens=6, n=2, seed=17)
    want, got = one.generate(prompts, s), group.generate(prompts, s)
    assert [g.prompt_index for g in got] == [0, 1, 2, 3, 4]
    assert [g.token_ids for g in got] == [g.token_ids for g in want]
    assert [g.logprobs for g in got] == [g.logprobs for g in want]
    assert group.events[-1]["chunks"] == [[0, 3], [3, 5]]
    group.shutdown()


def test_colocated_group_records_the_turn_taking_order_rlvr(model_dir, tmp_path):
    from megatron_tulu.rollout.factory import make_engine

    log = tmp_path / "engine_events.jsonl"
    group = make_engine("torch", model_dir, placement="colocated", num_engines=2, events_path=log)
    assert isinstance(group, ColocatedEngineGroup) and len(group.engines) == 2
    prompts = prompts_for_test(3, seed=4)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=5)
    before = group.generate(prompts, greedy)
    group.sleep()
    with pytest.raises(RuntimeError, match="engines sleep"):  # no generation and no sync on a sleeping engine
        group.generate(prompts, greedy)
    with pytest.raises(RuntimeError, match="engines sleep"):
        group.update_weights([])
    group.wake()
    ref = TorchEngine(model_dir)
    new = perturbed_state(ref.model, 0.05, seed=9)  # also loaded into ref
    group.update_weights(iter(new))
    after = group.generate(prompts, greedy)
    assert [g.token_ids for g in after] == [g.token_ids for g in ref.generate(prompts, greedy)]
    assert [g.token_ids for g in after] != [g.token_ids for g in before]
    for e in group.engines:  # every engine got the whole update
        params = dict(e.model.named_parameters())
        assert all(torch.equal(params[n], t) for n, t in new)
    calls = ["generate", "sleep", "wake", "update_weights", "generate"]
    assert [ev["call"] for ev in group.events] == calls
    assert [json.loads(line)["call"] for line in log.read_text().splitlines()] == calls
    group.shutdown()
    group.shutdown()  # twice is fine
