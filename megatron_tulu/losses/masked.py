"""Masked reductions shared by advantages, reward shaping and the RL losses.

All take ``mask`` of the same shape as ``x`` (1/True for real tokens, 0/False for padding); padded entries
never contribute, whatever value (even NaN-free garbage) they hold. Sums are accumulated in float32 or
wider so that bf16 inputs do not lose the mean.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

AllReduce = Callable[[Tensor], Tensor]
"""Sums a tensor over the ranks that share the statistic (e.g. DP ranks) and returns the sum.

Pure functions take one of these instead of a process group, e.g.
``lambda t: (torch.distributed.all_reduce(t, group=dp_group), t)[1]``.
"""


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ValueError naming the arguments when the given tensors differ in shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is set; over all entries (0-dim) or along ``dim``."""
    # where() rather than multiply: 0 * inf = nan would leak padding garbage into the sum.
    x = torch.where(mask.bool(), x.float(), 0.0)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is set (0 where nothing is set)."""
    count = mask.float().sum() if dim is None else mask.float().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_mean_var(
    x: Tensor, mask: Tensor, unbiased: bool = True, all_reduce: AllReduce | None = None
) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``x`` over masked entries, global over ranks when ``all_reduce`` is given.

    Two passes (sum/count, then sum of squared deviations) in float64: the one-pass E[x²]-E[x]² form loses
    all precision when the mean is large relative to the spread (e.g. rewards of 10 ± 0.01).
    """
    m = mask.bool()
    x64 = torch.where(m, x.double(), 0.0)
    stats = torch.stack([x64.sum(), m.double().sum()])
    if all_reduce is not None:
        stats = all_reduce(stats)
    total, count = stats[0], stats[1]
    if count < 1 + int(unbiased):
        raise ValueError(f"masked_mean_var: need at least {1 + int(unbiased)} masked entries, got {int(count)}")
    mean = total / count
    sq = torch.where(m, (x.double() - mean) ** 2, 0.0).sum()
    if all_reduce is not None:
        sq = all_reduce(sq.reshape(1))[0]
    var = sq / (count - 1 if unbiased else count)
    return mean.to(torch.float32), var.to(torch.float32)
