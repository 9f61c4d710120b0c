"""PPO / GRPO policy losses and the clipped value loss (pure functions, like verl's core_algos).

Shapes: B responses, T response tokens, ``mask [B, T]`` 1 for real response tokens. Every loss returns
``(loss, metrics)``: a 0-dim float32 loss with the graph attached and a dict of detached 0-dim float32
tensors (kept as tensors so that logging does not force a device sync per micro-batch).

Policy losses are registered in ``POLICY_LOSSES`` with one signature, so the trainer calls
``POLICY_LOSSES[cfg.algorithm](logp, old_logp, advantages, mask, ref_logp=..., **loss_kwargs)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from megatron_tulu.losses.kl import kl_estimate, logprob_mismatch  # noqa: F401  (re-exported)
from megatron_tulu.losses.masked import check_same_shape, masked_mean, masked_sum

REDUCTIONS = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum")


def aggregate(loss_mat: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar over the masked tokens.

    token-mean:          Σ loss / Σ mask  (every token weighs the same; open-instruct, DAPO)
    token-sum:           Σ loss           (the caller divides by a global token count, e.g. over all
                                           micro-batches and DP ranks, as megatron's loss convention does)
    seq-mean-token-mean: mean over responses of each response's token mean (original GRPO)
    seq-mean-token-sum:  mean over responses of each response's token sum
    """
    if reduction == "token-mean":
        return masked_mean(loss_mat, mask)
    if reduction == "token-sum":
        return masked_sum(loss_mat, mask)
    if reduction == "seq-mean-token-mean":
        return masked_mean(loss_mat, mask, dim=1).mean()
    if reduction == "seq-mean-token-sum":
        return masked_sum(loss_mat, mask, dim=1).mean()
    raise ValueError(f"reduction={reduction!r} unknown; choose one of {REDUCTIONS}")


def _token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """[B] (one per response, GRPO) or [B, T] advantages -> [B, T] float32."""
    if advantages.dim() == 1 and advantages.shape[0] == mask.shape[0]:
        return advantages.float()[:, None].expand(mask.shape)
    check_same_shape(advantages=advantages, mask=mask)
    return advantages.float()


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    reduction: str = "token-mean",
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate: mean of w·max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε_high)) with ρ = exp(logp - old_logp) and w the
    per-token importance weights (1 when not given).

    Args:
        logp: [B, T] logprobs of the sampled tokens under the policy being trained (requires grad).
        old_logp: [B, T] logprobs of the same tokens under the policy at rollout time (no grad).
        advantages: [B, T] per-token advantages (PPO/GAE) or [B] per-response (GRPO), no grad.
        mask: [B, T] 1 for real response tokens.
        clip_eps: ε, the lower clip (and upper, unless ``clip_eps_high`` is given).
        clip_eps_high: upper clip ε_high (DAPO "clip-higher"); None = ``clip_eps``.
        reduction: see ``aggregate``.
        ref_logp: [B, T] reference-policy logprobs; needed only when ``kl_coef > 0``.
        kl_coef: weight of a per-token KL(π || π_ref) term added to the loss (GRPO); 0 for Tülu-3 PPO,
            which puts the KL into the reward instead.
        kl_kind: estimator of that term ("k3" as in GRPO).
        is_weights: [B, T] importance weights of the behaviour (rollout) policy, no grad, e.g.
            ``truncated_is_weights``; they scale the surrogate, not the KL term.

    Returns:
        (loss, metrics) with metrics ``clipfrac`` (fraction of tokens where the clipped term is the active
        one), ``approx_kl`` (0.5·(logp - old_logp)² token mean, as open-instruct), ``ratio_mean``,
        ``ratio_max``, ``pg_loss`` (the surrogate alone) and, when ``kl_coef > 0``, ``kl`` (token mean).
    """
    check_same_shape(logp=logp, old_logp=old_logp, mask=mask)
    adv = _token_advantages(advantages, mask)
    log_ratio = logp.float() - old_logp.float()
    ratio = torch.exp(log_ratio)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    loss_mat = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        check_same_shape(is_weights=is_weights, mask=mask)
        loss_mat = loss_mat * is_weights.detach().float()
    pg_loss = aggregate(loss_mat, mask, reduction)

    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask.bool(), ratio, 0.0).max(),
            "pg_loss": pg_loss.detach(),
        }
    if kl_coef == 0.0:
        return pg_loss, metrics
    if ref_logp is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp (the reference policy's logprobs)")
    kl = kl_estimate(logp, ref_logp, kl_kind)
    loss = aggregate(loss_mat + kl_coef * kl, mask, reduction)
    metrics["kl"] = masked_mean(kl.detach(), mask)
    return loss, metrics


def grpo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    reduction: str = "token-mean",
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.05,
    kl_kind: str = "k3",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO: the PPO clipped surrogate on [B] group advantages plus ``kl_coef`` · k3 KL to the reference.

    Same arguments and return as ``ppo_policy_loss``; only the defaults differ (KL in the loss,
    β = 0.05 as open-instruct's GRPO script; the DeepSeekMath paper uses 0.04). Pass ``kl_coef=0`` to
    drop the reference model entirely (DAPO / Dr. GRPO).
    """
    return ppo_policy_loss(
        logp, old_logp, advantages, mask,
        clip_eps=clip_eps, clip_eps_high=clip_eps_high, reduction=reduction,
        ref_logp=ref_logp, kl_coef=kl_coef, kl_kind=kl_kind, is_weights=is_weights,
    )  # fmt: skip


