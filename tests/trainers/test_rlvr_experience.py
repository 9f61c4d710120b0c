"""``Experience``: rollout rows -> flat response tokens -> rewards -> advantages, by the algorithm's registered
parts (pure: no model, no process group), and the policy task's use of the registered loss."""

from __future__ import annotations

import types

import pytest
import torch

from megatron_tulu.config import load_config
from megatron_tulu.losses.kl import kl_estimate
from megatron_tulu.trainers.rlvr import RLVRConfig
from megatron_tulu.trainers.rlvr.experience import Experience, make_experience, response_rows

PROMPTS = [[5, 6], [5, 6], [7, 8, 9], [7, 8, 9]]
RESPONSES = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19]]


def _opts(*overrides):
    return load_config(RLVRConfig, "rlvr/tiny", list(overrides)).rlvr


def _rows():
    ids, targets, mask = response_rows(PROMPTS, RESPONSES, pad_id=0)
    return Experience.rows(ids, targets, mask)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = _rows().mask.shape
    return dict(scores=torch.tensor([10.0, 0.0, 10.0, 10.0]), eos=torch.tensor([True, True, True, False]),
                old_logp=-torch.rand(shape, generator=g), ref_logp=-torch.rand(shape, generator=g),
                rollout_logp=-torch.rand(shape, generator=g), old_values=torch.randn(shape, generator=g))


def test_rows_flatten_to_response_tokens_and_microbatches_slice_them():
    exp = _rows()
    assert exp.seq_idx.tolist() == [0, 0, 0, 1, 2, 2, 3, 3, 3, 3]
    assert exp.targets[exp.mask.bool()].tolist() == sum(RESPONSES, [])
    exp.old_logp = torch.arange(10.0)
    mbs = exp.microbatches(1, 4, 2)  # rows 1-2, then row 3
    assert [mb["input_ids"].shape[0] for mb in mbs] == [2, 1]
    assert mbs[0]["old_logp"].tolist() == [3.0, 4.0, 5.0] and mbs[0]["seq_idx"].tolist() == [0, 1, 1]
    assert mbs[1]["old_logp"].tolist() == [6.0, 7.0, 8.0, 9.0] and mbs[1]["seq_idx"].tolist() == [0, 0, 0, 0]
    for mb in mbs:  # every micro-batch's token tensors line up with its own rows' response tokens
        assert mb["old_logp"].numel() == int(mb["mask"].sum())
    assert "advantages" not in mbs[0]  # only the fields the experience has


def test_ppo_shapes_rewards_with_the_configured_kl_estimator_and_whitens():
    inp = _inputs()
    for kind in ("k1", "k3"):
        o = _opts(f"rlvr.kl_kind={kind}")
        exp, metrics = make_experience(_rows(), o, **inp)
        m = _rows().mask.bool()
        kl = kl_estimate(inp["old_logp"][m], inp["ref_logp"][m], kind)
        assert metrics["reward/kl_token_mean"] == pytest.approx(float(kl.mean()), rel=1e-6)
        assert metrics["reward/non_eos_frac"] == 0.25
        assert abs(float(exp.advantages.mean())) < 1e-5 and float(exp.advantages.std()) == pytest.approx(1.0, rel=1e-4)
        assert exp.returns is not None and exp.returns.shape == exp.old_logp.shape
    assert _opts().kl_estimator == "k1"  # PPO's own, as open-instruct


def test_grpo_uses_group_advantages_with_the_shared_non_eos_penalty_and_no_whitening():
    o = _opts("rlvr.algorithm=grpo", "rlvr.samples_per_prompt=2")
    exp, metrics = make_experience(_rows(), o, **_inputs())
    # groups (0, 1): 10 vs 0 -> +-1/std ; (2, 3): 10 vs the penalty -10 (no EOS), not 10 vs 10
    per_seq = torch.zeros(4).index_add(0, exp.seq_idx, exp.advantages) / torch.bincount(exp.seq_idx).float()
    assert per_seq[0] > 0 > per_seq[1] and per_seq[2] > 0 > per_seq[3]
    torch.testing.assert_close(per_seq[0], -per_seq[1])
    assert exp.returns is None and not any(k.startswith("reward/") for k in metrics)
    assert o.kl_estimator == "k3"  # GRPO's own unless rlvr.kl_kind says otherwise
    assert _opts("rlvr.algorithm=grpo", "rlvr.samples_per_prompt=2", "rlvr.kl_kind=k2").kl_estimator == "k2"


