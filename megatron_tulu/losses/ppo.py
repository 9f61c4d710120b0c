"""PPO / GRPO policy losses and the clipped value loss (pure functions, like verl's core_algos).

Shapes: flat response tokens (``losses.flat``): every per-token tensor is ``[N]``, one entry per real response
token, and ``seq_idx [N]`` names the response of each (so padded rows and packed rows give the same numbers).
Every loss returns ``(loss, metrics)``: a 0-dim float32 loss with the graph attached and a dict of detached 0-dim
float32 tensors (kept as tensors so that logging does not force a device sync per micro-batch).

Policy losses are registered by name in ``POLICY_LOSSES`` with one signature
``loss(logp, old_logp, advantages, seq_idx, *, num_seqs, clip_eps, clip_eps_high, reduction, ref_logp, kl_coef,
kl_kind, is_weights)``; the RLVR loop looks them up by ``rlvr.algorithm``'s preset.
"""

from __future__ import annotations

import torch
from torch import Tensor

from megatron_tulu.losses.flat import check_seq_idx, seq_count, seq_sum
from megatron_tulu.losses.kl import kl_estimate
from megatron_tulu.registry import Registry

REDUCTIONS = ("token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum")

POLICY_LOSSES = Registry("policy loss")
"""name -> ``loss(logp, old_logp, advantages, seq_idx, **options) -> (loss, metrics)``."""
register_policy_loss = POLICY_LOSSES.register


def aggregate(loss_tok: Tensor, seq_idx: Tensor, reduction: str, num_seqs: int | None = None) -> Tensor:
    """Reduce a per-token loss ``[N]`` to a scalar.

    token-mean:          Σ loss / N   (every token weighs the same; open-instruct, DAPO)
    token-sum:           Σ loss       (the caller divides by a global token count, e.g. over all
                                       micro-batches and DP ranks, as megatron's loss convention does)
    seq-mean-token-mean: mean over the S responses of each response's token mean (original GRPO)
    seq-mean-token-sum:  mean over the S responses of each response's token sum
    """
    s = check_seq_idx(seq_idx, loss_tok.numel(), num_seqs)
    if reduction == "token-mean":
        return loss_tok.float().sum() / max(loss_tok.numel(), 1)
    if reduction == "token-sum":
        return loss_tok.float().sum()
    if reduction == "seq-mean-token-mean":
        return (seq_sum(loss_tok, seq_idx, s) / seq_count(seq_idx, s).clamp(min=1.0)).mean()
    if reduction == "seq-mean-token-sum":
        return seq_sum(loss_tok, seq_idx, s).mean()
    raise ValueError(f"reduction={reduction!r} unknown; choose one of {REDUCTIONS}")


