"""Dr. GRPO (Liu et al. 2025): mean-centred group advantages (no std) and a constant normaliser
(Σ loss / (max_new_tokens · S)) instead of GRPO's 1/|o_i|."""

import pytest
import torch

from megatron_tulu.algorithms import ADVANTAGE_ESTIMATORS, AdvantageInputs
from megatron_tulu.losses.ppo import POLICY_LOSSES
from megatron_tulu.trainers.rlvr import ALGORITHMS


def _adv(name, scores, seq_idx, k):
    return ADVANTAGE_ESTIMATORS[name](AdvantageInputs(seq_idx=seq_idx, num_seqs=scores.numel(), scores=scores,
                                                      group_size=k))


def test_advantages_are_mean_centred_only():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])  # second group: all equal
    seq_idx = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5, 6, 7])
    adv, returns = _adv("dr_grpo", scores, seq_idx, 4)
    per_seq = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, per_seq[seq_idx])
    assert returns is None
    # GRPO divides by the group's population std (0.5 here, as grpo_fast): ±1; equal group still 0
    grpo, _ = _adv("grpo", scores, seq_idx, 4)
    torch.testing.assert_close(grpo, (per_seq / (0.5 + 1e-8))[seq_idx])


def test_token_sum_norm_removes_the_length_bias():
    """Responses of 4 (truncated at max_new_tokens = 4), 1 and 2 tokens; on-policy. Under token_sum_norm every
    token's gradient is -A/(4·3); under seq_mean_token_mean the one-token response's is -A/(1·3)."""
    seq_idx = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    adv = torch.tensor([1.0, 1.0, 1.0, 1.0, -2.0, 0.5, 0.5])

    def grad(agg):
        logp = torch.full((7,), -0.5, requires_grad=True)
        loss, _ = POLICY_LOSSES["clipped"](logp, logp.detach(), adv, seq_idx, num_seqs=3, loss_agg=agg,
                                           max_tokens=4)
        loss.backward()
        return loss.detach(), logp.grad

    loss, g = grad("token_sum_norm")
    assert float(loss) == pytest.approx(-(4.0 - 2.0 + 1.0) / 12)
    torch.testing.assert_close(g, -adv / 12)
    _, g = grad("seq_mean_token_mean")
    torch.testing.assert_close(g, -adv / (torch.tensor([4.0, 1.0, 2.0])[seq_idx] * 3))


def test_preset_and_gradcheck():
    p = ALGORITHMS["dr_grpo"]
    assert (p.advantage_estimator, p.loss_agg, p.kl_in) == ("dr_grpo", "token_sum_norm", "none")
    g = torch.Generator().manual_seed(0)
    seq_idx = torch.tensor([0, 0, 0, 1, 2, 2])
    old = -torch.rand(6, generator=g, dtype=torch.float64)
    logp = (old + 0.05 * torch.randn(6, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, 0.5, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: POLICY_LOSSES["clipped"](
        x, old, adv, seq_idx, loss_agg="token_sum_norm", max_tokens=8)[0], (logp,))
