"""Tülu 3 PPO reward: verifier score at the end of the response, minus a per-token KL penalty.

Follows open-instruct's ``ppo_vllm_thread_ray_gtrl.py``: responses that do not contain the stop token
(EOS) get ``penalty_reward_value`` (-10) *instead of* their score (``torch.where``, not added), and every
token pays ``-β·KL(π || π_ref)``. One deliberate difference: open-instruct (like TRL) adds the score one
position *after* the last response token when that position exists (``sequence_lengths_p1``), where the
value mask still includes it; we add it at the last real token, so GAE sees it inside the mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from megatron_tulu.losses.masked import check_same_shape, masked_mean
from megatron_tulu.losses.kl import kl_estimate


def last_token_index(mask: Tensor) -> Tensor:
    """[B] index of the last set entry of each row of ``mask [B, T]``; raises if a row is empty."""
    m = mask.bool()
    empty = (~m.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(f"mask: responses {empty.tolist()[:8]} have no real token (empty response)")
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    return torch.where(m, positions, -1).max(dim=1).values


@torch.no_grad()
def shape_rewards(
    verifier_scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float = 0.05,
    kl_kind: str = "k1",
    eos_found: Tensor | None = None,
    non_eos_penalty: float | None = -10.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO rewards: ``-kl_coef * KL_t`` on every token, plus the score on the last real token.

    Args:
        verifier_scores: [B] already-scaled verifier rewards (α·verifier, α = 10 in Tülu 3).
        logp: [B, T] logprobs of the response tokens under the policy that sampled them.
        ref_logp: [B, T] logprobs of the same tokens under the frozen reference policy.
        mask: [B, T] 1 for real response tokens (right-padded, at least one per row).
        kl_coef: β (Tülu 3 8B: 0.05 ... 0.1 depending on the run).
        kl_kind: KL estimator, "k1" (open-instruct default), "k2" or "k3".
        eos_found: [B] bool, True when the response ended with the stop token (EOS); None = all did.
        non_eos_penalty: score given instead of the verifier score when ``eos_found`` is False;
            None disables the penalty.

    Returns:
        token_rewards [B, T] float32 (zero on padding) and metrics, 0-dim float32 tensors:
        ``kl_token_mean`` (per-token KL), ``kl_seq_mean`` (per-response summed KL), ``score_mean``
        (after the penalty), ``verifier_score_mean`` (before), ``non_eos_frac``, ``rlhf_reward_mean``
        (score - β·ΣKL per response, the objective PPO maximises).
    """
    check_same_shape(logp=logp, ref_logp=ref_logp, mask=mask)
    B = mask.shape[0]
    if verifier_scores.shape != (B,):
        raise ValueError(f"verifier_scores must be [B]=[{B}], got {tuple(verifier_scores.shape)}")
    if eos_found is None:
        eos_found = torch.ones(B, dtype=torch.bool, device=mask.device)
    elif eos_found.shape != (B,):
        raise ValueError(f"eos_found must be [B]=[{B}], got {tuple(eos_found.shape)}")

    m = mask.float()
    kl = kl_estimate(logp, ref_logp, kl_kind) * m
    raw = verifier_scores.float()
    eos = eos_found.bool()
    scores = raw if non_eos_penalty is None else torch.where(eos, raw, torch.full_like(raw, non_eos_penalty))

    rewards = -kl_coef * kl
    rewards[torch.arange(B, device=mask.device), last_token_index(mask)] += scores

    kl_seq = kl.sum(dim=1)
    metrics = {
        "kl_token_mean": masked_mean(kl, mask),
        "kl_seq_mean": kl_seq.mean(),
        "score_mean": scores.mean(),
        "verifier_score_mean": raw.mean(),
        "non_eos_frac": (~eos).float().mean(),
        "rlhf_reward_mean": (scores - kl_coef * kl_seq).mean(),
    }
    return rewards, metrics
