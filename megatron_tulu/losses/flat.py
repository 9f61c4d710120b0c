"""Flat response tokens: the layout every RL loss, advantage estimator and ``Experience`` tensor uses.

A batch of S responses holding N real tokens in all is a set of ``[N]`` tensors, one entry per real response
token, plus ``seq_idx [N]`` (int64): the response each token belongs to, non-decreasing, so a response's
tokens are contiguous and in order. There is no padding to mask: a padded ``[B, T]`` grid and packed rows
(several responses in one row) flatten to the same tensors, so the RL math never depends on how rows were cut.

``num_seqs`` (S) is passed where responses without any token still count (a per-response mean over S).
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_seq_idx(seq_idx: Tensor, n: int, num_seqs: int | None = None) -> int:
    """Raise ``ValueError`` unless ``seq_idx`` is a non-decreasing int64 ``[n]`` in ``[0, num_seqs)``; returns
    ``num_seqs`` (default: ``seq_idx.max() + 1``)."""
    if seq_idx.dim() != 1 or seq_idx.numel() != n:
        raise ValueError(f"seq_idx must be [N]=[{n}] (one entry per token), got shape {tuple(seq_idx.shape)}")
    if seq_idx.dtype != torch.long:
        raise ValueError(f"seq_idx must be int64, got {seq_idx.dtype}")
    if n and bool((seq_idx[1:] < seq_idx[:-1]).any()):
        raise ValueError("seq_idx must be non-decreasing (each response's tokens contiguous and in order)")
    top = int(seq_idx[-1]) + 1 if n else 0
    if num_seqs is None:
        return top
    if top > num_seqs or (n and int(seq_idx[0]) < 0):
        raise ValueError(f"seq_idx holds indices outside [0, num_seqs={num_seqs})")
    return num_seqs


def flatten(grid: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``grid [B, T]`` at the set entries of ``mask [B, T]``, row-major -> ``(flat [N], seq_idx [N])``."""
    if grid.shape != mask.shape:
        raise ValueError(f"shape mismatch: grid {tuple(grid.shape)}, mask {tuple(mask.shape)}")
    m = mask.bool()
    rows = torch.arange(m.shape[0], device=m.device)[:, None].expand_as(m)
    return grid[m], rows[m]


def seq_sum(x: Tensor, seq_idx: Tensor, num_seqs: int) -> Tensor:
    """``[S]`` float32 sum of each response's tokens (0 for a response without tokens)."""
    return torch.zeros(num_seqs, dtype=torch.float32, device=x.device).index_add(0, seq_idx, x.float())


def seq_count(seq_idx: Tensor, num_seqs: int) -> Tensor:
    """``[S]`` float32 number of tokens of each response."""
    return torch.bincount(seq_idx, minlength=num_seqs).float()


def seq_last(seq_idx: Tensor, num_seqs: int) -> Tensor:
    """``[S]`` index (into the flat tensors) of each response's last token; raises naming empty responses."""
    counts = torch.bincount(seq_idx, minlength=num_seqs)
    empty = (counts == 0).nonzero().flatten()
    if empty.numel():
        raise ValueError(f"responses {empty.tolist()[:8]} have no real token (empty response)")
    return counts.cumsum(0) - 1


def to_grid(x: Tensor, seq_idx: Tensor, num_seqs: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``(grid [S, T_max], mask [S, T_max])`` of flat ``x`` (for recursions along a response)."""
    counts = torch.bincount(seq_idx, minlength=num_seqs)
    starts = counts.cumsum(0) - counts
    pos = torch.arange(x.numel(), device=x.device) - starts[seq_idx]
    width = int(counts.max()) if num_seqs else 0
    grid = x.new_zeros(num_seqs, width)
    mask = torch.zeros(num_seqs, width, dtype=torch.bool, device=x.device)
    grid[seq_idx, pos] = x
    mask[seq_idx, pos] = True
    return grid, mask
