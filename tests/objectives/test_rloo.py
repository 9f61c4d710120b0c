"""RLOO (Ahmadian et al. 2024): A_i = r_i - mean of the other K-1 rewards of its group; with the KL in the
reward, r_i = score_i - β·Σ_t KL_t; REINFORCE on whole responses (seq_mean_token_sum)."""

import pytest
import torch

from megatron_tulu.algorithms import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    rloo_advantages,
)
from megatron_tulu.losses.kl import kl_estimate
from megatron_tulu.losses.ppo import POLICY_LOSSES
from megatron_tulu.trainers.rlvr import ALGORITHMS, RLVROptions
from megatron_tulu.trainers.rlvr.experience import (
    Experience,
    make_experience,
    response_rows,
)


def test_leave_one_out_hand_values():
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), group_size=4)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(rloo_advantages(torch.tensor([3.0, 1.0]), 2), torch.tensor([2.0, -2.0]))
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)


def test_estimator_uses_the_kl_shaped_total_reward():
    seq_idx = torch.tensor([0, 0, 1])
    token_rewards = torch.tensor([-0.1, 4.9, -0.2])  # totals 4.8 and -0.2
    adv, returns = ADVANTAGE_ESTIMATORS["rloo"](AdvantageInputs(
        seq_idx=seq_idx, num_seqs=2, scores=torch.tensor([5.0, 0.0]), token_rewards=token_rewards, group_size=2))
    torch.testing.assert_close(adv, torch.tensor([5.0, 5.0, -5.0]))
    assert returns is None


def test_make_experience_with_the_rloo_preset():
    p = ALGORITHMS["rloo"]
    assert (p.advantage_estimator, p.loss_agg, p.kl_in, p.kl_kind) == ("rloo", "seq_mean_token_sum", "reward", "k1")
    o = RLVROptions(algorithm="rloo", samples_per_prompt=2, kl_coef=0.1)
    ids, targets, mask = response_rows([[5, 6]] * 2, [[10, 11, 12], [13]], pad_id=0)  # 3 tokens, 1 token
    g = torch.Generator().manual_seed(0)
    old, ref = -torch.rand(mask.shape, generator=g), -torch.rand(mask.shape, generator=g)
    exp, _ = make_experience(Experience.rows(ids, targets, mask), o, torch.tensor([10.0, 0.0]),
                             torch.tensor([True, True]), old, ref, old)
    m = mask.bool()
    kl = kl_estimate(old[m], ref[m], "k1")
    r0, r1 = 10.0 - 0.1 * float(kl[:3].sum()), 0.0 - 0.1 * float(kl[3])
    torch.testing.assert_close(exp.advantages, torch.tensor([r0 - r1] * 3 + [r1 - r0]))
    # seq_mean_token_sum over 2 responses: every token weighs 1/2
    torch.testing.assert_close(exp.agg_weights, torch.full((4,), 0.5))


def test_reinforce_gradient_and_gradcheck():
    seq_idx = torch.tensor([0, 0, 0, 1])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    logp = torch.full((4,), -0.3, dtype=torch.float64, requires_grad=True)
    loss, _ = POLICY_LOSSES["clipped"](logp, logp.detach(), adv, seq_idx, loss_agg="seq_mean_token_sum")
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 2)  # -(1/S) A_i ∇ log π(o_i)
    old = logp.detach() - torch.tensor([0.05, -0.05, 0.02, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: POLICY_LOSSES["clipped"](
        x, old, adv, seq_idx, loss_agg="seq_mean_token_sum")[0], (logp.detach().requires_grad_(True),))
