"""Plain-torch reference for the fused DPO kernel, built on the pure losses in ``megatron_tulu.losses.dpo``."""

from __future__ import annotations

import torch

from megatron_tulu.losses.dpo import dpo_loss_from_token_logps


def dpo_loss_reference(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    loss_type: str = "dpo",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    gamma_beta_ratio: float = 0.3,
    rejected_policy_logps: torch.Tensor | None = None,
    rejected_ref_logps: torch.Tensor | None = None,
    rejected_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Same contract as :func:`kernels.dpo_loss.fused_dpo_loss` (stacked ``[2B, T]`` or separate layout)."""
    if rejected_policy_logps is not None:
        t = max(policy_logps.shape[1], rejected_policy_logps.shape[1])
        pad = lambda x, v: torch.nn.functional.pad(x, (0, t - x.shape[1]), value=v)  # noqa: E731
        policy_logps = torch.cat([pad(policy_logps, 0.0), pad(rejected_policy_logps, 0.0)])
        mask = torch.cat([pad(mask, 0), pad(rejected_mask, 0)])
        if ref_logps is not None:
            ref_logps = torch.cat([pad(ref_logps, 0.0), pad(rejected_ref_logps, 0.0)])
    ref = ref_logps.detach() if (ref_logps is not None and loss_type != "simpo") else None
    return dpo_loss_from_token_logps(loss_type, policy_logps, ref, mask.bool(), beta=beta,
                                     label_smoothing=label_smoothing, gamma_beta_ratio=gamma_beta_ratio)
