"""GAE, whitening and GRPO advantages against hand-computed values.

The estimators take flat response tokens (``losses.flat``); the GAE cases are written as padded grids (garbage in
the padding) and flattened with their mask, and the results are put back on the grid (zero at padding)."""

import threading

import pytest
import torch

from megatron_tulu.algorithms import (
    ADVANTAGE_ESTIMATORS, AdvantageInputs, gae, grpo_advantages, register_advantage, whiten,
)
from megatron_tulu.losses.flat import flatten

GARBAGE = 123.0  # written into padded positions: it must never reach a result


def _two_rows():
    # row 0: 3 real tokens; row 1: 2 real tokens then one pad holding garbage
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.2, 1.0, GARBAGE]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.4, GARBAGE]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return rewards, values, mask


def gae_grid(rewards, values, mask, **kw):
    """``gae`` on the flattened grids, results back on the grid (zero where ``mask`` is not set)."""
    r, seq_idx = flatten(rewards, mask)
    adv, ret = gae(r, flatten(values, mask)[0], seq_idx, mask.shape[0], **kw)
    out = [torch.zeros(mask.shape), torch.zeros(mask.shape)]
    out[0][mask.bool()], out[1][mask.bool()] = adv, ret
    return tuple(out)


def test_gae_hand_computed_gamma1_lam095():
    adv, ret = gae_grid(*_two_rows(), gamma=1.0, lam=0.95)
    # row 0: δ2 = 1 - .7 = .3 ; δ1 = 0 + .7 - .6 = .1 ; δ0 = 0 + .6 - .5 = .1
    a2 = 0.3
    a1 = 0.1 + 0.95 * a2
    a0 = 0.1 + 0.95 * a1
    # row 1: δ1 = 1 - .4 = .6 (next value after the end is 0, not the garbage) ; δ0 = .2 + .4 - .1 = .5
    b1 = 0.6
    b0 = 0.5 + 0.95 * b1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.6, a2 + 0.7], [b0 + 0.1, b1 + 0.4, 0.0]]))


def test_gae_hand_computed_discounted():
    g, lam = 0.9, 0.5
    adv, _ = gae_grid(*_two_rows(), gamma=g, lam=lam)
    a2 = 1.0 - 0.7
    a1 = (0.0 + g * 0.7 - 0.6) + g * lam * a2
    a0 = (0.0 + g * 0.6 - 0.5) + g * lam * a1
    b1 = 1.0 - 0.4
    b0 = (0.2 + g * 0.4 - 0.1) + g * lam * b1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))


def test_gae_lam1_returns_are_reward_to_go():
    # γ = λ = 1: returns are the undiscounted sum of future rewards, whatever the values are
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    mask = (torch.arange(6) < torch.tensor([[6], [4], [1], [3]])).int()
    _, ret = gae_grid(rewards, values, mask, gamma=1.0, lam=1.0)
    r = rewards * mask
    to_go = r.flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(ret, to_go)


def test_gae_mask_hole_is_skipped():
    # a masked token inside the response (e.g. tool output) is skipped: same result as deleting it
    rewards = torch.tensor([[0.0, GARBAGE, 0.0, 1.0]])
    values = torch.tensor([[0.5, GARBAGE, 0.6, 0.7]])
    mask = torch.tensor([[1, 0, 1, 1]])
    adv, _ = gae_grid(rewards, values, mask)
    ref, _ = gae_grid(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3))
    torch.testing.assert_close(adv[:, [0, 2, 3]], ref)
    assert adv[0, 1] == 0


def test_whiten_masked_mean0_std1():
    torch.manual_seed(0)
    x = torch.randn(3, 5) * 4 + 7
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    x[mask == 0] = GARBAGE
    w = whiten(x, mask)
    real = w[mask.bool()]
    assert abs(real.mean().item()) < 1e-6
    assert abs(real.std().item() - 1.0) < 1e-5  # unbiased std, as open-instruct's masked_whiten
    assert (w[mask == 0] == 0).all()
    # shift_mean=False keeps the mean, only rescales
    w2 = whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(w2[mask.bool()].mean(), x[mask.bool()].mean())
    assert abs(w2[mask.bool()].std().item() - 1.0) < 1e-5


