"""KL estimators, PPO/GRPO policy loss clipping, clipped value loss, rollout/trainer mismatch.

The losses take flat response tokens (``losses.flat``); the cases are written as padded grids and flattened with
their mask, so a gradient that reached a padded position would show in the grid's ``.grad``."""

import math

import pytest
import torch

from megatron_tulu.losses.flat import flatten
from megatron_tulu.losses.kl import KL_ESTIMATORS, kl_estimate, logprob_mismatch
from megatron_tulu.losses.ppo import (
    POLICY_LOSSES, aggregate, grpo_policy_loss, ppo_policy_loss, register_policy_loss, truncated_is_weights, value_loss,
)

EPS = 0.2


def flat(mask, *grids):
    """The grids' entries at ``mask`` as [N] tensors (None stays None), then ``seq_idx`` and ``num_seqs``."""
    return (*[None if g is None else flatten(g, mask)[0] for g in grids], flatten(mask, mask)[1], mask.shape[0])


def policy(name, logp, old, adv, mask, ref_logp=None, is_weights=None, **kw):
    """POLICY_LOSSES[name] on the flattened grids."""
    lp, o, a, ref, w, seq_idx, s = flat(mask, logp, old, adv, ref_logp, is_weights)
    return POLICY_LOSSES[name](lp, o, a, seq_idx, num_seqs=s, ref_logp=ref, is_weights=w, **kw)


# ---- KL estimators -------------------------------------------------------------------------------------


def test_kl_estimators_match_formulas():
    logp = torch.tensor([[-1.0, -0.5, -3.0]])
    ref = torch.tensor([[-1.2, -0.5, -1.0]])
    d = logp - ref
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), d)
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), 0.5 * d**2)
    r = ref - logp
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), torch.exp(r) - r - 1)
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")


def test_k3_nonnegative_and_zero_when_equal():
    torch.manual_seed(0)
    logp, ref = -torch.rand(8, 16) * 5, -torch.rand(8, 16) * 5
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    for kind in KL_ESTIMATORS:
        assert (kl_estimate(logp, logp, kind) == 0).all()
    assert torch.isfinite(kl_estimate(torch.tensor([0.0]), torch.tensor([-1e4]), "k3")).all()


def test_k1_k3_unbiased_on_a_real_distribution():
    # tokens sampled from p: the mean of k1 and k3 estimates the exact KL(p || q)
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(5), 0)
    q = torch.softmax(torch.randn(5), 0)
    exact = (p * (p.log() - q.log())).sum()
    x = torch.multinomial(p, 200_000, replacement=True)
    for kind in ("k1", "k3"):
        est = kl_estimate(p.log()[x], q.log()[x], kind).mean()
        assert abs(est - exact) < 0.02, (kind, est, exact)


def test_logprob_mismatch():
    rollout = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -0.5, -0.5]])
    trainer = torch.tensor([[-1.1, -2.0, 0.0], [-0.5, -0.3, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    m = logprob_mismatch(rollout, trainer, mask)
    torch.testing.assert_close(m["mean_abs_diff"], torch.tensor((0.1 + 0.2) / 5))
    torch.testing.assert_close(m["max_abs_diff"], torch.tensor(0.2))
    r = (trainer - rollout)[mask.bool()]
    torch.testing.assert_close(m["kl"], (torch.exp(r) - r - 1).mean())
    same = logprob_mismatch(rollout, rollout, mask)
    assert same["mean_abs_diff"] == 0 and same["kl"] == 0


# ---- policy loss ---------------------------------------------------------------------------------------


def _policy_case():
    """Four tokens, one per clip regime; ratios 1.5, 0.5, 0.5, 1.5."""
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    return logp, old, adv, torch.ones(1, 4)


def test_ppo_clip_zero_gradient_where_clipped():
    logp, old, adv, mask = _policy_case()
    loss, metrics = policy("ppo", logp, old, adv, mask, clip_low=EPS)
    loss.backward()
    g = logp.grad[0]
    # A>0, ρ>1+ε: clipped (no incentive to push further) ; A>0, ρ<1-ε: not clipped, pushed up
    # A<0, ρ<1-ε: clipped ; A<0, ρ>1+ε: not clipped, pushed down
    assert g[0] == 0 and g[2] == 0
    # d/dlogp of -A·ρ/N = -A·ρ/N (N = 4 tokens)
    torch.testing.assert_close(g[1], torch.tensor(-1.0 * 0.5 / 4))
    torch.testing.assert_close(g[3], torch.tensor(1.0 * 1.5 / 4))
    expected_loss = (-1.0 * 1.2 - 1.0 * 0.5 + 1.0 * 0.8 + 1.0 * 1.5) / 4  # max(-Aρ, -A clip(ρ)) per token
    torch.testing.assert_close(loss, torch.tensor(expected_loss))
    assert metrics["clipfrac"] == 0.5
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.0))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(1.5))
    torch.testing.assert_close(metrics["approx_kl"], 0.5 * (torch.log(torch.tensor([1.5, 0.5])) ** 2).mean())


