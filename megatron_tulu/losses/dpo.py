"""DPO-family preference losses as pure functions (formulas follow open-instruct's ``dpo_utils``).

Every loss in :data:`DPO_LOSSES` takes the same arguments, all ``[B]`` (one entry per preference pair):

* ``chosen_logps`` / ``rejected_logps``: the policy's per-sequence SUMMED log-probs over response tokens;
* ``ref_chosen_logps`` / ``ref_rejected_logps``: the same under the frozen reference (None for ``simpo``);
* ``chosen_tokens`` / ``rejected_tokens``: number of response (loss-mask) tokens in each sequence;

plus keyword hyper-parameters ``beta``, ``label_smoothing`` and ``gamma_beta_ratio`` (SimPO). Each loss
decides whether it uses sums or length-normalised means (``sum / tokens``; a sequence with no response
tokens counts as 1 token so it contributes 0 instead of NaN). Each returns ``(loss, metrics)``: ``loss`` is
the scalar mean over pairs (differentiable through the policy logps only; reference logps are constants),
``metrics`` a dict of detached scalars: ``rewards/chosen``, ``rewards/rejected``, ``rewards/margin``,
``rewards/accuracy``, ``logps/chosen``, ``logps/rejected`` (the per-sequence logps the loss used).

Losses:

* ``dpo`` (sigmoid; Rafailov et al. 2023, conservative/label-smoothed form of Mitchell 2023):
  ``x = beta * ((pc - rc) - (pr - rr))``, ``l = -(1-eps) log sig(x) - eps log sig(-x)`` on summed logps.
* ``dpo_norm`` (Tülu 3): the same on length-normalised logps (Tülu 3 uses beta = 5).
* ``ipo`` (Azar et al. 2023): ``l = (h - 1/(2 beta))^2`` with ``h = (pc - rc) - (pr - rr)`` on
  length-normalised logps (as TRL does); label smoothing does not apply.
* ``simpo`` (Meng et al. 2024): reference-free, ``x = beta * (pc - pr - gamma_beta_ratio)`` on
  length-normalised logps, sigmoid loss with label smoothing; rewards are ``beta * p``.
* ``wpo`` (Zhou et al. 2024): ``dpo`` on summed logps, each pair weighted by
  ``w = min(1, exp(mean_c + mean_r))`` where ``mean`` are the policy's length-normalised logps. The weight
  is a constant in backward (stop-gradient, as in the WPO paper; open-instruct lets gradient flow through it).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, average: bool) -> torch.Tensor:
    """Per-sequence log-prob from per-token log-probs.

    Args:
        token_logps: ``[B, T]`` log p of each target token (any value at masked positions, NaN excluded).
        mask: ``[B, T]`` bool/0-1, True at response tokens that count (prompt and padding are False).
        average: True for the mean over counted tokens (a row with none gives 0), False for the sum.
    Returns:
        ``[B]`` in ``token_logps``'s dtype (fp32 for bf16/fp16 inputs).
    """
    if token_logps.shape != mask.shape or token_logps.dim() != 2:
        raise ValueError(f"sequence_logps: token_logps {tuple(token_logps.shape)} and mask {tuple(mask.shape)} must both be [B, T]")
    x = token_logps.float() if token_logps.dtype in (torch.bfloat16, torch.float16) else token_logps
    m = mask.to(x.dtype)
    total = torch.where(m > 0, x, torch.zeros_like(x)).sum(-1)
    if not average:
        return total
    return total / m.sum(-1).clamp(min=1)


def _mean_logps(logps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return logps / tokens.to(logps.dtype).clamp(min=1)


def _sigmoid_loss(x: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """``-(1-eps) log sig(x) - eps log sig(-x)``, per element ``[B]``."""
    return -F.logsigmoid(x) * (1 - label_smoothing) - F.logsigmoid(-x) * label_smoothing


def _metrics(chosen_rewards, rejected_rewards, pc, pr) -> Metrics:
    cr, rr = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rr.mean(),
        "rewards/margin": (cr - rr).mean(),
        "rewards/accuracy": (cr > rr).to(cr.dtype).mean(),
        "logps/chosen": pc.detach().mean(),
        "logps/rejected": pr.detach().mean(),
    }


def _need_ref(name: str, *refs) -> None:
    if any(r is None for r in refs):
        raise ValueError(f"DPO loss {name!r} needs ref_chosen_logps and ref_rejected_logps (got None)")


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_tokens=None,
             rejected_tokens=None, *, beta: float = 0.1, label_smoothing: float = 0.0, **_unused) -> tuple[torch.Tensor, Metrics]:
    """Sigmoid DPO on summed logps. All inputs ``[B]``; returns (scalar loss, metrics)."""
    _need_ref("dpo", ref_chosen_logps, ref_rejected_logps)
    return _dpo_on(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, label_smoothing)


def _dpo_on(pc, pr, rc, rr, beta, label_smoothing, weights=None):
    logits = (pc - rc) - (pr - rr)
    losses = _sigmoid_loss(beta * logits, label_smoothing)
    if weights is not None:
        losses = losses * weights
    return losses.mean(), _metrics(beta * (pc - rc), beta * (pr - rr), pc, pr)


def dpo_norm_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_tokens,
                  rejected_tokens, *, beta: float = 5.0, label_smoothing: float = 0.0, **_unused) -> tuple[torch.Tensor, Metrics]:
    """Tülu 3's length-normalised DPO: sigmoid DPO on ``logps / tokens`` (policy and reference). ``[B]`` inputs."""
    _need_ref("dpo_norm", ref_chosen_logps, ref_rejected_logps)
    pc, pr = _mean_logps(chosen_logps, chosen_tokens), _mean_logps(rejected_logps, rejected_tokens)
    rc, rr = _mean_logps(ref_chosen_logps, chosen_tokens), _mean_logps(ref_rejected_logps, rejected_tokens)
    return _dpo_on(pc, pr, rc, rr, beta, label_smoothing)


