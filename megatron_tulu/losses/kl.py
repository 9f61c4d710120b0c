"""Per-token KL estimators (Schulman, "Approximating KL Divergence", 2020) and the rollout/trainer mismatch.

With tokens sampled from the policy π and ``r = log π_ref(x) - log π(x)``, each estimator is an estimate of
KL(π || π_ref) for that token:

  k1 = -r = logp - ref_logp            unbiased, high variance, can be negative
  k2 = r² / 2                          biased, low variance, >= 0
  k3 = exp(r) - r - 1                  unbiased, low variance, >= 0 (used by GRPO as a loss term)

Registered by name in ``KL_ESTIMATORS``. Open-instruct's ``kl1/kl2/kl3`` flags map to ``k1/k2/k3``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from megatron_tulu.losses.masked import check_same_shape, masked_mean

# exp(20) ~ 5e8 still fits fp32 comfortably; a log ratio beyond ±20 means the two models disagree
# completely on the token and the exact k3 value (which would overflow to inf) carries no information.
_K3_LOG_RATIO_CLAMP = 20.0


def _k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


def _k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def _k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    r = (ref_logp - logp).clamp(-_K3_LOG_RATIO_CLAMP, _K3_LOG_RATIO_CLAMP)
    return torch.exp(r) - r - 1.0


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token KL(π || π_ref) estimate.

    Args:
        logp: log π of the sampled tokens, any shape ([N] flat tokens in the RL loop).
        ref_logp: log π_ref of the same tokens, same shape.
        kind: "k1", "k2" or "k3" (see the module docstring).

    Returns:
        estimates shaped like ``logp``, float32 or wider (elementwise: nothing is masked here).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kl kind={kind!r} unknown; choose one of {sorted(KL_ESTIMATORS)}")
    check_same_shape(logp=logp, ref_logp=ref_logp)
    return KL_ESTIMATORS[kind](logp.float(), ref_logp.float())


@torch.no_grad()
def logprob_mismatch(rollout_logp: Tensor, trainer_logp: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
    """How far the rollout engine's logprobs are from the trainer's for the same sampled tokens.

    The early warning for broken weight sync or kernels: with correct sync both see the same weights and the
    numbers are ~1e-3 (bf16 noise); a broken sync shows up as O(1).

    Args:
        rollout_logp: [N] (or [B, T]) logprobs returned by the engine (vLLM/TorchEngine) while sampling.
        trainer_logp: logprobs of the same tokens from the trainer's forward pass (same weights), same shape.
        mask: 1 for real response tokens, same shape; None: every entry is a real token (flat tokens).

    Returns:
        dict of 0-dim float32 tensors: ``mean_abs_diff`` (mean |Δ logprob| per token), ``max_abs_diff``, and
        ``kl`` = k3 estimate of KL(rollout || trainer) averaged per token (tokens were sampled by the rollout).
    """
    if mask is None:
        mask = torch.ones_like(rollout_logp, dtype=torch.bool)
    check_same_shape(rollout_logp=rollout_logp, trainer_logp=trainer_logp, mask=mask)
    diff = (rollout_logp.float() - trainer_logp.float()).abs()
    return {
        "mean_abs_diff": masked_mean(diff, mask),
        "max_abs_diff": torch.where(mask.bool(), diff, 0.0).max() if mask.any() else diff.new_zeros(()),
        "kl": masked_mean(kl_estimate(rollout_logp, trainer_logp, "k3"), mask),
    }