def truncated_is_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated importance sampling (TIS) weights ``min(π_old / π_rollout, cap)`` per token.

    The rollouts come from the engine's weights, which lag the trainer's by up to ``async_steps`` updates and are
    computed by other kernels (vLLM, bf16); ``old_logp`` is the trainer's log-prob of the same tokens before this
    batch's first update. Weighting the surrogate by this ratio makes its gradient an estimate for the trainer's
    policy again; the cap bounds the variance (open-instruct's ``truncated_importance_sampling_ratio_cap``).

    Args:
        old_logp: [B, T] trainer log-probs of the sampled tokens (no grad).
        rollout_logp: [B, T] the engine's log-probs of the same tokens, at the same positions.
        mask: [B, T] 1 for real response tokens.
        cap: upper bound of a weight (> 0).
    Returns:
        [B, T] float32 weights, 1 at masked-out positions.
    """
    check_same_shape(old_logp=old_logp, rollout_logp=rollout_logp, mask=mask)
    if not cap > 0:
        raise ValueError(f"truncated_is_weights: cap must be > 0, got {cap}")
    w = torch.exp(old_logp.detach().float() - rollout_logp.detach().float()).clamp(max=cap)
    return torch.where(mask.bool(), w, torch.ones_like(w))


POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, Tensor]]]] = {
    "ppo": ppo_policy_loss,
    "grpo": grpo_policy_loss,
}


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    reduction: str = "token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: 0.5 · max((V - R)², (clip(V, V_old ± ε) - R)²), reduced over masked tokens.

    Args:
        values: [B, T] current value-model predictions (requires grad).
        old_values: [B, T] predictions at rollout time (no grad), the centre of the clip range.
        returns: [B, T] GAE returns (targets, no grad).
        mask: [B, T] 1 for real response tokens.
        clip_eps: value clip range ε (absolute, in reward units; Tülu 3: 0.2).
        reduction: see ``aggregate``.

    Returns:
        (loss, metrics) with ``vf_clipfrac`` (fraction of tokens where the clipped error is the larger),
        ``value_mean`` and ``returns_mean``; multiply the loss by the value coefficient in the trainer.
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    v, v_old, ret = values.float(), old_values.float(), returns.float()
    v_clipped = v_old + torch.clamp(v - v_old, -clip_eps, clip_eps)
    err_unclipped = (v - ret) ** 2
    err_clipped = (v_clipped - ret) ** 2
    loss = 0.5 * aggregate(torch.maximum(err_unclipped, err_clipped), mask, reduction)
    with torch.no_grad():
        metrics = {
            "vf_clipfrac": masked_mean((err_clipped > err_unclipped).float(), mask),
            "value_mean": masked_mean(v, mask),
            "returns_mean": masked_mean(ret, mask),
        }
    return loss, metrics
