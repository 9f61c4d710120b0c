"""DAPO (Yu et al. 2025): decoupled clip (clip-higher ε_low = 0.2, ε_high = 0.28), token-level loss, no KL."""

import pytest
import torch

from megatron_tulu.config import load_config
from megatron_tulu.losses.ppo import POLICY_LOSSES
from megatron_tulu.trainers.rlvr import ALGORITHMS, RLVRConfig


def test_preset_is_the_papers():
    p = ALGORITHMS["dapo"]
    assert (p.clip_low, p.clip_high, p.loss_agg, p.kl_in, p.policy_loss) == (0.2, 0.28, "token_mean", "none",
                                                                              "clipped")
    o = load_config(RLVRConfig, "rlvr/tiny", ["rlvr.algorithm=dapo", "rlvr.samples_per_prompt=2"]).rlvr
    assert (o.part("clip_low"), o.part("clip_high")) == (0.2, 0.28)
    o = load_config(RLVRConfig, "rlvr/tiny", ["rlvr.algorithm=dapo", "rlvr.samples_per_prompt=2",
                                              "rlvr.clip_high=0.3"]).rlvr
    assert o.part("clip_high") == 0.3  # each part settable alone
    with pytest.raises(ValueError, match="samples_per_prompt"):
        load_config(RLVRConfig, "rlvr/tiny", ["rlvr.algorithm=dapo"])


def test_clip_higher_hand_values_and_gradients():
    # ratios 1.25 (A=+1, inside 1.28), 1.3 (A=+1, above 1.28: clipped), 0.7 (A=-1, below 0.8: clipped)
    ratio = torch.tensor([1.25, 1.3, 0.7])
    logp = ratio.log().requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0])
    seq_idx = torch.tensor([0, 0, 1])
    loss, m = POLICY_LOSSES["clipped"](logp, torch.zeros(3), adv, seq_idx, clip_low=0.2, clip_high=0.28)
    assert float(loss.detach()) == pytest.approx((-1.25 - 1.28 + 0.8) / 3, rel=1e-6)  # token mean
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-1.25 / 3, 0.0, 0.0]))
    assert float(m["clipfrac"]) == pytest.approx(2 / 3)
    # symmetric ε = 0.2 (PPO): token 0 (1.25 > 1.2) is clipped too
    _, m = POLICY_LOSSES["ppo"](logp.detach(), torch.zeros(3), adv, seq_idx, clip_low=0.2)
    assert float(m["clipfrac"]) == 1.0


def test_token_mean_weighs_every_token_alike():
    # a one-token response and a four-token (truncated) response: on-policy gradient -A / N on every token
    seq_idx = torch.tensor([0, 1, 1, 1, 1])
    logp = torch.full((5,), -1.0, requires_grad=True)
    adv = torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0])
    loss, _ = POLICY_LOSSES["clipped"](logp, logp.detach(), adv, seq_idx, clip_low=0.2, clip_high=0.28)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 5)


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(6, generator=g, dtype=torch.float64)
    logp = (old + 0.05 * torch.randn(6, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -0.5, -0.5, 2.0, 2.0], dtype=torch.float64)
    seq_idx = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(
        lambda x: POLICY_LOSSES["clipped"](x, old, adv, seq_idx, clip_low=0.2, clip_high=0.28)[0], (logp,))
