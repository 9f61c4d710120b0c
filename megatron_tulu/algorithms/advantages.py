"""Advantage estimators: GAE for PPO (with a value model), group-normalised scores for GRPO, whitening.

Shapes: flat response tokens (``losses.flat``): per-token tensors ``[N]``, ``seq_idx [N]`` the response of each
token, S responses. Estimators are registered by name in ``ADVANTAGE_ESTIMATORS`` with one signature,
``estimator(inputs: AdvantageInputs) -> (advantages [N], returns [N] or None)``, and looked up by the RLVR loop
through ``rlvr.advantage_estimator`` (default: ``rlvr.algorithm``'s preset); each reads the fields of
``AdvantageInputs`` it needs: ``gae`` (PPO), ``grpo`` (group mean / population std), ``dr_grpo`` (group mean
only), ``rloo`` (leave-one-out mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_tulu.losses.flat import check_seq_idx, flatten, to_grid
from megatron_tulu.losses.masked import AllReduce, check_same_shape, masked_mean_var
from megatron_tulu.registry import Registry

WHITEN_EPS = 1e-8


@dataclass
class AdvantageInputs:
    """What an advantage estimator may read (one rollout batch, or this DP rank's share of it)."""

    seq_idx: Tensor
    """[N] int64 response of each token (non-decreasing)."""
    num_seqs: int
    """S: responses in the batch."""
    scores: Tensor
    """[S] float32 final score per response (α·verifier, the non-EOS penalty already applied)."""
    token_rewards: Tensor | None = None
    """[N] per-token rewards (PPO: ``shape_rewards``: score on the last token, -β·KL on every token)."""
    values: Tensor | None = None
    """[N] value-model predictions V(s_t) (PPO)."""
    group_size: int = 1
    """K: consecutive responses that share a prompt (GRPO groups)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE λ."""


ADVANTAGE_ESTIMATORS = Registry("advantage estimator")
"""name -> ``estimator(AdvantageInputs) -> (advantages [N], returns [N] or None)``."""
register_advantage = ADVANTAGE_ESTIMATORS.register


@torch.no_grad()
def gae(
    token_rewards: Tensor, values: Tensor, seq_idx: Tensor, num_seqs: int | None = None, gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation along each response.

    δ_t = r_t + γ V_{t+1} - V_t,  A_t = δ_t + γλ A_{t+1}, with V and A zero after a response's last token.

    Args:
        token_rewards: [N] per-token rewards (e.g. from ``shape_rewards``).
        values: [N] value-model predictions V(s_t) for each response token.
        seq_idx: [N] response of each token.
        num_seqs: S (default: ``seq_idx.max() + 1``).
        gamma: discount (Tülu 3: 1.0).
        lam: GAE λ (Tülu 3: 0.95).

    Returns:
        (advantages [N], returns [N]) in float32; returns = A + V are the value-model targets. Advantages are NOT
        whitened here (see ``whiten``).
    """
    check_same_shape(token_rewards=token_rewards, values=values)
    s = check_seq_idx(seq_idx, values.numel(), num_seqs)
    r, m = to_grid(token_rewards.float(), seq_idx, s)
    v, _ = to_grid(values.float(), seq_idx, s)
    mf = m.float()
    next_value = torch.zeros_like(v[:, 0])
    last_gae = torch.zeros_like(v[:, 0])
    adv = torch.zeros_like(v)
    # T is a few thousand at most and each step is an [S] vector op; a scan kernel is not worth it here.
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        new_gae = delta + gamma * lam * last_gae
        mt = mf[:, t]
        last_gae = mt * new_gae + (1 - mt) * last_gae  # past a response's end (right padding) nothing carries
        next_value = mt * v[:, t] + (1 - mt) * next_value
        adv[:, t] = last_gae
    adv_flat = flatten(adv, m)[0]
    return adv_flat, adv_flat + values.float()


@torch.no_grad()
def whiten(
    x: Tensor,
    mask: Tensor | None = None,
    shift_mean: bool = True,
    all_reduce: AllReduce | None = None,
    unbiased: bool = True,
) -> Tensor:
    """Normalise ``x`` to unit variance (and zero mean if ``shift_mean``) over its (masked) entries.

    Args:
        x: [N] (or any shape) values, e.g. GAE advantages.
        mask: same shape as ``x``; only set entries enter the statistics. None: every entry (flat tokens).
        shift_mean: subtract the mean (True for advantages; False keeps the mean, used for reward whitening).
        all_reduce: sums a tensor over the ranks whose entries share the statistics (e.g. all DP ranks of
            one rollout batch). None = statistics of this tensor only.
        unbiased: Bessel-corrected variance (as open-instruct/TRL ``masked_whiten``).

    Returns:
        float32 tensor shaped like ``x``, zero at masked-out positions.
    """
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    check_same_shape(x=x, mask=mask)
    mean, var = masked_mean_var(x, mask, unbiased=unbiased, all_reduce=all_reduce)
    out = (x.float() - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, 0.0)


GRPO_STD_EPS = 1e-8
"""Added to the group std (open-instruct grpo_fast: ``(scores - mean) / (std + 1e-8)``)."""


def _groups(scores: Tensor, group_size: int, what: str) -> Tensor:
    """``scores [S]`` -> ``[S / K, K]`` float32, raising on a bad shape or group size."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be [S], got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size={group_size}: {what} needs at least 2 samples per prompt")
    if scores.numel() % group_size:
        raise ValueError(f"scores has {scores.numel()} entries, not a multiple of group_size={group_size}")
    return scores.float().view(-1, group_size)


@torch.no_grad()
def grpo_advantages(scores: Tensor, group_size: int, eps: float = GRPO_STD_EPS, std_normalize: bool = True) -> Tensor:
    """Group-relative advantages (GRPO, DeepSeekMath): each score minus its group's mean, divided by the group's std.

    The std is the POPULATION std (ddof=0, divide by K) plus ``eps`` = 1e-8, exactly as open-instruct's grpo_fast
    (``scores_per_prompt.std(axis=-1)`` on a numpy array, whose default is ddof=0, then
    ``(scores - mean) / (std + 1e-8)`` with ``advantage_normalization_type="standard"``).

    Args:
        scores: [S] one scalar reward per response, S = prompts * group_size, the ``group_size`` samples
            of a prompt contiguous (as produced by ``repeat_interleave`` of the prompts).
        group_size: K samples per prompt (>= 2: one sample has no group to be relative to).
        eps: added to the std so a group whose scores are all equal gets advantage 0, not NaN.
        std_normalize: divide by the group std; False gives Dr. GRPO's mean-centred scores (grpo_fast's
            ``advantage_normalization_type="centered"``).

    Returns:
        [S] float32 advantages, one per response (``adv[seq_idx]`` broadcasts them over the tokens).
    """
    g = _groups(scores, group_size, "GRPO")
    adv = g - g.mean(dim=1, keepdim=True)
    if std_normalize:
        adv = adv / (g.std(dim=1, keepdim=True, unbiased=False) + eps)
    return adv.view(-1)


@torch.no_grad()
def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): each score minus the
    mean of the OTHER K-1 scores of its group, A_i = r_i - (Σ_{j≠i} r_j)/(K-1) = K/(K-1)·(r_i - mean).

    Args:
        scores: [S] one reward per response, groups of ``group_size`` contiguous.
        group_size: K (>= 2).
    Returns:
        [S] float32 advantages.
    """
    g = _groups(scores, group_size, "RLOO")
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).view(-1)


@register_advantage("gae")
def gae_estimator(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """PPO (Tülu 3): GAE over ``token_rewards`` and ``values``; returns are the value targets."""
    if inputs.token_rewards is None or inputs.values is None:
        raise ValueError("advantage estimator 'gae' needs token_rewards and values (a value model)")
    return gae(inputs.token_rewards, inputs.values, inputs.seq_idx, inputs.num_seqs, inputs.gamma, inputs.lam)


@register_advantage("grpo")
def grpo_estimator(inputs: AdvantageInputs) -> tuple[Tensor, None]:
    """GRPO: group-normalised ``scores`` (``grpo_advantages``), the same advantage on every token of a response."""
    check_seq_idx(inputs.seq_idx, inputs.seq_idx.numel(), inputs.num_seqs)
    return grpo_advantages(inputs.scores, inputs.group_size)[inputs.seq_idx], None


@register_advantage("dr_grpo")
def dr_grpo_estimator(inputs: AdvantageInputs) -> tuple[Tensor, None]:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): the group-mean-centred score, NOT divided
    by the group std (which up-weights prompts that are too easy or too hard), on every token of a response."""
    check_seq_idx(inputs.seq_idx, inputs.seq_idx.numel(), inputs.num_seqs)
    return grpo_advantages(inputs.scores, inputs.group_size, std_normalize=False)[inputs.seq_idx], None


@register_advantage("rloo")
def rloo_estimator(inputs: AdvantageInputs) -> tuple[Tensor, None]:
    """RLOO: leave-one-out baseline (``rloo_advantages``) on each response's total reward, broadcast over its tokens.

    The total reward is Σ_t token_rewards when the algorithm puts the KL into the reward (``shape_rewards``: the
    score on the last token, -β·KL_t on every token; RLOO's r(x, y) - β·KL, Ahmadian et al. §3), else ``scores``.
    """
    from megatron_tulu.losses.flat import seq_sum

    s = check_seq_idx(inputs.seq_idx, inputs.seq_idx.numel(), inputs.num_seqs)
    total = inputs.scores if inputs.token_rewards is None else seq_sum(inputs.token_rewards, inputs.seq_idx, s)
    return rloo_advantages(total, inputs.group_size)[inputs.seq_idx], None
