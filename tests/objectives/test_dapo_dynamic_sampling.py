"""DAPO dynamic sampling (Yu et al. 2025, §3.2): the group filter on hand-made rewards, the refill loop with a fake
generator (bound, partial-batch fill, metrics, determinism, the no-signal error), and the config rules. The
driver run (real RLVRDriver + TorchEngine, resume) is ``test_dapo_dynamic_sampling_driver.py`` (slow)."""

import pytest
import torch

from megatron_tulu.algorithms import groups_with_signal
from megatron_tulu.config import load_config
from megatron_tulu.trainers.rlvr import RLVRConfig
from megatron_tulu.trainers.rlvr.dynamic_sampling import collect_groups

K = 4


def test_group_filter_on_hand_made_rewards():
    rewards = torch.tensor([0, 0, 0, 0,        # all wrong: dropped
                            1, 1, 1, 1,        # all right: dropped
                            1, 0, 0, 0,        # mixed: kept
                            -10, -10, -10, -10,  # all truncated (non-EOS penalty): dropped
                            0.5, 0.5, 0.5, 0.25,  # length-shaped difference only: kept
                            10, 10, 10, 10], dtype=torch.float32)
    assert groups_with_signal(rewards, K).tolist() == [False, False, True, False, True, False]
    assert groups_with_signal(torch.tensor([0.0, 1.0, 1.0, 1.0]), 2).tolist() == [True, False]
    with pytest.raises(ValueError, match="groups of 5"):
        groups_with_signal(rewards, 5)
    with pytest.raises(ValueError, match="K >= 2"):
        groups_with_signal(rewards, 1)


def _batch(tag: str, patterns: list[list[int]]) -> dict:
    """A fake rollout batch: one group per pattern of K verdicts; prompts tagged (tag, group) to check order."""
    out = {"prompts": [], "responses": [], "rollout_logp": [], "eos": [], "correct": [], "timeouts": 1,
           "gen_s": 0.5, "version": 0, "by_dataset": {"gsm8k": [sum(map(sum, patterns)), K * len(patterns)]}}
    for g, p in enumerate(patterns):
        for s, c in enumerate(p):
            out["prompts"].append([tag, g])
            out["responses"].append([7] * (s + 1))
            out["rollout_logp"].append([-0.1] * (s + 1))
            out["eos"].append(True)
            out["correct"].append(c)
    return out


def _rewards(batch):
    return torch.tensor(batch["correct"], dtype=torch.float32) * 10


MIXED, ZERO, ONE = [1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]


def _collect(rounds: dict, target: int, max_extra: int):
    calls = []

    def more(r):
        calls.append(r)
        return rounds[r]
    batch, metrics = collect_groups(rounds[0], more, _rewards, K, target, max_extra)
    return batch, metrics, calls


def test_refill_until_the_batch_is_full_keeps_order_and_discards_surplus():
    rounds = {0: _batch("a", [MIXED, ZERO, ONE, MIXED]),      # 2 kept of 4
              1: _batch("b", [ZERO, MIXED, ZERO, ZERO]),      # 1 kept -> 3
              2: _batch("c", [MIXED, MIXED, ONE, MIXED]),     # 3 kept -> 6 >= 4: stop, 2 surplus discarded
              3: _batch("d", [MIXED] * 4)}
    batch, m, calls = _collect(rounds, target=4, max_extra=3)
    assert calls == [1, 2]  # stops as soon as the batch is full
    groups = [tuple(batch["prompts"][i]) for i in range(0, len(batch["prompts"]), K)]
    assert groups == [("a", 0), ("a", 3), ("b", 1), ("c", 0)]  # generation order
    assert len(batch["correct"]) == 4 * K and batch["correct"][:K] == MIXED
    assert m == {"dynamic_sampling/groups_dropped": 6.0, "dynamic_sampling/dropped_frac": 0.5,
                 "dynamic_sampling/extra_rounds": 2.0, "dynamic_sampling/prompts_consumed": 12.0,
                 "dynamic_sampling/filled_groups": 0.0, "reward/gen_accuracy": pytest.approx(20 / 48)}
    assert batch["timeouts"] == 3 and batch["gen_s"] == pytest.approx(1.5)
    assert batch["by_dataset"] == {"gsm8k": [20, 48]}  # every response generated, kept or not
    again, m2, _ = _collect(rounds, target=4, max_extra=3)
    assert again == batch and m2 == m  # deterministic


