"""Loss aggregation (``rlvr.loss_agg``): hand values of each aggregation, the per-token weights that make it a
weighted token sum, and the invariance that matters for the trainer: splitting a batch into micro-batches (and DP
ranks, and optimizer-step minibatches) gives the same loss and gradient as the whole batch."""

import itertools

import pytest
import torch

from megatron_tulu.config import load_config
from megatron_tulu.losses.ppo import LOSS_AGGS, POLICY_LOSSES, agg_weights, aggregate
from megatron_tulu.trainers.rlvr import RLVRConfig, RLVROptions
from megatron_tulu.trainers.rlvr.experience import (
    Experience,
    make_experience,
    minibatch_totals,
    response_rows,
)

# three responses: 3 tokens (truncated at the budget max_tokens = 3), 1 token, 2 tokens
SEQ_IDX = torch.tensor([0, 0, 0, 1, 2, 2])
LOSS = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 7.0])
MAX_TOKENS = 3


def test_hand_values_of_each_aggregation():
    expected = {
        "token_mean": 22.0 / 6,                                # every token the same weight (DAPO, CISPO)
        "seq_mean_token_sum": (6.0 + 4.0 + 12.0) / 3,          # REINFORCE on whole responses (RLOO)
        "seq_mean_token_mean": (2.0 + 4.0 + 6.0) / 3,          # GRPO (DeepSeekMath eq. 3), GSPO
        "token_sum_norm": 22.0 / (MAX_TOKENS * 3),             # Dr. GRPO: a constant normaliser
    }
    assert set(expected) == set(LOSS_AGGS)
    for name, value in expected.items():
        got = aggregate(LOSS, SEQ_IDX, name, 3, max_tokens=MAX_TOKENS)
        assert float(got) == pytest.approx(value, rel=1e-6), name
        w = agg_weights(SEQ_IDX, name, 3, max_tokens=MAX_TOKENS)
        assert float((w * LOSS).sum()) == pytest.approx(value, rel=1e-6), name
    # the one-token response weighs 1/3 under seq_mean_token_mean (vs 1/6 under token_mean)
    assert float(agg_weights(SEQ_IDX, "seq_mean_token_mean", 3)[3]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="max_tokens"):
        agg_weights(SEQ_IDX, "token_sum_norm", 3)
    with pytest.raises(ValueError, match="unknown"):
        agg_weights(SEQ_IDX, "seq_sum", 3)


def _batch(seed=0, rows=8):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 6, (rows,), generator=g)  # includes one-token responses
    seq_idx = torch.repeat_interleave(torch.arange(rows), lens)
    n = seq_idx.numel()
    old = -torch.rand(n, generator=g, dtype=torch.float64) - 0.1
    logp = old + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    adv = torch.randn(rows, generator=g, dtype=torch.float64)[seq_idx]
    ref = old + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return logp, old, adv, ref, seq_idx, lens


@pytest.mark.parametrize("loss_name", ["ppo", "grpo", "gspo", "cispo"])
@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_microbatch_split_gives_the_whole_batch_loss_and_gradient(loss_name, agg):
    logp0, old, adv, ref, seq_idx, lens = _batch()
    rows = lens.numel()
    w = agg_weights(seq_idx, agg, rows, max_tokens=5).double()
    kw = {"clip_low": 0.2, "clip_high": 0.28, "max_tokens": 5, "kl_coef": 0.05 if loss_name == "grpo" else 0.0}

    def run(cuts):
        logp = logp0.clone().requires_grad_(True)
        total = 0.0
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).tolist()
        for a, b in itertools.pairwise(cuts):
            i, j = offsets[a], offsets[b]
            loss, _ = POLICY_LOSSES[loss_name](logp[i:j], old[i:j], adv[i:j], seq_idx[i:j] - a, num_seqs=b - a,
                                               agg_weights=w[i:j], ref_logp=ref[i:j], **kw)
            total = total + loss
        total.backward()
        return total.detach(), logp.grad

    whole, g_whole = run([0, rows])
    # the weighted sum over the whole batch is the aggregation itself
    direct, _ = POLICY_LOSSES[loss_name](logp0, old, adv, seq_idx, num_seqs=rows, loss_agg=agg, ref_logp=ref, **kw)
    torch.testing.assert_close(whole, direct.detach())
    for cuts in ([0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 3, 8], [0, 5, 6, 8]):
        split, g_split = run(cuts)
        torch.testing.assert_close(split, whole)
        torch.testing.assert_close(g_split, g_whole)


@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_gradcheck_of_the_aggregated_clipped_loss(agg):
    logp, old, adv, _, seq_idx, _ = _batch(seed=1, rows=4)
    logp = logp.detach().requires_grad_(True)

    def f(x):
        return POLICY_LOSSES["clipped"](x, old, adv, seq_idx, num_seqs=4, loss_agg=agg, max_tokens=5,
                                        clip_low=10.0, clip_high=10.0)[0]  # clip far away: smooth everywhere

    assert torch.autograd.gradcheck(f, (logp,))


