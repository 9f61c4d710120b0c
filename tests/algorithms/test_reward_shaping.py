"""Tülu 3 PPO reward shaping: score/penalty at the last real token, -β·KL elsewhere.

``shape_rewards`` takes flat response tokens; the cases are padded grids flattened with their mask and the
rewards put back on the grid (zero at padding)."""

import pytest
import torch

from megatron_tulu.algorithms import gae, penalise_non_eos, shape_rewards
from megatron_tulu.losses.flat import flatten, seq_last


def shape_grid(scores, logp, ref, mask, **kw):
    lp, seq_idx = flatten(logp, mask)
    flat_rewards, metrics = shape_rewards(scores, lp, flatten(ref, mask)[0], seq_idx, **kw)
    rewards = torch.zeros(mask.shape)
    rewards[mask.bool()] = flat_rewards
    return rewards, metrics


def _batch():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    logp = torch.tensor([[-1.0, -2.0, -0.5, -0.1], [-0.3, -0.2, -9.0, -9.0], [-1.0, -1.0, -1.0, -9.0]])
    ref = torch.tensor([[-1.5, -2.0, -0.7, -0.1], [-0.1, -0.2, -1.0, -1.0], [-1.0, -1.2, -0.8, -1.0]])
    return logp, ref, mask


def test_last_token_index():
    _, _, mask = _batch()
    _, seq_idx = flatten(mask, mask)
    assert seq_last(seq_idx, 3).tolist() == [3, 5, 8]  # flat positions of each response's last token
    with pytest.raises(ValueError, match=r"responses \[1\]"):
        seq_last(torch.tensor([0, 2]), 3)


def test_score_and_eos_penalty_at_last_token():
    logp, ref, mask = _batch()
    scores = torch.tensor([10.0, 0.0, 10.0])
    eos = torch.tensor([True, True, False])  # response 2 was truncated: its 10 is replaced by -10
    beta = 0.05
    rewards, metrics = shape_grid(scores, logp, ref, mask, kl_coef=beta, kl_kind="k1", eos_found=eos)
    kl = (logp - ref) * mask
    expected = -beta * kl
    expected[0, 3] += 10.0
    expected[1, 1] += 0.0
    expected[2, 2] += -10.0  # replaced, not added: open-instruct's torch.where(contain_stop_token, ...)
    torch.testing.assert_close(rewards, expected)
    assert (rewards[mask == 0] == 0).all()
    # totals: each response's reward sum is its (penalised) score minus β·ΣKL
    torch.testing.assert_close(rewards.sum(1), torch.tensor([10.0, 0.0, -10.0]) - beta * kl.sum(1))
    torch.testing.assert_close(metrics["score_mean"], torch.tensor(0.0))
    torch.testing.assert_close(metrics["verifier_score_mean"], torch.tensor(20.0 / 3))
    torch.testing.assert_close(metrics["non_eos_frac"], torch.tensor(1.0 / 3))
    torch.testing.assert_close(metrics["kl_token_mean"], kl.sum() / mask.sum())
    torch.testing.assert_close(metrics["kl_seq_mean"], kl.sum(1).mean())
    torch.testing.assert_close(metrics["rlhf_reward_mean"], rewards.sum(1).mean())


def test_penalty_disabled_and_k3():
    logp, ref, mask = _batch()
    scores = torch.tensor([1.0, 2.0, 3.0])
    eos = torch.tensor([False, False, False])
    rewards, m = shape_grid(scores, logp, ref, mask, kl_coef=0.1, kl_kind="k3", eos_found=eos, non_eos_penalty=None)
    r = ref - logp
    k3 = (torch.exp(r) - r - 1) * mask
    torch.testing.assert_close(rewards.sum(1), scores - 0.1 * k3.sum(1))
    assert m["non_eos_frac"] == 1.0 and m["score_mean"] == 2.0


def test_shaped_rewards_feed_gae():
    # with zero KL and zero values, γ = λ = 1: every token's advantage is the final score
    logp, _, mask = _batch()
    lp, seq_idx = flatten(logp, mask)
    rewards, _ = shape_rewards(torch.tensor([10.0, 0.0, 10.0]), lp, lp, seq_idx, eos_found=None)
    adv, _ = gae(rewards, torch.zeros_like(rewards), seq_idx, 3, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([10.0] * 4 + [0.0] * 2 + [10.0] * 3))


def test_non_eos_penalty_is_shared():
    scores, eos = torch.tensor([10.0, 0.0, 10.0]), torch.tensor([True, False, False])
    torch.testing.assert_close(penalise_non_eos(scores, eos, -10.0), torch.tensor([10.0, -10.0, -10.0]))
    torch.testing.assert_close(penalise_non_eos(scores, eos, None), scores)
    with pytest.raises(ValueError, match="eos_found"):
        penalise_non_eos(scores, eos[:2], -10.0)


def test_bad_shapes_are_named():
    logp, ref, mask = _batch()
    (lp, seq_idx), rf = flatten(logp, mask), flatten(ref, mask)[0]
    with pytest.raises(ValueError, match="num_seqs=2"):
        shape_rewards(torch.zeros(2), lp, rf, seq_idx)
    with pytest.raises(ValueError, match="verifier_scores"):
        shape_rewards(torch.zeros(3, 1), lp, rf, seq_idx)
    with pytest.raises(ValueError, match="eos_found"):
        shape_rewards(torch.zeros(3), lp, rf, seq_idx, eos_found=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="ref_logp"):
        shape_rewards(torch.zeros(3), lp, rf[:2], seq_idx)
