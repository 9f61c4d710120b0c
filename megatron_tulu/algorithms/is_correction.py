"""Importance-sampling corrections for the engine/trainer mismatch, registered by name (``rlvr.is_correction``).

The rollouts come from the engine's weights, which lag the trainer's by up to ``async_steps`` updates and are
computed by other kernels (vLLM, bf16), so the engine's token probabilities π_rollout differ from the trainer's
π_old. A correction turns the ratio ρ_t = π_old(y_t) / π_rollout(y_t) into per-token weights ``[N]`` (no grad) that
scale the policy-gradient term of the loss (``losses.ppo``: ``is_weights``).

Shapes: flat response tokens (``losses.flat``). One signature::

    correction(old_logp [N], rollout_logp [N], seq_idx [N], num_seqs, *, low, high) -> (weights [N], metrics)

with metrics (0-dim float32 tensors): ``is_weight_mean``, ``is_clipped_frac`` (tokens whose weight was
truncated), ``is_masked_frac`` (tokens given weight 0).

  tis       token-level truncated IS: min(ρ_t, high) (Yao et al. 2025, "Your efficient RL framework secretly
            brings you off-policy RL training"; open-instruct ``truncated_importance_sampling_ratio_cap``, 2.0)
  masked    IcePop (Ling team, Ring-1T 2025): weight 1 where ρ_t ∈ [low, high], 0 outside
            (the token leaves the gradient; the paper's band is [0.5, 5])
  sequence  sequence-level truncated IS: min(exp(mean_{t∈i} log ρ_t), high) on every token of response i (the
            geometric-mean ratio, as GSPO's sequence ratio; bounded variance for long responses)
"""

from __future__ import annotations

import torch
from torch import Tensor

from megatron_tulu.losses.flat import check_seq_idx, seq_count, seq_sum
from megatron_tulu.registry import Registry

IS_CORRECTIONS = Registry("importance-sampling correction")
"""name -> ``correction(old_logp, rollout_logp, seq_idx, num_seqs, *, low, high) -> (weights [N], metrics)``."""
register_is_correction = IS_CORRECTIONS.register


def _log_ratio(old_logp: Tensor, rollout_logp: Tensor) -> Tensor:
    if old_logp.shape != rollout_logp.shape or old_logp.dim() != 1:
        raise ValueError(f"old_logp and rollout_logp must both be [N]: {tuple(old_logp.shape)}, "
                         f"{tuple(rollout_logp.shape)}")
    return old_logp.detach().float() - rollout_logp.detach().float()


def _metrics(w: Tensor, clipped: Tensor, masked: Tensor) -> dict[str, Tensor]:
    n = max(w.numel(), 1)
    return {"is_weight_mean": w.sum() / n if w.numel() else w.new_ones(()),
            "is_clipped_frac": clipped.float().sum() / n, "is_masked_frac": masked.float().sum() / n}


@register_is_correction("tis")
@torch.no_grad()
def tis(old_logp: Tensor, rollout_logp: Tensor, seq_idx: Tensor, num_seqs: int | None = None, *, low: float = 0.0,
        high: float = 2.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-level truncated IS: w_t = min(ρ_t, high) (``low`` unused). Returns ([N] float32, metrics)."""
    if not high > 0:
        raise ValueError(f"tis: the cap (is_high) must be > 0, got {high}")
    check_seq_idx(seq_idx, old_logp.numel(), num_seqs)
    ratio = torch.exp(_log_ratio(old_logp, rollout_logp))
    w = ratio.clamp(max=high)
    return w, _metrics(w, ratio > high, torch.zeros_like(ratio, dtype=torch.bool))


@register_is_correction("masked")
@torch.no_grad()
def masked(old_logp: Tensor, rollout_logp: Tensor, seq_idx: Tensor, num_seqs: int | None = None, *,
           low: float = 0.5, high: float = 5.0) -> tuple[Tensor, dict[str, Tensor]]:
    """IcePop: w_t = 1 if low <= ρ_t <= high else 0 (the token is dropped from the gradient, and counted)."""
    if not 0 <= low < 1 < high:
        raise ValueError(f"masked (IcePop): needs 0 <= is_low < 1 < is_high, got [{low}, {high}]")
    check_seq_idx(seq_idx, old_logp.numel(), num_seqs)
    ratio = torch.exp(_log_ratio(old_logp, rollout_logp))
    keep = (ratio >= low) & (ratio <= high)
    w = keep.float()
    return w, _metrics(w, torch.zeros_like(keep), ~keep)


@register_is_correction("sequence")
@torch.no_grad()
def sequence(old_logp: Tensor, rollout_logp: Tensor, seq_idx: Tensor, num_seqs: int | None = None, *,
             low: float = 0.0, high: float = 2.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Sequence-level truncated IS: w_i = min(exp(mean_{t∈i} log ρ_t), high), the same on each token of response
    i (``low`` unused). ``is_clipped_frac`` counts the tokens of truncated responses."""
    if not high > 0:
        raise ValueError(f"sequence: the cap (is_high) must be > 0, got {high}")
    s = check_seq_idx(seq_idx, old_logp.numel(), num_seqs)
    lr = _log_ratio(old_logp, rollout_logp)
    seq_ratio = torch.exp(seq_sum(lr, seq_idx, s) / seq_count(seq_idx, s).clamp(min=1.0))
    w = seq_ratio.clamp(max=high)[seq_idx]
    return w, _metrics(w, (seq_ratio > high)[seq_idx], torch.zeros_like(w, dtype=torch.bool))