class _ThreadAllReduce:
    """In-process stand-in for a 2-rank all_reduce(SUM): each thread is a rank."""

    def __init__(self, world: int):
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world, timeout=10)

    def for_rank(self, rank: int):
        def all_reduce(t):
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before everyone has summed
            return total

        return all_reduce


def test_whiten_global_over_two_ranks_equals_whitening_concatenation():
    torch.manual_seed(1)
    x = torch.randn(6, 4) * 3 + 2
    mask = (torch.rand(6, 4) > 0.3).int()
    mask[:, 0] = 1
    halves = [(x[:3], mask[:3]), (x[3:], mask[3:])]
    fake = _ThreadAllReduce(2)
    out = [None, None]

    def rank(r):
        out[r] = whiten(*halves[r], all_reduce=fake.for_rank(r))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert all(o is not None for o in out), "a rank did not finish"
    torch.testing.assert_close(torch.cat(out), whiten(x, mask))
    # and it differs from per-rank whitening (so the all_reduce really mattered)
    assert not torch.allclose(out[0], whiten(*halves[0]))


def test_whiten_rejects_too_few_entries():
    with pytest.raises(ValueError, match="at least 2"):
        whiten(torch.ones(2, 2), torch.tensor([[1, 0], [0, 0]]))


def test_grpo_advantages_hand_values():
    scores = torch.tensor([10.0, 0.0, 0.0, 10.0, 5.0, 5.0, 5.0, 5.0])  # 2 prompts, K = 4
    adv = grpo_advantages(scores, group_size=4)
    std = 5.0  # population std (ddof=0), as open-instruct grpo_fast's numpy .std(): sqrt(4 * 25 / 4)
    e = 5.0 / (std + 1e-8)
    torch.testing.assert_close(adv, torch.tensor([e, -e, -e, e, 0.0, 0.0, 0.0, 0.0]))
    # all-equal group -> exactly zero advantage (no NaN)
    assert (adv[4:] == 0).all()
    # Dr. GRPO variant: mean-centred only
    torch.testing.assert_close(
        grpo_advantages(scores, 4, std_normalize=False), torch.tensor([5.0, -5, -5, 5, 0, 0, 0, 0])
    )
    # through the registry: the same advantage on every token of a response
    seq_idx = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7])
    adv_tok, returns = ADVANTAGE_ESTIMATORS["grpo"](AdvantageInputs(seq_idx=seq_idx, num_seqs=8, scores=scores,
                                                                    group_size=4))
    torch.testing.assert_close(adv_tok, adv[seq_idx])
    assert returns is None
    with pytest.raises(ValueError, match="registered twice"):
        register_advantage("gae")(lambda inputs: (inputs.scores, None))


def test_gae_estimator_reads_rewards_and_values():
    rewards, values, mask = _two_rows()
    (r, seq_idx), v = flatten(rewards, mask), flatten(values, mask)[0]
    inputs = AdvantageInputs(seq_idx=seq_idx, num_seqs=2, scores=torch.zeros(2), token_rewards=r, values=v,
                             gamma=0.9, lam=0.5)
    adv, ret = ADVANTAGE_ESTIMATORS["gae"](inputs)
    expected = gae(r, v, seq_idx, 2, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, expected[0])
    torch.testing.assert_close(ret, expected[1])
    with pytest.raises(ValueError, match="value model"):
        ADVANTAGE_ESTIMATORS["gae"](AdvantageInputs(seq_idx=seq_idx, num_seqs=2, scores=torch.zeros(2)))


def test_grpo_advantages_bad_input():
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="at least 2"):
        grpo_advantages(torch.zeros(4), group_size=1)
    with pytest.raises(ValueError, match=r"\[S\]"):
        grpo_advantages(torch.zeros(2, 2), group_size=2)