def test_ppo_on_policy_is_plain_policy_gradient():
    # ρ = 1 everywhere: no clipping, gradient = -A / N, and nothing leaks from padding
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, m = policy("ppo", logp, logp.detach(), adv, mask)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, 0.5, 0.0]]))
    assert m["clipfrac"] == 0 and m["approx_kl"] == 0


def test_clip_higher():
    logp, old, adv, mask = _policy_case()
    _, m = policy("ppo", logp, old, adv, mask, clip_low=EPS, clip_high=0.6)
    assert m["clipfrac"] == 0.25  # token 0 (ρ = 1.5 < 1.6) is no longer clipped; token 2 still is


def test_reductions():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss_tok, seq_idx, s = flat(mask, loss_mat)
    assert aggregate(loss_tok, seq_idx, "token_mean", s) == 10.0 / 4
    assert aggregate(loss_tok, seq_idx, "token_sum", s) == 10.0
    assert aggregate(loss_tok, seq_idx, "seq_mean_token_mean", s) == (2.0 + 4.0) / 2
    assert aggregate(loss_tok, seq_idx, "seq_mean_token_sum", s) == (6.0 + 4.0) / 2
    # a response without tokens still counts in the per-response means when num_seqs says so
    assert aggregate(loss_tok, seq_idx, "seq_mean_token_sum", 3) == (6.0 + 4.0) / 3
    with pytest.raises(ValueError, match="reduction"):
        aggregate(loss_tok, seq_idx, "mean", s)
    with pytest.raises(ValueError, match="non-decreasing"):
        aggregate(loss_tok, seq_idx.flip(0), "token_sum", s)


def test_grpo_loss_adds_kl_term_and_takes_sequence_advantages():
    torch.manual_seed(0)
    logp = (-torch.rand(4, 5)).requires_grad_(True)
    old = logp.detach() + 0.05 * torch.randn(4, 5)
    ref = logp.detach() + 0.3 * torch.randn(4, 5)
    mask = (torch.arange(5) < torch.tensor([[5], [3], [4], [1]])).int()
    adv = torch.tensor([1.0, -1.0, 0.5, 0.0])
    beta = 0.04
    seq_adv = adv[:, None].expand(4, 5)  # a response's advantage on each of its tokens
    loss, m = policy("grpo", logp, old, seq_adv, mask, ref_logp=ref, kl_coef=beta)
    # same as PPO with per-token broadcast advantages, plus β·mean k3
    pg, _ = policy("ppo", logp, old, seq_adv, mask)
    k3 = kl_estimate(logp, ref, "k3")
    torch.testing.assert_close(loss, pg + beta * (k3 * mask).sum() / mask.sum())
    torch.testing.assert_close(m["pg_loss"], pg.detach())
    torch.testing.assert_close(m["kl"], (k3 * mask).sum() / mask.sum())
    loss.backward()
    assert logp.grad[mask == 0].abs().sum() == 0
    assert POLICY_LOSSES["grpo"] is grpo_policy_loss and POLICY_LOSSES["ppo"] is ppo_policy_loss
    with pytest.raises(ValueError, match="registered twice"):
        register_policy_loss("ppo")(ppo_policy_loss)
    with pytest.raises(ValueError, match="ref_logp"):
        policy("grpo", logp, old, seq_adv, mask)