def ipo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_tokens,
             rejected_tokens, *, beta: float = 0.1, **_unused) -> tuple[torch.Tensor, Metrics]:
    """IPO: ``((pc - rc) - (pr - rr) - 1/(2 beta))^2`` on length-normalised logps. ``[B]`` inputs."""
    _need_ref("ipo", ref_chosen_logps, ref_rejected_logps)
    pc, pr = _mean_logps(chosen_logps, chosen_tokens), _mean_logps(rejected_logps, rejected_tokens)
    rc, rr = _mean_logps(ref_chosen_logps, chosen_tokens), _mean_logps(ref_rejected_logps, rejected_tokens)
    logits = (pc - rc) - (pr - rr)
    losses = (logits - 1.0 / (2.0 * beta)) ** 2
    return losses.mean(), _metrics(beta * (pc - rc), beta * (pr - rr), pc, pr)


def simpo_loss(chosen_logps, rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, chosen_tokens=None,
               rejected_tokens=None, *, beta: float = 2.0, label_smoothing: float = 0.0, gamma_beta_ratio: float = 0.3,
               **_unused) -> tuple[torch.Tensor, Metrics]:
    """SimPO (reference-free): sigmoid loss on ``beta * (pc - pr - gamma_beta_ratio)``, length-normalised logps."""
    if chosen_tokens is None or rejected_tokens is None:
        raise ValueError("DPO loss 'simpo' needs chosen_tokens and rejected_tokens (it length-normalises)")
    pc, pr = _mean_logps(chosen_logps, chosen_tokens), _mean_logps(rejected_logps, rejected_tokens)
    losses = _sigmoid_loss(beta * (pc - pr - gamma_beta_ratio), label_smoothing)
    return losses.mean(), _metrics(beta * pc, beta * pr, pc, pr)


def wpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_tokens, rejected_tokens,
             *, beta: float = 0.1, label_smoothing: float = 0.0, **_unused) -> tuple[torch.Tensor, Metrics]:
    """WPO: sigmoid DPO on summed logps, weighted by ``min(1, exp(mean_c + mean_r))`` (stop-gradient)."""
    _need_ref("wpo", ref_chosen_logps, ref_rejected_logps)
    w = torch.exp(_mean_logps(chosen_logps, chosen_tokens) + _mean_logps(rejected_logps, rejected_tokens))
    w = w.detach().clamp(max=1.0)
    loss, metrics = _dpo_on(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                            label_smoothing, weights=w)
    metrics["wpo/weight"] = w.mean()
    return loss, metrics


DPO_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, Metrics]]] = {
    "dpo": dpo_loss,
    "dpo_norm": dpo_norm_loss,
    "ipo": ipo_loss,
    "simpo": simpo_loss,
    "wpo": wpo_loss,
}
"""Loss name (the DPO config's ``loss_type``) -> pure loss function with the common signature above."""

NEEDS_REFERENCE = {"dpo": True, "dpo_norm": True, "ipo": True, "simpo": False, "wpo": True}
"""Whether a loss reads the reference model's logps (SimPO does not, so the stage can skip the reference pass)."""


def get_dpo_loss(name: str) -> Callable[..., tuple[torch.Tensor, Metrics]]:
    """The loss registered under ``name``; a clear error naming the choices otherwise."""
    try:
        return DPO_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown DPO loss_type {name!r}; choose one of {sorted(DPO_LOSSES)}") from None


def dpo_loss_from_token_logps(name: str, policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor | None,
                              mask: torch.Tensor, **hparams) -> tuple[torch.Tensor, Metrics]:
    """Convenience: the named loss from per-token logps of chosen and rejected stacked along the batch.

    Args:
        policy_token_logps: ``[2B, T]``; rows ``0..B-1`` are the chosen responses, ``B..2B-1`` the rejected
            ones of the same pairs (open-instruct's concatenated-forward layout).
        ref_token_logps: ``[2B, T]`` reference logps (None only for ``simpo``).
        mask: ``[2B, T]`` True at response tokens.
        **hparams: ``beta``, ``label_smoothing``, ``gamma_beta_ratio``.
    Returns:
        ``(loss, metrics)`` as every :data:`DPO_LOSSES` entry.
    """
    fn = get_dpo_loss(name)
    if policy_token_logps.shape[0] % 2:
        raise ValueError(f"policy_token_logps has {policy_token_logps.shape[0]} rows; chosen+rejected stacking needs an even count")
    b = policy_token_logps.shape[0] // 2
    pol = sequence_logps(policy_token_logps, mask, average=False)
    tokens = mask.sum(-1)
    ref = sequence_logps(ref_token_logps, mask, average=False) if ref_token_logps is not None else None
    return fn(pol[:b], pol[b:], None if ref is None else ref[:b], None if ref is None else ref[b:], tokens[:b],
              tokens[b:], **hparams)
