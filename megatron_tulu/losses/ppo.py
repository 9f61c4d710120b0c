"""RL policy losses (clipped PPO/GRPO/DAPO, GSPO, CISPO), loss aggregation and the clipped value loss (pure
functions, like verl's core_algos).

Shapes: flat response tokens (``losses.flat``): every per-token tensor is ``[N]``, one entry per real response
token, and ``seq_idx [N]`` names the response of each (so padded rows and packed rows give the same numbers).
Every loss returns ``(loss, metrics)``: a 0-dim float32 loss with the graph attached and a dict of detached 0-dim
float32 tensors (kept as tensors so that logging does not force a device sync per micro-batch).

Policy losses are registered by name in ``POLICY_LOSSES`` with one signature::

    loss(logp, old_logp, advantages, seq_idx, *, num_seqs=None, clip_low=0.2, clip_high=None,
         loss_agg="token_mean", agg_weights=None, max_tokens=None, ref_logp=None, kl_coef=0.0, kl_kind="k3",
         is_weights=None) -> (loss, metrics)

The RLVR loop looks them up by ``rlvr.policy_loss`` (default: ``rlvr.algorithm``'s preset) and always passes
``agg_weights``: per-token weights computed once over the whole optimizer-step batch (``agg_weights``), so the
loss of a micro-batch is the weighted token SUM and the sum over micro-batches and DP ranks is exactly the
aggregation over the whole batch, however it is split (the trainer's denominator is then 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from megatron_tulu.losses.flat import check_seq_idx, seq_count
from megatron_tulu.losses.kl import kl_estimate
from megatron_tulu.registry import Registry

LOSS_AGGS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "token_sum_norm")
"""Loss aggregations a config may name (``rlvr.loss_agg``):

