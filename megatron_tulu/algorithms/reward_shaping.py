"""Reward shaping. Tülu 3 PPO reward: verifier score at the end of the response, minus a per-token KL penalty;
DAPO's soft overlong punishment (``overlong_penalty``), a per-response length term any algorithm can add.

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


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, §3.4), per response, to be added to its reward:

        R_length(y) = 0                                   if |y| <= L_max - L_cache
                      ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                      -1                                  if |y| > L_max

    times ``factor`` (verl's ``overlong_penalty_factor``). The paper: L_max = 20480, L_cache = 4096.

    Args:
        lengths: [S] response lengths |y| in tokens (any integer or float dtype).
        max_len: L_max (the generation limit, ``rlvr.max_new_tokens``).
        buffer_len: L_cache, 0 <= L_cache <= L_max; 0 turns the penalty off (all zeros).
        factor: scale of the penalty (>= 0).
    Returns:
        [S] float32 penalties in [-factor, 0].
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be [S], got {tuple(lengths.shape)}")
    if not 0 <= buffer_len <= max_len:
        raise ValueError(f"buffer_len must be in [0, max_len={max_len}], got {buffer_len}")
    n = lengths.float()
    if buffer_len == 0:
        return torch.zeros_like(n)
    free = max_len - buffer_len
    ramp = ((free - n) / buffer_len).clamp(max=0.0)
    return factor * torch.where(n > max_len, torch.full_like(n, -1.0), ramp)


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
    length_penalty: Tensor | None = None,
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
        length_penalty: [S] added to each score after the non-EOS replacement (``overlong_penalty``); None: 0.

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
    if length_penalty is not None:
        scores = scores + length_penalty.float()

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