PROMPTS = [[5, 6]] * 4 + [[7, 8, 9]] * 4
RESPONSES = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19], [20], [21, 22, 23], [24, 25], [26]]


def _experience_inputs(seed=0):
    ids, targets, mask = response_rows(PROMPTS, RESPONSES, pad_id=0)
    g = torch.Generator().manual_seed(seed)
    shape = mask.shape
    return (ids, targets, mask), {
        "scores": torch.tensor([10.0, 0, 10, 0, 10, 10, 0, 10]), "eos": torch.ones(8, dtype=torch.bool),
        "old_logp": -torch.rand(shape, generator=g), "ref_logp": -torch.rand(shape, generator=g),
        "rollout_logp": -torch.rand(shape, generator=g)}


@pytest.mark.parametrize("agg", LOSS_AGGS)
def test_make_experience_weights_are_exact_over_dp_ranks_and_minibatches(agg):
    """Two DP ranks of 4 rows, two optimizer steps (minibatches of 2 rows each): the per-step policy loss summed over
    ranks and micro-batches equals the aggregation over that step's 4 rows computed on one rank."""
    o = RLVROptions(algorithm="grpo", samples_per_prompt=2, loss_agg=agg, max_new_tokens=4)
    (ids, targets, mask), inp = _experience_inputs()
    steps = [(0, 2), (2, 4)]
    totals = minibatch_totals(mask, 2, steps)
    torch.testing.assert_close(totals, torch.tensor([[3.0 + 1 + 1 + 3, 4.0], [2.0 + 4 + 2 + 1, 4.0]],
                                                    dtype=torch.float64))
    exps = []
    for r in range(2):
        sl = slice(4 * r, 4 * r + 4)
        rows = Experience.rows(ids[sl], targets[sl], mask[sl])
        exp, _ = make_experience(rows, o, **{k: v[sl] for k, v in inp.items()}, minibatches=steps, totals=totals)
        exps.append(exp)
    # the same rows on one rank: step k = rows {0,1,4,5} (k=0) or {2,3,6,7} (k=1) of the whole batch
    whole, _ = make_experience(Experience.rows(ids, targets, mask), o, **inp)
    loss = POLICY_LOSSES["clipped"]  # at ratio exp(0.1) (inside the clip): loss_t = -A_t·exp(0.1)
    for k, (a, b) in enumerate(steps):
        split = sum(loss(mb["old_logp"] + 0.1, mb["old_logp"], mb["advantages"], mb["seq_idx"],
                         num_seqs=mb["input_ids"].shape[0], agg_weights=mb["agg_weights"])[0]
                    for r in range(2) for mb in exps[r].microbatches(a, b, 1))
        keep = [a, a + 1, 4 + a, 4 + a + 1]
        sub = Experience.rows(ids[keep], targets[keep], mask[keep])
        m = mask[keep].bool()
        adv = torch.cat([e.microbatches(a, b, 2)[0]["advantages"] for e in exps])
        ref = aggregate(-adv * torch.exp(torch.tensor(0.1)), sub.seq_idx, agg, 4, max_tokens=4)
        assert float(split) == pytest.approx(float(ref), rel=1e-5), (agg, k)
        # the weights of one step sum to what the aggregation gives a loss of 1 per token
        w = torch.cat([e.microbatches(a, b, 2)[0]["agg_weights"] for e in exps])
        assert float(w.sum()) == pytest.approx(float(aggregate(torch.ones(int(m.sum())), sub.seq_idx, agg, 4,
                                                                max_tokens=4)), rel=1e-6)
    # default (one rank, one step): the weights of the whole batch sum to the aggregate of ones
    assert float(whole.agg_weights.sum()) == pytest.approx(float(aggregate(
        torch.ones(whole.seq_idx.numel()), whole.seq_idx, agg, 8, max_tokens=4)), rel=1e-6)


def test_config_parts_and_unknown_names():
    cfg = load_config(RLVRConfig, "rlvr/tiny", ["rlvr.algorithm=grpo", "rlvr.samples_per_prompt=2",
                                                "rlvr.loss_agg=seq_mean_token_sum"])
    assert cfg.rlvr.part("loss_agg") == "seq_mean_token_sum" and cfg.rlvr.part("policy_loss") == "grpo"
    for field in ("loss_agg", "policy_loss", "advantage_estimator"):
        with pytest.raises(ValueError, match=f"rlvr.{field}"):
            load_config(RLVRConfig, "rlvr/tiny", ["rlvr.algorithm=grpo", "rlvr.samples_per_prompt=2",
                                                  f"rlvr.{field}=nope"])
    with pytest.raises(ValueError, match="rlvr.algorithm"):
        load_config(RLVRConfig, "rlvr/tiny", ["rlvr.algorithm=nope"])
    with pytest.raises(ValueError, match="value model"):
        load_config(RLVRConfig, "rlvr/tiny", ["rlvr.algorithm=grpo", "rlvr.samples_per_prompt=2",
                                              "rlvr.advantage_estimator=gae"])