token_mean:          Σ_t loss_t / N, N the tokens of the batch: every token weighs the same (DAPO §3.3
                     "token-level policy gradient loss"; open-instruct's ``loss_denominator=token``; CISPO).
seq_mean_token_sum:  (1/S) Σ_i Σ_{t∈i} loss_t: REINFORCE on each response's whole log-probability
                     (RLOO, Ahmadian et al. 2024).
seq_mean_token_mean: (1/S) Σ_i (1/|o_i|) Σ_{t∈i} loss_t: the original GRPO (DeepSeekMath eq. 3) and GSPO.
token_sum_norm:      Σ_t loss_t / (max_tokens · S) with a CONSTANT max_tokens (the generation budget,
                     ``rlvr.max_new_tokens``): Dr. GRPO (Liu et al. 2025) removes GRPO's 1/|o_i| length bias.
"""
REDUCTIONS = LOSS_AGGS + ("token_sum",)
"""What ``aggregate`` accepts: the configurable ones plus ``token_sum`` (Σ_t loss_t; the caller divides)."""

POLICY_LOSSES = Registry("policy loss")
"""name -> ``loss(logp, old_logp, advantages, seq_idx, **options) -> (loss, metrics)``."""
register_policy_loss = POLICY_LOSSES.register


def _f(t: Tensor) -> Tensor:
    """float32, or float64 kept (so gradients can be checked in double precision)."""
    return t if t.dtype == torch.float64 else t.float()


def _agg_name(name: str) -> str:
    """Accept the older dashed spellings (``token-mean``) too."""
    return name.replace("-", "_")


def agg_weights(seq_idx: Tensor, loss_agg: str, num_seqs: int | None = None, *, total_tokens: float | None = None,
                total_seqs: float | None = None, max_tokens: int | None = None) -> Tensor:
    """Per-token weights ``w [N]`` such that ``Σ_t w_t·loss_t`` is the ``loss_agg`` aggregation over a batch.

    The weights are computed for the tokens given (``seq_idx``) but normalised by ``total_tokens`` /
    ``total_seqs`` of the whole batch the aggregation runs over (e.g. one optimizer step summed over the DP ranks),
    so a weighted token sum over any subset (a micro-batch) adds up exactly to the whole batch's aggregate.

    Args:
        seq_idx: [N] response of each token.
        loss_agg: one of ``LOSS_AGGS`` (or ``token_sum``: all weights 1).
        num_seqs: S of these tokens (default ``seq_idx.max() + 1``).
        total_tokens: tokens of the whole batch (default N).
        total_seqs: responses of the whole batch (default S).
        max_tokens: the constant of ``token_sum_norm`` (required for it).
    Returns:
        [N] float32 weights (no grad).
    """
    loss_agg = _agg_name(loss_agg)
    s = check_seq_idx(seq_idx, seq_idx.numel(), num_seqs)
    n = seq_idx.numel()
    total_tokens = float(n if total_tokens is None else total_tokens)
    total_seqs = float(s if total_seqs is None else total_seqs)
    ones = torch.ones(n, dtype=torch.float32, device=seq_idx.device)
    if loss_agg == "token_sum":
        return ones
    if loss_agg == "token_mean":
        return ones / max(total_tokens, 1.0)
    if loss_agg == "seq_mean_token_sum":
        return ones / max(total_seqs, 1.0)
    if loss_agg == "seq_mean_token_mean":
        return 1.0 / (seq_count(seq_idx, s).clamp(min=1.0)[seq_idx] * max(total_seqs, 1.0))
    if loss_agg == "token_sum_norm":
        if not max_tokens or max_tokens < 1:
            raise ValueError(f"loss_agg=token_sum_norm needs max_tokens >= 1 (the generation budget), got {max_tokens}")
        return ones / (float(max_tokens) * max(total_seqs, 1.0))
    raise ValueError(f"loss_agg (reduction) {loss_agg!r} unknown; choose one of {'|'.join(REDUCTIONS)}")


def aggregate(loss_tok: Tensor, seq_idx: Tensor, reduction: str, num_seqs: int | None = None,
              max_tokens: int | None = None) -> Tensor:
    """Reduce a per-token loss ``[N]`` to a scalar over this batch (see ``LOSS_AGGS``; ``token_sum`` is the plain
    sum, for a caller that divides by a global count). Equal to ``(loss_tok * agg_weights(...)).sum()``."""
    s = check_seq_idx(seq_idx, loss_tok.numel(), num_seqs)
    name, x = _agg_name(reduction), _f(loss_tok)
    if name == "token_sum":
        return x.sum()
    if name == "token_mean":
        return x.sum() / max(x.numel(), 1)
    if name == "seq_mean_token_sum":
        return x.sum() / max(s, 1)
    if name == "seq_mean_token_mean":
        per_seq = torch.zeros(s, dtype=x.dtype, device=x.device).index_add(0, seq_idx, x)
        return (per_seq / seq_count(seq_idx, s).clamp(min=1.0).to(x.dtype)).sum() / max(s, 1)
    return (x * agg_weights(seq_idx, name, s, max_tokens=max_tokens)).sum()  # token_sum_norm, or raises


def _check_tokens(**tensors: Tensor) -> None:
    """Raise naming the arguments unless every given tensor is ``[N]`` with the same N."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1 or any(len(s) != 1 for s in shapes.values()):
        raise ValueError(f"per-token tensors must all be [N]: {shapes}")


def _finish(loss_tok: Tensor, logp: Tensor, seq_idx: Tensor, metrics: dict[str, Tensor], *, num_seqs, loss_agg,
            agg_weights, max_tokens, ref_logp, kl_coef, kl_kind, is_weights) -> tuple[Tensor, dict[str, Tensor]]:
    """The shared tail of every policy loss: IS weights, the optional β·KL term, the aggregation."""
    if is_weights is not None:
        loss_tok = loss_tok * _f(is_weights.detach())

    def reduce(x: Tensor) -> Tensor:
        if agg_weights is not None:
            return (_f(x) * _f(agg_weights.detach())).sum()
        return aggregate(x, seq_idx, loss_agg, num_seqs, max_tokens)

    pg_loss = reduce(loss_tok)
    metrics["pg_loss"] = pg_loss.detach()
    if kl_coef == 0.0:
        return pg_loss, metrics
    if ref_logp is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp (the reference policy's logprobs)")
    kl = kl_estimate(logp, ref_logp, kl_kind)
    metrics["kl"] = kl.detach().sum() / max(kl.numel(), 1)
    return reduce(loss_tok + kl_coef * kl), metrics


def _ratio_metrics(log_ratio: Tensor, ratio: Tensor, clipped: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        n = max(log_ratio.numel(), 1)
        return {
            "clipfrac": clipped.float().sum() / n,
            "approx_kl": (0.5 * log_ratio.detach() ** 2).sum() / n,
            "ratio_mean": ratio.detach().sum() / n,
            "ratio_max": ratio.detach().max() if log_ratio.numel() else ratio.new_zeros(()),
        }


_COMMON_ARGS = """
        logp: [N] logprobs of the sampled tokens under the policy being trained (requires grad).
        old_logp: [N] logprobs of the same tokens under the policy at rollout time (no grad).
        advantages: [N] per-token advantages (no grad; a per-response advantage is ``adv[seq_idx]``).
        seq_idx: [N] response of each token (``losses.flat``).
        num_seqs: S, the responses the per-response aggregations average over (default: ``seq_idx.max() + 1``).
        clip_low: ε_low, the lower clip: ratios below 1 - ε_low are clipped.
        clip_high: ε_high, the upper clip (DAPO "clip-higher"); None = ``clip_low``.
        loss_agg: aggregation over this batch when ``agg_weights`` is None (``LOSS_AGGS``).
        agg_weights: [N] per-token aggregation weights (``agg_weights``); when given the loss is Σ w·loss_t.
        max_tokens: the constant of ``token_sum_norm``.
        ref_logp: [N] reference-policy logprobs; needed only when ``kl_coef > 0``.
        kl_coef: weight of a per-token KL(π || π_ref) term added to the loss (GRPO); 0 for Tülu-3 PPO,
            which puts the KL into the reward instead.
        kl_kind: estimator of that term (``losses.kl.KL_ESTIMATORS``).
        is_weights: [N] importance weights of the behaviour (rollout) policy, no grad (``algorithms.is_correction``);
            they scale the policy-gradient term, not the KL term."""


@register_policy_loss("ppo")
@register_policy_loss("clipped")
def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    seq_idx: Tensor,
    *,
    num_seqs: int | None = None,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    loss_agg: str = "token_mean",
    agg_weights: Tensor | None = None,
    max_tokens: int | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate (PPO, Schulman et al. 2017; decoupled bounds: DAPO, Yu et al. 2025):
    aggregate of w·max(-A·ρ, -A·clip(ρ, 1-ε_low, 1+ε_high)) with ρ = exp(logp - old_logp) per token and w the
    importance weights (1 when not given). Registered as ``ppo`` and ``clipped``.

    Args:{args}

    Returns:
        (loss, metrics) with metrics ``clipfrac`` (fraction of tokens where the clipped term is the active
        one), ``approx_kl`` (0.5·(logp - old_logp)² token mean, as open-instruct), ``ratio_mean``,
        ``ratio_max``, ``pg_loss`` (the surrogate alone) and, when ``kl_coef > 0``, ``kl`` (token mean).
    """
    _check_tokens(logp=logp, old_logp=old_logp, advantages=advantages, is_weights=is_weights, ref_logp=ref_logp,
                  agg_weights=agg_weights)
    log_ratio = _f(logp) - _f(old_logp)
    ratio = torch.exp(log_ratio)
    adv = _f(advantages)
    eps_high = clip_low if clip_high is None else clip_high
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + eps_high)
    loss_tok = torch.maximum(unclipped, clipped)
    metrics = _ratio_metrics(log_ratio, ratio, clipped > unclipped)
    return _finish(loss_tok, logp, seq_idx, metrics, num_seqs=num_seqs, loss_agg=loss_agg, agg_weights=agg_weights,
                   max_tokens=max_tokens, ref_logp=ref_logp, kl_coef=kl_coef, kl_kind=kl_kind, is_weights=is_weights)


ppo_policy_loss.__doc__ = ppo_policy_loss.__doc__.replace("{args}", _COMMON_ARGS)


@register_policy_loss("grpo")
def grpo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, seq_idx: Tensor,
                     **options) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO: the PPO clipped surrogate on group advantages plus ``kl_coef`` · KL to the reference in the loss.

    Same arguments and return as ``ppo_policy_loss``; only the defaults differ: ``kl_coef=0.05`` (open-instruct's
    GRPO script; the DeepSeekMath paper uses 0.04) and ``kl_kind="k3"``. ``kl_coef=0`` drops the reference term.
    """
    options.setdefault("kl_coef", 0.05)
    return ppo_policy_loss(logp, old_logp, advantages, seq_idx, **options)


@register_policy_loss("gspo")
def gspo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    seq_idx: Tensor,
    *,
    num_seqs: int | None = None,
    clip_low: float = 3e-4,
    clip_high: float | None = 4e-4,
    loss_agg: str = "seq_mean_token_mean",
    agg_weights: Tensor | None = None,
    max_tokens: int | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): a sequence-level ratio and clip.

    s_i = exp((1/|o_i|) Σ_{t∈i} (logp_t - old_logp_t)) (the length-normalised sequence likelihood ratio),
    L_i = max(-A_i·s_i, -A_i·clip(s_i, 1-ε_low, 1+ε_high)) with A_i the response's advantage (the mean of its
    tokens' advantages: the group advantage, the same on every token). Every token of response i carries L_i,
    so with ``seq_mean_token_mean`` (the paper's 1/G Σ_i, the default) the loss is exactly (1/S) Σ_i L_i, and the
    gradient is the paper's (eq. 10): s_i·A_i·(1/|o_i|) Σ_t ∇logp_t for unclipped responses, 0 for clipped ones.
    The paper's clip range is ε_low = 3e-4, ε_high = 4e-4 (§5.1; the ratio is a per-token geometric mean, so it
    stays close to 1). A response's tokens are in one micro-batch (micro-batches are whole rows), so s_i is exact.

    Args:{args}

    Returns:
        (loss, metrics) as ``ppo_policy_loss``; ``clipfrac`` is the fraction of TOKENS in clipped responses,
        ``ratio_mean``/``ratio_max`` are of the per-token ratios (the sequence ratios' mean is ``seq_ratio_mean``).
    """
    _check_tokens(logp=logp, old_logp=old_logp, advantages=advantages, is_weights=is_weights, ref_logp=ref_logp,
                  agg_weights=agg_weights)
    s = check_seq_idx(seq_idx, logp.numel(), num_seqs)
    log_ratio = _f(logp) - _f(old_logp)
    count = seq_count(seq_idx, s).clamp(min=1.0).to(log_ratio.dtype)
    zeros = torch.zeros(s, dtype=log_ratio.dtype, device=logp.device)
    seq_ratio = torch.exp(zeros.index_add(0, seq_idx, log_ratio) / count)  # [S], graph through the response's tokens
    seq_adv = zeros.index_add(0, seq_idx, _f(advantages.detach())) / count
    eps_high = clip_low if clip_high is None else clip_high
    unclipped = -seq_adv * seq_ratio
    clipped = -seq_adv * torch.clamp(seq_ratio, 1.0 - clip_low, 1.0 + eps_high)
    loss_seq = torch.maximum(unclipped, clipped)
    metrics = _ratio_metrics(log_ratio, torch.exp(log_ratio), (clipped > unclipped)[seq_idx])
    with torch.no_grad():
        metrics["seq_ratio_mean"] = seq_ratio.sum() / max(s, 1)
    return _finish(loss_seq[seq_idx], logp, seq_idx, metrics, num_seqs=num_seqs, loss_agg=loss_agg,
                   agg_weights=agg_weights, max_tokens=max_tokens, ref_logp=ref_logp, kl_coef=kl_coef,
                   kl_kind=kl_kind, is_weights=is_weights)


gspo_policy_loss.__doc__ = gspo_policy_loss.__doc__.replace("{args}", _COMMON_ARGS)


@register_policy_loss("cispo")
def cispo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    seq_idx: Tensor,
    *,
    num_seqs: int | None = None,
    clip_low: float = 1.0,
    clip_high: float | None = 0.272,
    loss_agg: str = "token_mean",
    agg_weights: Tensor | None = None,
    max_tokens: int | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, 2025, eq. 4-5): REINFORCE with a clipped, stop-gradient importance weight.

    loss_t = -sg(r̂_t)·A_t·logp_t with r̂_t = clip(ρ_t, 1-ε_low, 1+ε_high), ρ_t = exp(logp_t - old_logp_t). Unlike
    the PPO clip, no token leaves the gradient (the weight is clipped, not the term): ∇loss_t = -r̂_t·A_t·∇logp_t.
    The paper defines both bounds but sets ε_low large so that there is no lower bound, tuning only ε_high (it does
    not publish the value); the defaults here, ε_low = 1 (1-ε_low = 0: no lower bound) and ε_high = 0.272, are
    open-instruct's ``loss_fn=cispo`` (``torch.clamp(ratio.detach(), max=1 + clip_higher)``). The paper's
    aggregation is the token mean over the batch (1/Σ|o_i|).

    Args:{args}

    Returns:
        (loss, metrics) as ``ppo_policy_loss``; ``clipfrac`` is the fraction of tokens whose weight was clipped.
    """
    _check_tokens(logp=logp, old_logp=old_logp, advantages=advantages, is_weights=is_weights, ref_logp=ref_logp,
                  agg_weights=agg_weights)
    log_ratio = _f(logp) - _f(old_logp)
    ratio = torch.exp(log_ratio.detach())
    eps_high = clip_low if clip_high is None else clip_high
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + eps_high)
    loss_tok = -_f(advantages.detach()) * weight * _f(logp)
    metrics = _ratio_metrics(log_ratio, ratio, weight != ratio)
    return _finish(loss_tok, logp, seq_idx, metrics, num_seqs=num_seqs, loss_agg=loss_agg, agg_weights=agg_weights,
                   max_tokens=max_tokens, ref_logp=ref_logp, kl_coef=kl_coef, kl_kind=kl_kind, is_weights=is_weights)


cispo_policy_loss.__doc__ = cispo_policy_loss.__doc__.replace("{args}", _COMMON_ARGS)


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
    reduction: str = "token_mean",
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
