"""DAPO through the real RLVRDriver (TorchEngine, tiny model SFT'd on the arithmetic task; ``conftest.objective_runs``):
a step with dynamic sampling and the overlong buffer runs and logs its metrics, and a run stopped after a step
with refill rounds and resumed reproduces the uninterrupted one exactly: the saved prompt position is the one after
the refill rounds' draws."""

from __future__ import annotations

import pytest
from trainer_helpers import step_records

pytestmark = pytest.mark.slow

DS_KEYS = {"dynamic_sampling/groups_dropped", "dynamic_sampling/dropped_frac", "dynamic_sampling/extra_rounds",
           "dynamic_sampling/prompts_consumed", "dynamic_sampling/filled_groups", "reward/gen_accuracy",
           "reward/overlong_penalty_mean", "reward/overlong_frac", "loss", "reward/accuracy"}


def test_dapo_step_logs_dynamic_sampling_metrics(objective_runs):
    recs = step_records(objective_runs["root"] / "ds_ref")
    assert list(recs) == [1, 2, 3, 4]
    for step, r in recs.items():
        assert DS_KEYS <= set(r), f"step {step} lacks {sorted(DS_KEYS - set(r))}"
        generated = r["dynamic_sampling/prompts_consumed"]
        assert generated == 4 * (1 + r["dynamic_sampling/extra_rounds"]) and r["dynamic_sampling/extra_rounds"] <= 3
        assert r["dynamic_sampling/dropped_frac"] == pytest.approx(r["dynamic_sampling/groups_dropped"] / generated)
        # the batch trained is full: kept groups, plus fill only when the bound was reached
        kept = generated - r["dynamic_sampling/groups_dropped"]
        assert r["dynamic_sampling/filled_groups"] == max(0, 4 - kept)
        assert -1.0 <= r["reward/overlong_penalty_mean"] <= 0.0
    # reported once per run, this machine: how much the filter does on this task
    print({s: (r["dynamic_sampling/groups_dropped"], r["dynamic_sampling/extra_rounds"]) for s, r in recs.items()})


def test_resume_reproduces_the_prompt_stream_and_numbers(objective_runs):
    ref = step_records(objective_runs["root"] / "ds_ref")
    got = step_records(objective_runs["root"] / "ds_part")
    assert list(got) == [1, 2, 3, 4]
    keys = ["loss", "grad_norm", "reward/accuracy", "reward/gen_accuracy", "response_len",
            "dynamic_sampling/groups_dropped", "dynamic_sampling/extra_rounds", "dynamic_sampling/prompts_consumed",
            "reward/overlong_penalty_mean"]
    # the checkpoint the resume starts from (step 3) follows a step that drew refill prompts (else this tests little)
    assert ref[3]["dynamic_sampling/extra_rounds"] >= 1, ref[3]
    for step in (1, 2, 3, 4):
        for k in keys:
            assert got[step][k] == ref[step][k], f"step {step} {k}: resumed {got[step][k]!r} != {ref[step][k]!r}"
