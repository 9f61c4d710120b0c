"""CISPO (MiniMax-M1 2025): loss_t = -sg(clip(ρ_t, 1-ε_low, 1+ε_high))·A_t·logp_t; the IS weight is clipped and
stop-gradient, so no token leaves the gradient (unlike the PPO clip)."""

import pytest
import torch

from megatron_tulu.losses.ppo import POLICY_LOSSES
from megatron_tulu.trainers.rlvr import ALGORITHMS

CISPO = POLICY_LOSSES["cispo"]


def test_hand_values_and_no_token_dropped():
    # ratios 1.5 (A=+1: weight capped at 1.272), 0.5 (A=-1: no lower bound, weight 0.5), 1.0 (A=2)
    ratio = torch.tensor([1.5, 0.5, 1.0])
    old = torch.tensor([-1.0, -2.0, -0.5])
    logp = (old + ratio.log()).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 2.0])
    seq_idx = torch.tensor([0, 0, 1])
    loss, m = CISPO(logp, old, adv, seq_idx, clip_low=1.0, clip_high=0.272)
    w = torch.tensor([1.272, 0.5, 1.0])
    expected = (-adv * w * logp.detach()).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv * w / 3)
    assert logp.grad[0] != 0  # PPO's clip would give token 0 no gradient
    _, ppo_m = POLICY_LOSSES["ppo"](logp.detach(), old, adv, seq_idx, clip_low=0.2)
    assert float(ppo_m["clipfrac"]) == pytest.approx(2 / 3) and float(m["clipfrac"]) == pytest.approx(1 / 3)
    # a lower bound when asked (1 - ε_low = 0.8): the 0.5 ratio's weight becomes 0.8
    logp2 = logp.detach().clone().requires_grad_(True)
    CISPO(logp2, old, adv, seq_idx, clip_low=0.2, clip_high=0.272)[0].backward()
    torch.testing.assert_close(logp2.grad, -adv * torch.tensor([1.272, 0.8, 1.0]) / 3)


def test_on_policy_is_reinforce_and_equal_rewards_give_zero():
    seq_idx = torch.tensor([0, 1, 1, 1])  # a one-token response and a three-token one
    logp = torch.full((4,), -0.7, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0])
    CISPO(logp, logp.detach(), adv, seq_idx)[0].backward()
    torch.testing.assert_close(logp.grad, -adv / 4)
    logp.grad = None
    CISPO(logp, logp.detach(), torch.zeros(4), seq_idx)[0].backward()
    assert logp.grad.eq(0).all()


def test_preset_and_gradcheck_at_a_fixed_is_weight():
    p = ALGORITHMS["cispo"]
    assert (p.policy_loss, p.loss_agg, p.clip_low, p.clip_high, p.kl_in) == ("cispo", "token_mean", 1.0, 0.272,
                                                                             "none")
    g = torch.Generator().manual_seed(0)
    seq_idx = torch.tensor([0, 0, 0, 1, 2, 2])
    delta = torch.tensor([0.5, -0.5, 0.0, 0.1, 0.3, -1.0], dtype=torch.float64)  # log ρ, some clipped
    logp = (-torch.rand(6, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, 0.5, 0.5], dtype=torch.float64)
    # the weight is stop-gradient: hold ρ fixed (old_logp moves with logp) and the loss is exactly differentiable
    assert torch.autograd.gradcheck(lambda x: CISPO(x, x.detach() - delta, adv, seq_idx)[0], (logp,))