# ---- value loss ----------------------------------------------------------------------------------------


def test_value_loss_clipping():
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    ret = torch.tensor([[1.0, 1.0, -1.0, 0.05]])
    # token 0: moved past the clip towards the target -> clipped error larger -> no gradient
    # token 1: moved away from the target beyond the clip -> unclipped error larger -> gradient
    # token 2: moved past the clip away from a negative target -> unclipped larger -> gradient
    # token 3: inside the clip range -> plain squared error
    values = torch.tensor([[0.5, -0.5, 0.5, 0.1]], requires_grad=True)
    mask = torch.ones(1, 4)
    v, o, r, seq_idx, s = flat(mask, values, old, ret)
    loss, m = value_loss(v, o, r, seq_idx, num_seqs=s, clip_eps=0.2)
    per_tok = [(0.2 - 1.0) ** 2, (-0.5 - 1.0) ** 2, (0.5 + 1.0) ** 2, (0.1 - 0.05) ** 2]
    torch.testing.assert_close(loss, torch.tensor(0.5 * sum(per_tok) / 4))
    loss.backward()
    g = values.grad[0]
    assert g[0] == 0
    torch.testing.assert_close(g[1:], torch.tensor([-1.5, 1.5, 0.05]) / 4)  # 0.5·2(v - R)/N
    assert m["vf_clipfrac"] == 0.25
    assert math.isclose(m["returns_mean"].item(), 1.05 / 4, rel_tol=1e-6)


def test_value_loss_ignores_padding():
    values = torch.tensor([[0.3, 9.0]], requires_grad=True)
    loss, _ = value_loss(*flat(torch.tensor([[1, 0]]), values, torch.tensor([[0.3, 0.0]]), torch.tensor([[0.5, -9.0]]))[:4])
    torch.testing.assert_close(loss, torch.tensor(0.5 * 0.2**2))
    loss.backward()
    assert values.grad[0, 1] == 0


def test_truncated_is_weights_cap_and_mask():
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    rollout = torch.tensor([[-1.5, -1.0, -3.0, -3.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    o, r, _, _ = flat(mask, old, rollout)
    w = truncated_is_weights(o, r, cap=2.0)
    expected = torch.tensor([math.exp(0.5), math.exp(-1.0), 2.0])  # exp(2.5) capped
    assert torch.allclose(w, expected, atol=1e-6)
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(o, r, cap=0.0)


@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_is_weights_scale_each_tokens_policy_gradient(name):
    """Unit weights change nothing; weights w scale each token's surrogate gradient by w."""
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g)
    ref = -torch.rand(3, 5, generator=g)
    adv = torch.randn(3, 5, generator=g)
    mask = torch.ones(3, 5)
    w = 0.5 + torch.rand(3, 5, generator=g)
    kw = dict(ref_logp=ref, loss_agg="token_sum", kl_coef=0.0)

    def grad(weights):
        logp = old.clone().requires_grad_(True)  # ratio 1: the unclipped term is active everywhere
        loss, _ = policy(name, logp, old, adv, mask, is_weights=weights, **kw)
        loss.backward()
        return loss.detach(), logp.grad

    l0, g0 = grad(None)
    l1, g1 = grad(torch.ones(3, 5))
    lw, gw = grad(w)
    assert torch.equal(l0, l1) and torch.equal(g0, g1)
    assert torch.allclose(gw, g0 * w, atol=1e-6) and torch.allclose(g0, -adv, atol=1e-6)
