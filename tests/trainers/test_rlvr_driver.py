"""RLVR driver end to end with TorchEngine (fp32, CPU), all runs in ONE single-rank launch:

  ``ppo``      PPO, 4 steps, checkpoints at 2 and 4 (the uninterrupted reference for resume);
  ``part``     the same config stopped by ``train.max_steps=2`` ...
  ``part``     ... then continued in the same run_dir to step 4 (``resume=auto``: policy, value model,
               optimizers, prompt position; the engine is rebuilt from the resumed weights);
  ``grpo``     GRPO (group of 2), 2 steps;
  ``async``    PPO with ``async_steps=2`` (up to two batches generated ahead), 4 steps;
  ``async_tis`` the same with truncated importance sampling (``rlvr.is_correction=tis``, cap ``rlvr.is_high=2``).

All start from the same tiny random HF Llama (the trainer tests' session fixture). LR is constant so the
stopped run sees the same LR schedule as the uninterrupted one.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlvr_helpers import make_tiny_reward_model, rlvr_overrides, rlvr_rank_jobs, step_records

pytestmark = pytest.mark.slow  # one launch running 11 RLVR trainings (minutes)

COMMON_KEYS = {
    "loss", "grad_norm", "lr", "clipfrac", "approx_kl", "mismatch/mean_abs_diff", "mismatch/kl",
    "reward/accuracy", "reward/score", "reward/eos_frac", "response_len",
    "time/generate_s", "time/train_s", "time/sync_s", "time/idle_s",
}
PPO_KEYS = COMMON_KEYS | {"value_loss", "reward/kl_token_mean", "reward/rlhf_reward_mean", "reward/non_eos_frac"}
# The per-step numbers that must be reproduced exactly after resume.
RESUME_KEYS = ["loss", "value_loss", "grad_norm", "reward/score", "reward/accuracy", "reward/eos_frac",
               "reward/rlhf_reward_mean", "response_len", "mismatch/mean_abs_diff"]


@pytest.fixture(scope="module")
def rlvr_runs(sft_data, tiny_hf, tmp_path_factory):
    from megatron_tulu.testing import run_distributed

    root = tmp_path_factory.mktemp("rlvr")

    def ov(name, **extra):
        return rlvr_overrides(sft_data, tiny_hf, root / name, **extra)

    jobs = [
        ("rlvr", ov("ppo", **{"train.max_steps": 4})),
        ("rlvr", ov("part", **{"train.max_steps": 2})),
        ("rlvr", ov("part", **{"train.max_steps": 4})),
        ("rlvr", ov("grpo", **{"rlvr.algorithm": "grpo", "rlvr.samples_per_prompt": 2, "train.global_batch_size": 2})),
        ("rlvr", ov("async", **{"rlvr.async_steps": 2, "train.max_steps": 4, "checkpoint.interval": 0})),
        ("rlvr", ov("async_tis", **{"rlvr.async_steps": 2, "rlvr.is_correction": "tis", "rlvr.is_high": 2.0, "train.max_steps": 4,
                                    "checkpoint.interval": 0})),
        ("broken_sync", ov("broken", **{"train.max_steps": 1})),
        ("value_init", ov("rm", **{"rlvr.value_init_hf": make_tiny_reward_model(root / "rm", tiny_hf)})),
        ("value_init", ov("rm_small", **{"rlvr.value_init_hf": make_tiny_reward_model(
            root / "rm_small", tiny_hf, hidden_size=64, num_layers=3)})),
        ("value_init", ov("rm_bad", **{"rlvr.value_init_hf": root / "rm_small", "rlvr.value_model": "tiny"})),
        ("value_init", ov("lm", **{"rlvr.value_init_hf": tiny_hf})),
        ("rlvr", ov("nokl", **{"rlvr.kl_coef": 0.0, "train.max_steps": 2, "checkpoint.interval": 0})),
    ]
    out = run_distributed(rlvr_rank_jobs, 1, args=(jobs,), timeout_s=900)[0]
    for (_, o), s in zip(jobs[:6] + jobs[11:], out[:6] + out[11:]):
        assert "error" not in s, f"run {o} failed:\n{s.get('traceback')}"
    names = ["ppo", "part1", "part2", "grpo", "async", "async_tis", "broken", "rm", "rm_small", "rm_bad", "lm", "nokl"]
    return {"root": root, "summaries": dict(zip(names, out))}


def test_post_sync_check_runs_every_step_and_stops_a_broken_sync(rlvr_runs):
    for name in ("ppo", "async"):  # after every sync the engine's greedy logprobs equal the trainer's (fp32)
        recs = step_records(rlvr_runs["root"] / name)
        assert all(r["sync/probe_max_abs_diff"] < 1e-4 for r in recs.values()), name
    broken = rlvr_runs["summaries"]["broken"]
    assert broken["ok"] < 1e-4
    assert broken["error"] is not None and broken["error"].startswith("WeightSyncMismatch: post-sync check"), broken


def _check_step_metrics(recs: dict, keys: set, steps: int):
    assert list(recs) == list(range(1, steps + 1))
    for step, r in recs.items():
        missing = keys - set(r)
        assert not missing, f"step {step} lacks {sorted(missing)}"
        for k in keys:
            assert math.isfinite(r[k]), f"step {step}: {k}={r[k]}"
        # fp32 TorchEngine vs fp32 megatron trainer after every weight sync
        assert r["mismatch/mean_abs_diff"] < 1e-4, (step, r["mismatch/mean_abs_diff"])
        assert abs(r["mismatch/kl"]) < 1e-4
        assert 0.0 <= r["reward/accuracy"] <= 1.0 and 0.0 <= r["reward/eos_frac"] <= 1.0
        assert 0 < r["response_len"] <= 16


def test_ppo_metrics_and_checkpoints(rlvr_runs):
    run = rlvr_runs["root"] / "ppo"
    recs = step_records(run)
    _check_step_metrics(recs, PPO_KEYS, 4)
    # the policy and the value model both train: their weights move, so the losses and grad norms are not zero
    assert all(r["grad_norm"] > 0 for r in recs.values())
    assert all(r["value_loss"] > 0 for r in recs.values())
    for root in ("checkpoints", "checkpoints_value"):
        for step in (2, 4):
            d = run / root / f"step_{step:08d}"
            assert d.is_dir() and any(d.iterdir()), f"missing {d}"
    assert rlvr_runs["summaries"]["ppo"]["steps"] == 4


def test_grpo_metrics_and_no_value_model(rlvr_runs):
    run = rlvr_runs["root"] / "grpo"
    recs = step_records(run)
    _check_step_metrics(recs, COMMON_KEYS, 2)
    assert "value_loss" not in recs[1]
    # 2 prompts x group of 2: response_len is the mean over the 4 rows
    assert (run / "checkpoints" / "step_00000002").is_dir()
    assert not (run / "checkpoints_value").exists()


def test_async_generation_runs(rlvr_runs):
    recs = step_records(rlvr_runs["root"] / "async")
    assert list(recs) == [1, 2, 3, 4]
    for step, r in recs.items():
        assert COMMON_KEYS - set(r) == set(), step
        assert math.isfinite(r["loss"]) and math.isfinite(r["value_loss"])
    # step 1 is generated before any update (on-policy: the mismatch measures the weight sync) ...
    assert recs[1]["mismatch/policy_lag"] == 0 and recs[1]["mismatch/mean_abs_diff"] < 1e-4
    # ... while it trains, batches 2 and 3 are generated with the same weights; from then on one batch per step is
    # generated ahead, so every later batch is exactly async_steps=2 updates old (deterministic, not timing-bound)
    assert [recs[s]["mismatch/policy_lag"] for s in (2, 3, 4)] == [1, 2, 2]
    assert [recs[s]["rollout/queue_depth"] for s in (1, 2, 3, 4)] == [2, 2, 1, 0]  # bounded by k, drained at the end
    for step in (2, 3, 4):  # off-policy batches: the logged mismatch is the policy's drift and cannot be ~0
        assert recs[step]["mismatch/mean_abs_diff"] > 1e-4


def test_truncated_importance_sampling(rlvr_runs):
    """On-policy (step 1, fp32 TorchEngine = the trainer's numerics) every weight is 1 and the step equals the plain
    async run's; on the off-policy batches (steps 2-4) the weights move away from 1 within the cap and change the
    update (the step-2 batch is the same in both runs, since their step-1 updates were)."""
    plain, tis = step_records(rlvr_runs["root"] / "async"), step_records(rlvr_runs["root"] / "async_tis")
    assert list(tis) == [1, 2, 3, 4]
    assert abs(tis[1]["mismatch/is_weight_mean"] - 1.0) < 1e-3 and tis[1]["mismatch/is_clipped_frac"] == 0.0
    for key in ("loss", "value_loss", "grad_norm"):
        assert abs(tis[1][key] - plain[1][key]) <= 1e-5 * max(1.0, abs(plain[1][key])), key
    assert tis[2]["reward/score"] == plain[2]["reward/score"] and tis[2]["response_len"] == plain[2]["response_len"]
    for step in (2, 3, 4):
        assert tis[step]["mismatch/policy_lag"] > 0
        w = tis[step]["mismatch/is_weight_mean"]
        assert 1e-4 < abs(w - 1.0) and 0 < w <= 2.0, step
    assert abs(tis[2]["loss"] - plain[2]["loss"]) > 1e-6 * max(1.0, abs(plain[2]["loss"]))


def test_resume_reproduces_uninterrupted_run(rlvr_runs):
    ref = step_records(rlvr_runs["root"] / "ppo")
    got = step_records(rlvr_runs["root"] / "part")
    assert rlvr_runs["summaries"]["part1"]["steps"] == 2 and rlvr_runs["summaries"]["part2"]["steps"] == 4
    assert list(got) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for k in RESUME_KEYS:
            assert got[step][k] == ref[step][k], f"step {step} {k}: resumed {got[step][k]!r} != reference {ref[step][k]!r}"


def _hf_values(rm_dir, ids):
    """Per-token values of an HF reward model: ``score`` over every position's last hidden state."""
    from transformers import LlamaForSequenceClassification

    rm = LlamaForSequenceClassification.from_pretrained(str(rm_dir)).eval()
    with torch.no_grad():
        return rm.score(rm.model(input_ids=ids).last_hidden_state).squeeze(-1)


@pytest.mark.parametrize("name", ["rm", "rm_small"])
def test_value_model_starts_from_a_reward_model(rlvr_runs, name):
    """``rlvr.value_init_hf``: the value model is the reward model (backbone + ``score`` head), so its per-token
    values equal transformers' ``score(hidden_states)`` of that checkpoint: one of the policy's shape (``rm``) and
    a smaller one (``rm_small``: 3 layers, hidden 64, beside the 4-layer, 128-wide policy), whose shape the value
    model takes, as Tülu 3's 8B value model beside the 70B/405B policy."""
    got = rlvr_runs["summaries"][name]
    assert "error" not in got, got
    want = _hf_values(rlvr_runs["root"] / name, got["input_ids"])
    assert got["values"].shape == want.shape
    assert torch.allclose(got["values"], want, atol=1e-4), (got["values"] - want).abs().max()
    assert want.abs().max() > 1e-2  # a real head: the zero-head default would give 0 everywhere


def test_value_model_from_a_causal_lm_has_a_zero_head(rlvr_runs):
    """A causal LM (no ``score.weight``) as ``value_init_hf``: its backbone under a zero value head."""
    got = rlvr_runs["summaries"]["lm"]
    assert "error" not in got, got
    assert got["values"].shape == got["input_ids"].shape and torch.count_nonzero(got["values"]) == 0


def test_value_model_shape_conflicts_are_refused(rlvr_runs):
    bad = rlvr_runs["summaries"]["rm_bad"]["error"]
    assert "rlvr.value_init_hf" in bad and "rlvr.value_model='tiny'" in bad and "hidden_size" in bad, bad


def test_kl_coef_zero_loads_no_reference_and_trains(rlvr_runs):
    """rlvr.kl_coef=0: no reference model is built (RLVROptions.needs_reference), the policy stands in for it, so the
    KL is exactly 0 on every step (with a reference it is not 0 once the policy has moved), and PPO still steps."""
    recs = step_records(rlvr_runs["root"] / "nokl")
    assert sorted(recs) == [1, 2]
    for r in recs.values():
        assert r["reward/kl_token_mean"] == 0.0 and r["reward/kl_seq_mean"] == 0.0
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0
    ppo = step_records(rlvr_runs["root"] / "ppo")
    assert ppo[1]["reward/kl_token_mean"] != 0.0 or ppo[2]["reward/kl_token_mean"] != 0.0  # the KL-ful run has one
