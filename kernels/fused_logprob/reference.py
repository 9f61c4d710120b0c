"""Plain-torch reference for the fused linear + logprob kernel (materialises the ``[N, V_local]`` logits).

Under tensor parallelism it follows megatron's gradient convention: the all-reduce of partial sums is the
identity in backward (every rank computes the same loss), and ``hidden``, replicated across the group, gets
its partial gradients all-reduced (megatron's ``copy_to_tensor_model_parallel_region``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _ReduceSum(torch.autograd.Function):
    """Forward: all-reduce SUM over ``group``. Backward: identity (the loss is replicated on every rank)."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


class _CopyToGroup(torch.autograd.Function):
    """Forward: identity. Backward: all-reduce SUM of the partial gradients over ``group``."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def linear_logprob_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    with_entropy: bool = False,
    tp_group=None,
    vocab_start: int = 0,
    true_vocab_size: int | None = None,
    **_unused,
):
    """Same contract as :func:`kernels.fused_logprob.fused_linear_logprob`, in plain torch.

    Math runs in fp32 (fp64 when the inputs are fp64, which is what the tests compare against).

    Args:
        hidden: ``[N, d]``; weight: ``[V_local, d]``; targets: ``[N]`` int64 global ids.
    Returns:
        logprob ``[N]`` (0 at ignored rows), or ``(logprob, entropy)`` when ``with_entropy``.
    """
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    if tp_group is not None:
        hidden = _CopyToGroup.apply(hidden, tp_group)
    z = (hidden.to(acc) @ weight.to(acc).t()) / temperature
    v_local = z.shape[-1]
    if true_vocab_size is not None:
        ids = torch.arange(vocab_start, vocab_start + v_local, device=z.device)
        z = z.masked_fill(ids >= true_vocab_size, float("-inf"))
    zmax = z.detach().amax(dim=-1)
    if tp_group is not None:
        dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=tp_group)
    zmax = torch.where(torch.isinf(zmax), torch.zeros_like(zmax), zmax)
    e = torch.exp(z - zmax[:, None])
    s = e.sum(-1)
    local = (targets >= vocab_start) & (targets < vocab_start + v_local)
    idx = (targets - vocab_start).clamp(0, v_local - 1)
    tz = torch.gather(z, 1, idx[:, None]).squeeze(1) * local
    ez = torch.where(e > 0, e * z, torch.zeros_like(e)).sum(-1) if with_entropy else None
    if tp_group is not None:
        s, tz = _ReduceSum.apply(s, tp_group), _ReduceSum.apply(tz, tp_group)
        ez = _ReduceSum.apply(ez, tp_group) if with_entropy else None
    lse = zmax + torch.log(s)
    valid = targets != ignore_index
    zero = torch.zeros_like(lse)
    logprob = torch.where(valid, tz - lse, zero)
    if not with_entropy:
        return logprob
    return logprob, torch.where(valid, lse - ez / s, zero)
