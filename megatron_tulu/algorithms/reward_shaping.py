"""Tülu 3 PPO reward: verifier score at the end of the response, minus a per-token KL penalty.

Follows open-instruct's ``ppo_vllm_thread_ray_gtrl.py``: responses that do not contain the stop token
(EOS) get ``penalty_reward_value`` (-10) *instead of* their score (``torch.where``, not added), and every
token pays ``-β·KL(π || π_ref)``. One deliberate difference: open-instruct (like TRL) adds the score one
position *after* the last response token when that position exists (``sequence_lengths_p1``), where the
value mask still includes it; we add it at the last real token, so GAE sees it inside the response.
"""

from __future__ import annotations

import torch
from torch import Tensor

from megatron_tulu.losses.flat import check_seq_idx, seq_last, seq_sum
from megatron_tulu.losses.kl import kl_estimate


def penalise_non_eos(scores: Tensor, eos_found: Tensor | None, non_eos_penalty: float | None) -> Tensor:
    """``[S]`` scores with ``non_eos_penalty`` *instead of* the score of every response that did not end with the
    stop token (open-instruct's ``torch.where(contain_stop_token, ...)``); PPO and GRPO both use it.

    Args:
        scores: [S] already-scaled verifier rewards (α·verifier, α = 10 in Tülu 3).
        eos_found: [S] bool, True when the response ended with EOS; None = all did.
        non_eos_penalty: the replacement score; None disables the penalty.
    """
    raw = scores.float()
    if eos_found is None or non_eos_penalty is None:
        return raw
    if eos_found.shape != raw.shape:
        raise ValueError(f"eos_found must be [S]={list(raw.shape)}, got {tuple(eos_found.shape)}")
    return torch.where(eos_found.bool(), raw, torch.full_like(raw, non_eos_penalty))


@torch.no_grad()
def shape_rewards(
    verifier_scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    seq_idx: Tensor,
    kl_coef: float = 0.05,
    kl_kind: str = "k1",
    eos_found: Tensor | None = None,
    non_eos_penalty: float | None = -10.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO rewards: ``-kl_coef * KL_t`` on every token, plus the score on each response's last token.

    Args:
        verifier_scores: [S] already-scaled verifier rewards (α·verifier, α = 10 in Tülu 3).
        logp: [N] logprobs of the response tokens under the policy that sampled them (flat tokens).
        ref_logp: [N] logprobs of the same tokens under the frozen reference policy.
        seq_idx: [N] response of each token (every response has at least one token).
        kl_coef: β (Tülu 3 8B: 0.05 ... 0.1 depending on the run).
        kl_kind: KL estimator, "k1" (open-instruct default), "k2" or "k3".
        eos_found: [S] bool, True when the response ended with the stop token (EOS); None = all did.
        non_eos_penalty: score given instead of the verifier score when ``eos_found`` is False;
            None disables the penalty.

    Returns:
        token_rewards [N] float32 and metrics, 0-dim float32 tensors: ``kl_token_mean`` (per-token KL),
        ``kl_seq_mean`` (per-response summed KL), ``score_mean`` (after the penalty), ``verifier_score_mean``
        (before), ``non_eos_frac``, ``rlhf_reward_mean`` (score - β·ΣKL per response, the objective PPO maximises).
    """
    if logp.shape != ref_logp.shape or logp.dim() != 1:
        raise ValueError(f"logp and ref_logp must both be [N]: {tuple(logp.shape)}, {tuple(ref_logp.shape)}")
    if verifier_scores.dim() != 1:
        raise ValueError(f"verifier_scores must be [S], got {tuple(verifier_scores.shape)}")
    num_seqs = verifier_scores.shape[0]
    check_seq_idx(seq_idx, logp.numel(), num_seqs)
    scores = penalise_non_eos(verifier_scores, eos_found, non_eos_penalty)

    kl = kl_estimate(logp, ref_logp, kl_kind)
    rewards = -kl_coef * kl
    rewards[seq_last(seq_idx, num_seqs)] += scores

    kl_seq = seq_sum(kl, seq_idx, num_seqs)
    eos = torch.ones(num_seqs, dtype=torch.bool) if eos_found is None else eos_found.bool()
    metrics = {
        "kl_token_mean": kl.mean(),
        "kl_seq_mean": kl_seq.mean(),
        "score_mean": scores.mean(),
        "verifier_score_mean": verifier_scores.float().mean(),
        "non_eos_frac": (~eos).float().mean(),
        "rlhf_reward_mean": (scores - kl_coef * kl_seq).mean(),
    }
    return rewards, metrics
