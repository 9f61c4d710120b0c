"""DAPO's group filter (Yu et al. 2025, §3.2 "Dynamic Sampling"): which prompt groups carry a learning signal.

Under a group baseline (``grpo``, ``dr_grpo``, ``rloo``) a group whose K rewards are all equal has zero advantage on
every response, so it adds nothing to the policy gradient but dilutes a token-mean loss. The refill loop that
replaces such groups with fresh prompts lives in ``trainers/rlvr/dynamic_sampling.py``.
"""

from __future__ import annotations

from torch import Tensor


def groups_with_signal(rewards: Tensor, group_size: int) -> Tensor:
    """Groups whose rewards are not all equal.

    Args:
        rewards: [S] final per-response rewards (what the advantage estimator sees), S = G·K, the K responses of
            a prompt consecutive (the rollout order).
        group_size: K >= 2.
    Returns:
        [G] bool, True for a group to keep (max != min), in group order.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [S], got {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} (need K >= 2)")
    g = rewards.reshape(-1, group_size)
    return g.amax(1) != g.amin(1)


__all__ = ["groups_with_signal"]