def _check_tokens(**tensors: Tensor) -> None:
    """Raise naming the arguments unless every given tensor is ``[N]`` with the same N."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1 or any(len(s) != 1 for s in shapes.values()):
        raise ValueError(f"per-token tensors must all be [N]: {shapes}")


@register_policy_loss("ppo")
def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    seq_idx: Tensor,
    *,
    num_seqs: int | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    reduction: str = "token-mean",
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate: aggregate of w·max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε_high)) with ρ = exp(logp - old_logp) and w
    the per-token importance weights (1 when not given).

    Args:
        logp: [N] logprobs of the sampled tokens under the policy being trained (requires grad).
        old_logp: [N] logprobs of the same tokens under the policy at rollout time (no grad).
        advantages: [N] per-token advantages (no grad; a per-response advantage is ``adv[seq_idx]``).
        seq_idx: [N] response of each token (``losses.flat``).
        num_seqs: S, the responses the per-response reductions average over (default: ``seq_idx.max() + 1``).
        clip_eps: ε, the lower clip (and upper, unless ``clip_eps_high`` is given).
        clip_eps_high: upper clip ε_high (DAPO "clip-higher"); None = ``clip_eps``.
        reduction: see ``aggregate``.
        ref_logp: [N] reference-policy logprobs; needed only when ``kl_coef > 0``.
        kl_coef: weight of a per-token KL(π || π_ref) term added to the loss (GRPO); 0 for Tülu-3 PPO,
            which puts the KL into the reward instead.
        kl_kind: estimator of that term (``losses.kl.KL_ESTIMATORS``).
        is_weights: [N] importance weights of the behaviour (rollout) policy, no grad, e.g.
            ``truncated_is_weights``; they scale the surrogate, not the KL term.

    Returns:
        (loss, metrics) with metrics ``clipfrac`` (fraction of tokens where the clipped term is the active
        one), ``approx_kl`` (0.5·(logp - old_logp)² token mean, as open-instruct), ``ratio_mean``,
        ``ratio_max``, ``pg_loss`` (the surrogate alone) and, when ``kl_coef > 0``, ``kl`` (token mean).
    """
    _check_tokens(logp=logp, old_logp=old_logp, advantages=advantages, is_weights=is_weights, ref_logp=ref_logp)
    log_ratio = logp.float() - old_logp.float()
    ratio = torch.exp(log_ratio)
    adv = advantages.float()
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    loss_tok = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        loss_tok = loss_tok * is_weights.detach().float()
    pg_loss = aggregate(loss_tok, seq_idx, reduction, num_seqs)

    with torch.no_grad():
        n = max(logp.numel(), 1)
        metrics = {
            "clipfrac": (clipped > unclipped).float().sum() / n,
            "approx_kl": (0.5 * log_ratio**2).sum() / n,
            "ratio_mean": ratio.sum() / n,
            "ratio_max": ratio.max() if logp.numel() else ratio.new_zeros(()),
            "pg_loss": pg_loss.detach(),
        }
    if kl_coef == 0.0:
        return pg_loss, metrics
    if ref_logp is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp (the reference policy's logprobs)")
    kl = kl_estimate(logp, ref_logp, kl_kind)
    loss = aggregate(loss_tok + kl_coef * kl, seq_idx, reduction, num_seqs)
    metrics["kl"] = kl.detach().sum() / max(kl.numel(), 1)
    return loss, metrics


@register_policy_loss("grpo")
def grpo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, seq_idx: Tensor,
                     **options) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO: the PPO clipped surrogate on group advantages plus ``kl_coef`` · KL to the reference in the loss.

    Same arguments and return as ``ppo_policy_loss``; only the defaults differ: ``kl_coef=0.05`` (open-instruct's
    GRPO script; the DeepSeekMath paper uses 0.04) and ``kl_kind="k3"``. ``kl_coef=0`` drops the reference term.
    """
    options.setdefault("kl_coef", 0.05)
    return ppo_policy_loss(logp, old_logp, advantages, seq_idx, **options)


def truncated_is_weights(old_logp: Tensor, rollout_logp: Tensor, cap: float) -> Tensor:
    """Truncated importance sampling (TIS) weights ``min(π_old / π_rollout, cap)`` per token.

    The rollouts come from the engine's weights, which lag the trainer's by up to ``async_steps`` updates and are
    computed by other kernels (vLLM, bf16); ``old_logp`` is the trainer's log-prob of the same tokens before this
    batch's first update. Weighting the surrogate by this ratio makes its gradient an estimate for the trainer's
    policy again; the cap bounds the variance (open-instruct's ``truncated_importance_sampling_ratio_cap``).

    Args:
        old_logp: [N] trainer log-probs of the sampled tokens (no grad).
        rollout_logp: [N] the engine's log-probs of the same tokens.
        cap: upper bound of a weight (> 0).
    Returns:
        [N] float32 weights.
    """
    _check_tokens(old_logp=old_logp, rollout_logp=rollout_logp)
    if not cap > 0:
        raise ValueError(f"truncated_is_weights: cap must be > 0, got {cap}")
    return torch.exp(old_logp.detach().float() - rollout_logp.detach().float()).clamp(max=cap)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    seq_idx: Tensor,
    *,
    num_seqs: int | None = None,
    clip_eps: float = 0.2,
    reduction: str = "token-mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: 0.5 · max((V - R)², (clip(V, V_old ± ε) - R)²), aggregated over the tokens.

    Args:
        values: [N] current value-model predictions (requires grad).
        old_values: [N] predictions at rollout time (no grad), the centre of the clip range.
        returns: [N] GAE returns (targets, no grad).
        seq_idx: [N] response of each token.
        num_seqs: see ``ppo_policy_loss``.
        clip_eps: value clip range ε (absolute, in reward units; Tülu 3: 0.2).
        reduction: see ``aggregate``.

    Returns:
        (loss, metrics) with ``vf_clipfrac`` (fraction of tokens where the clipped error is the larger),
        ``value_mean`` and ``returns_mean``; multiply the loss by the value coefficient in the trainer.
    """
    _check_tokens(values=values, old_values=old_values, returns=returns)
    v, v_old, ret = values.float(), old_values.float(), returns.float()
    v_clipped = v_old + torch.clamp(v - v_old, -clip_eps, clip_eps)
    err_unclipped = (v - ret) ** 2
    err_clipped = (v_clipped - ret) ** 2
    loss = 0.5 * aggregate(torch.maximum(err_unclipped, err_clipped), seq_idx, reduction, num_seqs)
    with torch.no_grad():
        n = max(v.numel(), 1)
        metrics = {
            "vf_clipfrac": (err_clipped > err_unclipped).float().sum() / n,
            "value_mean": v.sum() / n,
            "returns_mean": ret.sum() / n,
        }
    return loss, metrics
