"""Advantage estimators: GAE for PPO (with a value model), group-normalised scores for GRPO, whitening.

Shapes: B responses, T response tokens (right-padded), ``mask [B, T]`` 1 for real response tokens.
Registered by name in ``ADVANTAGE_ESTIMATORS``; the two take different inputs (GAE needs per-token rewards
and values, GRPO only one score per response), so the RLVR trainer picks the call by algorithm.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from megatron_tulu.losses.masked import AllReduce, check_same_shape, masked_mean_var

WHITEN_EPS = 1e-8


@torch.no_grad()
def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation over response tokens.

    δ_t = r_t + γ V_{t+1} - V_t,  A_t = δ_t + γλ A_{t+1}, with V and A zero after the last real token.
    Masked-out positions are skipped (the recursion carries over them), which is exact for right padding
    and also correct for masks with holes (e.g. tool output inside a multi-turn response).

    Args:
        token_rewards: [B, T] per-token rewards (e.g. from ``shape_rewards``); padding ignored.
        values: [B, T] value-model predictions V(s_t) for each response token; padding ignored.
        mask: [B, T] 1 for real response tokens.
        gamma: discount (Tülu 3: 1.0).
        lam: GAE λ (Tülu 3: 0.95).

    Returns:
        (advantages [B, T], returns [B, T]) in float32, zero at masked positions; returns = A + V are the
        value-model targets. Advantages are NOT whitened here (see ``whiten``).
    """
    check_same_shape(token_rewards=token_rewards, values=values, mask=mask)
    m = mask.float()
    r = token_rewards.float() * m
    v = values.float() * m
    next_value = torch.zeros_like(v[:, 0])
    last_gae = torch.zeros_like(v[:, 0])
    adv = torch.zeros_like(v)
    # T is a few thousand at most and each step is a [B] vector op; a scan kernel is not worth it here.
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        new_gae = delta + gamma * lam * last_gae
        mt = m[:, t]
        last_gae = mt * new_gae + (1 - mt) * last_gae
        next_value = mt * v[:, t] + (1 - mt) * next_value
        adv[:, t] = last_gae
    adv = adv * m
    return adv, (adv + v) * m


@torch.no_grad()
def whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    all_reduce: AllReduce | None = None,
    unbiased: bool = True,
) -> Tensor:
    """Normalise ``x`` to unit variance (and zero mean if ``shift_mean``) over its masked entries.

    Args:
        x: [B, T] (or any shape) values, e.g. GAE advantages.
        mask: same shape as ``x``; only set entries enter the statistics.
        shift_mean: subtract the mean (True for advantages; False keeps the mean, used for reward whitening).
        all_reduce: sums a tensor over the ranks whose entries share the statistics (e.g. all DP ranks of
            one rollout batch). None = statistics of this tensor only.
        unbiased: Bessel-corrected variance (as open-instruct/TRL ``masked_whiten``).

    Returns:
        float32 tensor shaped like ``x``, zero at masked-out positions.
    """
    check_same_shape(x=x, mask=mask)
    mean, var = masked_mean_var(x, mask, unbiased=unbiased, all_reduce=all_reduce)
    out = (x.float() - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, 0.0)


@torch.no_grad()
def grpo_advantages(scores: Tensor, group_size: int, eps: float = 1e-6, std_normalize: bool = True) -> Tensor:
    """Group-relative advantages (GRPO): each score minus its group's mean, divided by the group's std.

    Args:
        scores: [B] one scalar reward per response, B = prompts * group_size, the ``group_size`` samples
            of a prompt contiguous (as produced by ``repeat_interleave`` of the prompts).
        group_size: K samples per prompt (>= 2: one sample has no group to be relative to).
        eps: added to the std so a group whose scores are all equal gets advantage 0, not NaN.
        std_normalize: divide by the (unbiased) group std; False gives Dr. GRPO's mean-centred scores.

    Returns:
        [B] float32 advantages, one per response; broadcast over its tokens by the loss.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be [B], got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size={group_size}: GRPO needs at least 2 samples per prompt")
    if scores.numel() % group_size:
        raise ValueError(f"scores has {scores.numel()} entries, not a multiple of group_size={group_size}")
    g = scores.float().view(-1, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if std_normalize:
        adv = adv / (g.std(dim=1, keepdim=True) + eps)
    return adv.view(-1)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., object]] = {"gae": gae, "grpo": grpo_advantages}
