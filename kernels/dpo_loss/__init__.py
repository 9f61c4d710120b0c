"""Fused DPO-family loss (dpo, dpo_norm, ipo, simpo) in Triton beside its torch reference.

Both take per-token logps with chosen rows stacked before rejected rows (``[2B, T]``), or separate rejected
tensors via ``rejected_*`` keywords; see :func:`kernels.dpo_loss.triton_impl.fused_dpo_loss`.
"""

from kernels.dpo_loss.reference import dpo_loss_reference
from kernels.dpo_loss.triton_impl import LOSS_IDS, fused_dpo_loss

__all__ = ["LOSS_IDS", "dpo_loss_reference", "fused_dpo_loss"]
