"""Reward-model (Bradley-Terry) loss as a pure function (formula of open-instruct's ``reward_modeling.py``).

A reward model gives one scalar score per sequence (``r_c`` for the chosen, ``r_r`` for the rejected response of
a pair); the Bradley-Terry likelihood of the preference is ``sigmoid(r_c - r_r)``. Two optional terms:

* ``margin`` (Llama 2's RM, Touvron et al. 2023, sec. 3.2.2): a per-pair target margin ``m``, the loss becomes
  ``-log sigmoid(r_c - r_r - m)`` (pairs rated "much better" must be separated by more);
* ``center_coef`` (Eisenstein et al. 2023 "Helping or Herding?"; open-instruct's ``center_rewards_coefficient``):
  ``+ c * mean((r_c + r_r)^2)``, which pulls the scores towards zero mean (the BT loss only sees differences, so
  without it the offset drifts freely; a centred RM makes a better PPO value-model initialisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]

METRICS = ("accuracy", "chosen_score", "rejected_score", "margin")
"""Metric names :func:`bt_loss` returns (means over the pairs)."""


def bt_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, *, margin: torch.Tensor | None = None,
            center_coef: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """Bradley-Terry reward-model loss, the mean over pairs.

    Args:
        chosen_scores: ``[B]`` the reward model's score of each pair's chosen sequence.
        rejected_scores: ``[B]`` the score of the rejected sequence of the same pair.
        margin: ``[B]`` target margin per pair, or None (no margin).
        center_coef: weight of the centring term ``mean((r_c + r_r)^2)`` (0: none).
    Returns:
        ``(loss, metrics)``: ``loss`` a scalar (fp32 for bf16/fp16 scores), differentiable through both score
        tensors; ``metrics`` detached scalars: ``accuracy`` (fraction of pairs with ``r_c > r_r``; ties count as
        wrong), ``chosen_score`` / ``rejected_score`` (mean scores) and ``margin`` (mean ``r_c - r_r``).
    """
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.dim() != 1:
        raise ValueError(f"bt_loss: chosen {tuple(chosen_scores.shape)} and rejected {tuple(rejected_scores.shape)} "
                         "scores must both be [B]")
    rc, rr = chosen_scores.float(), rejected_scores.float()
    diff = rc - rr
    target = diff if margin is None else diff - margin.to(diff)
    loss = -F.logsigmoid(target).mean()
    if center_coef:
        loss = loss + center_coef * ((rc + rr) ** 2).mean()
    with torch.no_grad():
        metrics = {"accuracy": (diff > 0).float().mean(), "chosen_score": rc.mean(), "rejected_score": rr.mean(),
                   "margin": diff.mean()}
    return loss, metrics