def test_a_full_first_batch_generates_nothing_more():
    rounds = {0: _batch("a", [MIXED] * 3)}
    batch, m, calls = _collect(rounds, target=3, max_extra=3)
    assert calls == [] and batch["prompts"] == rounds[0]["prompts"] and m["dynamic_sampling/extra_rounds"] == 0


def test_bound_reached_fills_with_dropped_groups_in_order():
    rounds = {0: _batch("a", [ZERO, MIXED, ONE, ZERO]), 1: _batch("b", [ONE, ZERO, ZERO, ZERO]),
              2: _batch("c", [MIXED] * 4)}
    batch, m, calls = _collect(rounds, target=4, max_extra=1)
    assert calls == [1]  # the bound: one extra round, round 2 never generated
    groups = [tuple(batch["prompts"][i]) for i in range(0, len(batch["prompts"]), K)]
    assert groups == [("a", 1), ("a", 0), ("a", 2), ("a", 3)]  # the kept group, then dropped ones in order
    assert m["dynamic_sampling/filled_groups"] == 3.0 and m["dynamic_sampling/groups_dropped"] == 7.0
    assert m["dynamic_sampling/prompts_consumed"] == 8.0 and m["dynamic_sampling/extra_rounds"] == 1.0
    # max_batches=0: filter only, never generate more
    batch, m, calls = _collect(rounds, target=4, max_extra=0)
    assert calls == [] and m["dynamic_sampling/filled_groups"] == 3.0


def test_no_group_with_a_signal_raises_naming_the_fields():
    rounds = {0: _batch("a", [ZERO, ONE]), 1: _batch("b", [ZERO, ZERO]), 2: _batch("c", [ONE, ONE])}
    with pytest.raises(RuntimeError, match=r"all 6 prompt groups generated in 3 rounds .*"
                                           r"rlvr.dynamic_sampling_max_batches=2.*rlvr.dynamic_sampling=false"):
        _collect(rounds, target=2, max_extra=2)


def test_config_on_in_dapo_only_settable_alone_and_validated():
    def opts(*ov):
        return load_config(RLVRConfig, "rlvr/tiny", list(ov)).rlvr

    assert opts("rlvr.algorithm=dapo", "rlvr.samples_per_prompt=2").part("dynamic_sampling")
    assert not opts("rlvr.algorithm=dapo", "rlvr.samples_per_prompt=2",
                    "rlvr.dynamic_sampling=false").part("dynamic_sampling")
    o = opts("rlvr.algorithm=grpo", "rlvr.samples_per_prompt=2")
    assert not o.part("dynamic_sampling") and o.dynamic_sampling_max_batches == 3
    assert opts("rlvr.algorithm=grpo", "rlvr.samples_per_prompt=2", "rlvr.dynamic_sampling=true").part(
        "dynamic_sampling")
    with pytest.raises(ValueError, match="rlvr.dynamic_sampling needs rlvr.samples_per_prompt >= 2"):
        opts("rlvr.dynamic_sampling=true")  # ppo, one sample per prompt
    with pytest.raises(ValueError, match=r"rlvr.dynamic_sampling \(on in the dapo preset.*needs rlvr.async_steps=0"):
        opts("rlvr.algorithm=dapo", "rlvr.samples_per_prompt=2", "rlvr.async_steps=1")
    assert not opts("rlvr.algorithm=dapo", "rlvr.samples_per_prompt=2", "rlvr.async_steps=1",
                    "rlvr.dynamic_sampling=false").part("dynamic_sampling")
    with pytest.raises(ValueError, match="rlvr.dynamic_sampling_max_batches must be >= 0"):
        opts("rlvr.algorithm=dapo", "rlvr.samples_per_prompt=2", "rlvr.dynamic_sampling_max_batches=-1")