def test_engine_mismatch_and_truncated_is_weights_are_on_response_tokens():
    inp = _inputs()
    inp["rollout_logp"] = inp["old_logp"].clone()
    inp["rollout_logp"][0, 1] -= 5.0  # row 0's first response token (target position len(prompt) - 1)
    exp, metrics = make_experience(_rows(), _opts("rlvr.is_correction=tis", "rlvr.is_high=2.0"), **inp)
    assert metrics["mismatch/max_abs_diff"] == pytest.approx(5.0)
    assert metrics["mismatch/mean_abs_diff"] == pytest.approx(0.5)  # one token of ten
    assert exp.is_weights.tolist()[0] == 2.0 and exp.is_weights[1:].eq(1.0).all()
    assert metrics["mismatch/is_clipped_frac"] == pytest.approx(0.1)
    assert metrics["mismatch/is_masked_frac"] == 0.0


@pytest.mark.parametrize("algorithm,kl_kind", [("grpo", None), ("grpo", "k1"), ("ppo", "k3")])
def test_policy_task_calls_the_registered_loss_with_the_configured_kl(monkeypatch, algorithm, kl_kind):
    """GRPO puts β·KL (the configured estimator) into the loss; PPO keeps it in the reward (kl_coef 0 here)."""
    from megatron_tulu.losses import ppo
    from megatron_tulu.trainers.rlvr import tasks

    overrides = [f"rlvr.algorithm={algorithm}", "rlvr.samples_per_prompt=2"] + ([f"rlvr.kl_kind={kl_kind}"] if kl_kind else [])
    cfg = load_config(RLVRConfig, "rlvr/tiny", overrides)
    calls = []

    def recorder(logp, old_logp, advantages, seq_idx, **kw):
        calls.append(dict(kw, n=logp.numel(), seq_idx=seq_idx.tolist()))
        return logp.sum() * 0, {"clipfrac": torch.tensor(0.0), "approx_kl": torch.tensor(0.0)}

    monkeypatch.setitem(ppo.POLICY_LOSSES, cfg.rlvr.preset.policy_loss, recorder)
    rows = _rows()
    rows.old_logp, rows.ref_logp, rows.advantages = torch.zeros(10), torch.zeros(10), torch.ones(10)
    mb = rows.microbatches(2, 4, 2)[0]
    monkeypatch.setattr(tasks, "token_logprobs", lambda logits, t, *a, **k: torch.zeros(t.shape, requires_grad=True))
    trainer = types.SimpleNamespace(model=None, preset=types.SimpleNamespace(vocab_size=32))
    tasks.PolicyTask(cfg).loss_fn(mb, torch.zeros(2, mb["input_ids"].shape[1], 32), trainer)
    (call,) = calls
    assert call["n"] == 6 and call["seq_idx"] == [0, 0, 1, 1, 1, 1] and call["num_seqs"] == 2
    if algorithm == "grpo":
        assert call["kl_coef"] == cfg.rlvr.kl_coef > 0 and call["kl_kind"] == (kl_kind or "k3")
        assert call["ref_logp"] is not None
    else:
        assert call["kl_coef"] == 0.0 and call["ref_logp"] is None


def test_value_task_scales_the_value_loss_by_vf_coef_and_policy_denominator_is_one():
    """``rlvr.vf_coef`` multiplies the value loss the trainer backpropagates (open-instruct: before clipping); the
    logged ``loss_sum`` stays the unscaled value loss. The policy's aggregation is in ``agg_weights``: denominator 1."""
    from megatron_tulu.losses.ppo import value_loss
    from megatron_tulu.trainers.rlvr import tasks

    rows = _rows()
    g = torch.Generator().manual_seed(0)
    rows.old_values, rows.returns = torch.randn(10, generator=g), torch.randn(10, generator=g)
    mb = rows.microbatches(0, 4, 4)[0]
    values = torch.randn(*mb["mask"].shape, 1, generator=g)
    expected, _ = value_loss(values.squeeze(-1)[mb["mask"].bool()], mb["old_values"], mb["returns"], mb["seq_idx"],
                             reduction="token_sum")
    for coef in (0.1, 1.0):
        cfg = load_config(RLVRConfig, "rlvr/tiny", [f"rlvr.vf_coef={coef}"])
        assert load_config(RLVRConfig, "rlvr/tiny", []).rlvr.vf_coef == 0.1  # open-instruct's default
        loss, m = tasks.ValueTask(cfg).loss_fn(mb, values, None)
        torch.testing.assert_close(loss, expected * coef)
        torch.testing.assert_close(m["loss_sum"], expected)
        assert tasks.ValueTask(cfg).denominator([mb]) == 10.0 and tasks.PolicyTask(cfg).denominator([mb]) == 1.0
