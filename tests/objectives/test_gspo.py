"""GSPO (Zheng et al. 2025): sequence ratio s_i = exp(mean_t(logp - old_logp)), sequence-level clip, the
sequence advantage; loss (1/S) Σ_i max(-A_i s_i, -A_i clip(s_i, 1-ε_low, 1+ε_high))."""

import math

import pytest
import torch

from megatron_tulu.losses.ppo import POLICY_LOSSES
from megatron_tulu.trainers.rlvr import ALGORITHMS

GSPO = POLICY_LOSSES["gspo"]


def test_hand_values_and_gradient():
    # response 0: log-ratios [0.1, -0.3] -> s = exp(-0.1) = 0.9048 (inside [0.8, 1.2]), A = +1
    # response 1: one token, log-ratio 0.5 -> s = 1.6487 > 1.2: clipped, A = +1 -> loss -1.2, no gradient
    log_ratio = torch.tensor([0.1, -0.3, 0.5])
    old = torch.tensor([-1.0, -2.0, -0.5])
    logp = (old + log_ratio).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, 1.0])
    seq_idx = torch.tensor([0, 0, 1])
    loss, m = GSPO(logp, old, adv, seq_idx, clip_low=0.2, clip_high=0.2, loss_agg="seq_mean_token_mean")
    s0 = math.exp(-0.1)
    assert float(loss.detach()) == pytest.approx((-s0 - 1.2) / 2, rel=1e-6)
    loss.backward()
    # d/dlogp_t of -A s_0 / 2 = -A s_0 · (1/|o_0|) / 2 on both tokens of response 0
    torch.testing.assert_close(logp.grad, torch.tensor([-s0 / 4, -s0 / 4, 0.0]))
    assert float(m["clipfrac"]) == pytest.approx(1 / 3)  # the token of the clipped response
    assert float(m["seq_ratio_mean"]) == pytest.approx((s0 + math.exp(0.5)) / 2, rel=1e-6)


def test_negative_advantage_and_token_level_ratios_do_not_clip_alone():
    # one token far off (log-ratio 1.0) but the response's mean log-ratio is 0.1: a token-level clip would drop
    # that token, the sequence-level one keeps the whole response (s = exp(0.1) < 1.2)
    old = torch.zeros(10)
    logp = torch.tensor([1.0] + [0.0] * 9).requires_grad_(True)
    adv = torch.full((10,), -2.0)  # the sequence advantage
    seq_idx = torch.zeros(10, dtype=torch.long)
    loss, m = GSPO(logp, old, adv, seq_idx, clip_low=0.2, clip_high=0.2)
    assert float(loss.detach()) == pytest.approx(2.0 * math.exp(0.1), rel=1e-6) and float(m["clipfrac"]) == 0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.full((10,), 2.0 * math.exp(0.1) / 10))


def test_sequence_advantage_is_the_mean_of_its_tokens_and_equal_rewards_give_zero():
    seq_idx = torch.tensor([0, 0, 1])
    logp = torch.zeros(3, requires_grad=True)
    loss, _ = GSPO(logp, torch.zeros(3), torch.zeros(3), seq_idx)  # group with equal rewards: A = 0
    loss.backward()
    assert float(loss.detach()) == 0 and logp.grad.eq(0).all()


def test_preset_and_gradcheck():
    p = ALGORITHMS["gspo"]
    assert (p.policy_loss, p.loss_agg, p.clip_low, p.clip_high) == ("gspo", "seq_mean_token_mean", 3e-4, 4e-4)
    g = torch.Generator().manual_seed(0)
    seq_idx = torch.tensor([0, 0, 0, 1, 2, 2])
    old = -torch.rand(6, generator=g, dtype=torch.float64)
    logp = (old + 0.05 * torch.randn(6, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, 0.5, 0.5], dtype=torch.float64)
    for agg in ("seq_mean_token_mean", "token_mean"):
        assert torch.autograd.gradcheck(lambda x, agg=agg: GSPO(x, old, adv, seq_idx, clip_low=1.0, clip_high=5.0,
                                                                loss_agg=agg)[0], (logp,))
