"""The issue's acceptance test: on the tiny model the verifier reward rises over a few dozen RLVR steps, for
PPO and GRPO, PPO also with asynchronous generation (one batch ahead, as open-instruct) and two batches ahead
with truncated importance sampling (``rlvr.is_correction=tis``). The SFT that makes the starting policy takes 80
examples per step (SFT counts examples since issue 23; the ~8 packed rows a step held before).

Honest small setup (``rlvr_helpers.make_arith_data``): 8 addition prompts, gsm8k verifier. The starting policy
is the tiny random Llama after 40 SFT steps on answers that are right only 3 times in 10 (the rest are near
misses), so it answers in the right format, ends with EOS, and solves ~5-15% of samples; RL must find the
right answers among its own samples. Every run is seeded, so the numbers are reproducible; the threshold (+0.08)
sits well below the measured gains (2026-11-25, this machine, mean accuracy over the first / last 8 of 40 steps:
PPO 0.05 -> 0.37, GRPO 0.16 -> 0.33, GRPO async 0.15 -> 0.32; 2026-11-30: PPO two batches ahead 0.098 -> 0.129
without TIS, 0.094 -> 0.336 with ``is_correction=tis``, ``is_high=2``). ~6 min on the shared 2 cores.
"""

from __future__ import annotations

import pytest

from rlvr_helpers import make_arith_data, rlvr_overrides, run_rlvr_jobs, step_records
from trainer_helpers import base_overrides

pytestmark = pytest.mark.slow

STEPS = 40
WINDOW = 8


@pytest.fixture(scope="module")
def learning_runs(sft_data, tiny_hf, tmp_path_factory):
    root = tmp_path_factory.mktemp("rlvr_learn")
    data = make_arith_data(sft_data, root / "data")
    sft_run = root / "sft"
    # 80 examples per SFT step: the ~8 packed 256-token rows a step held when the batch counted rows (SFT now counts
    # examples, as Tülu 3); with 8 examples per step the policy barely learns the answer format in 40 steps
    sft = base_overrides(data, sft_run, **{"model.init_hf": tiny_hf, "train.max_steps": 40, "checkpoint.interval": 0,
                                           "checkpoint.export_hf": "true", "train.global_batch_size": 80})
    common = {"train.max_steps": STEPS, "checkpoint.interval": 0, "rlvr.max_new_tokens": 12}
    # 32 responses per step for both. GRPO needs a big group (8) at this low starting accuracy, or most groups
    # are all-wrong and carry no signal; its per-group std normalisation gives larger steps than PPO's batch
    # whitening, hence its lower LR (2e-4 made GRPO's accuracy wander; 1e-4 was too slow for PPO)
    grpo = {"rlvr.algorithm": "grpo", "rlvr.samples_per_prompt": 8, "train.global_batch_size": 4,
            "train.micro_batch_size": 4, "optim.lr": "1e-4"}
    ppo = {"rlvr.samples_per_prompt": 2, "train.global_batch_size": 16, "train.micro_batch_size": 4, "optim.lr": "2e-4"}
    # (GRPO one step ahead was a sixth run; async generation is the same code for both algorithms and is covered by
    # the two PPO async runs, and make test's budget is tight: dropped)
    runs = {"ppo": ppo, "ppo_async": {**ppo, "rlvr.async_steps": 1}, "grpo": grpo,
            "ppo_async2_tis": {**ppo, "rlvr.async_steps": 2, "rlvr.is_correction": "tis", "rlvr.is_high": 2.0}}
    jobs = [("sft", sft)] + [("rlvr", rlvr_overrides(data, sft_run / "hf", root / n, **common, **o)) for n, o in runs.items()]
    run_rlvr_jobs(1, jobs, timeout_s=1200)
    return {n: step_records(root / n) for n in runs}


def _acc(recs, steps):
    return sum(recs[s]["reward/accuracy"] for s in steps) / len(steps)


@pytest.mark.parametrize("name", ["ppo", "ppo_async", "grpo", "ppo_async2_tis"])
def test_verifier_reward_rises(learning_runs, name):
    recs = learning_runs[name]
    assert list(recs) == list(range(1, STEPS + 1))
    first = _acc(recs, range(1, WINDOW + 1))
    last = _acc(recs, range(STEPS - WINDOW + 1, STEPS + 1))
    assert last >= first + 0.08, f"{name}: accuracy first {WINDOW} steps {first:.3f}, last {WINDOW} {last:.3f}"
    # the gain is not bought by dropping EOS (which the -10 penalty would punish anyway). Judged over the same last
    # window (256 responses), not the last step alone (32): on 2026-12-06's machine PPO's step 40 had 27/32 with EOS,
    # before and after that day's changes alike, while its last 8 steps averaged 0.96
    eos = sum(recs[s]["reward/eos_frac"] for s in range(STEPS - WINDOW + 1, STEPS + 1)) / WINDOW
    assert eos >= 0.9, f"{name}: EOS fraction over the last {WINDOW} steps {eos:.3f}"
