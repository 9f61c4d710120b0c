"""Per-token log-probabilities from vocab-parallel logits (the torch path; ``kernels/`` has the fused one).

Under tensor parallelism each rank holds logits for its vocab shard ``[.., V_pad/tp]``. The log-softmax is
combined across the TP group with all-reduces (max is taken without gradient; the sum of exponentials and
the target logit are differentiable all-reduces). Padded vocab rows (ids >= true vocab) are masked to
-inf so they never take probability mass.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_tulu.models.build import model_chunks


def _tp_group():
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized() or ps.get_tensor_model_parallel_world_size() == 1:
        return None
    return ps.get_tensor_model_parallel_group()


class _AllReduceSumIdentityGrad(torch.autograd.Function):
    """Sum over the TP group forward; identity backward.

    Every rank of the TP group computes the same (replicated) loss from the reduced value, so the gradient
    reaching each rank's local term is already the full one. ``torch.distributed.nn.functional.all_reduce``
    would all-reduce it again and make every gradient ``tp`` times too large (megatron's
    ``reduce_from_tensor_model_parallel_region`` has the same forward/backward pair as this).
    """

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM, differentiable: bool = True) -> torch.Tensor:
    if group is None:
        return x
    if differentiable:
        if op != dist.ReduceOp.SUM:
            raise ValueError("only SUM all-reduces are differentiable here")
        return _AllReduceSumIdentityGrad.apply(x, group)
    x = x.clone()
    dist.all_reduce(x, op=op, group=group)
    return x


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    true_vocab_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    group="auto",
):
    """Log-probability of ``targets`` under softmax(logits / temperature) over the full (sharded) vocab.

    Args:
        logits: ``[..., V_local]`` this rank's vocab shard of the logits (any float dtype; math in fp32).
        targets: ``[...]`` int64 token ids in the global vocab (any value is fine at ignored positions).
        true_vocab_size: global ids at or above this are padding and masked out (None: no padding).
        temperature: divide logits by this first (rollout logprobs use the sampling temperature).
        with_entropy: also return the entropy ``[...]`` of the distribution.
        group: TP process group; ``"auto"`` takes megatron's TP group when TP > 1.
    Returns:
        logprobs ``[...]`` fp32 (and entropy ``[...]`` fp32 when ``with_entropy``).
    """
    if group == "auto":
        group = _tp_group()
    rank = dist.get_rank(group) if group is not None else 0
    v_local = logits.shape[-1]
    start = rank * v_local
    z = logits.float() / temperature
    if true_vocab_size is not None and start + v_local > true_vocab_size:
        ids = torch.arange(start, start + v_local, device=z.device)
        z = z.masked_fill(ids >= true_vocab_size, float("-inf"))
    zmax = _all_reduce(z.detach().amax(dim=-1), group, op=dist.ReduceOp.MAX, differentiable=False)
    shifted = z - zmax.unsqueeze(-1)
    exp = shifted.exp()
    sumexp = _all_reduce(exp.sum(dim=-1), group)
    local = (targets >= start) & (targets < start + v_local)
    idx = (targets - start).clamp(0, v_local - 1).unsqueeze(-1)
    # where, not multiply: a non-local target may gather a padded column (-inf), and -inf * 0 is NaN
    tgt = torch.where(local, torch.gather(shifted, -1, idx).squeeze(-1), torch.zeros((), device=z.device))
    tgt = _all_reduce(tgt, group)
    logsumexp = sumexp.log()
    logprobs = tgt - logsumexp
    if not with_entropy:
        return logprobs
    # H = log Z - E_p[z - max]; padded entries have exp = 0 and contribute nothing (guard -inf * 0).
    pz = torch.where(exp > 0, exp * shifted, torch.zeros_like(exp)).sum(dim=-1)
    pz = _all_reduce(pz, group)
    entropy = logsumexp - pz / sumexp
    return logprobs, entropy


def gather_vocab(logits: torch.Tensor, true_vocab_size: int | None = None, group="auto") -> torch.Tensor:
    """All-gather vocab shards into full logits ``[..., V]`` (padding removed). For checks/eval, not training."""
    if group == "auto":
        group = _tp_group()
    if group is not None:
        parts = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, logits.contiguous(), group=group)
        logits = torch.cat(parts, dim=-1)
    if true_vocab_size is not None:
        logits = logits[..., :true_vocab_size]
    return logits


def full_sequence(hidden: torch.Tensor, config) -> torch.Tensor:
    """Final hidden states ``[s, b, d]`` over the whole sequence. Under sequence parallelism each TP rank holds
    ``s / tp`` of them: all-gather; the backward takes this rank's slice of the incoming gradient (not a
    reduce-scatter), because a head that runs on the gathered states on every TP rank (the fused log-prob
    kernel, which all-reduces its hidden-state gradient itself; a replicated value head) already gives every
    rank the full gradient."""
    if not getattr(config, "sequence_parallel", False):
        return hidden
    from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

    return gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)


def token_logprobs(output: torch.Tensor, targets: torch.Tensor, model, true_vocab_size: int | None,
                   temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs ``[b, s]`` of ``targets [b, s]`` from the model's last-stage output ``[b, s, ·]``
    (``model``: the chunk that produced it, or the rank's chunk list). Under context parallelism the output holds
    this rank's ``s / cp`` tokens; the log-probs come back as full rows (``models.context_parallel``).

    ``output`` is vocab-parallel logits, or hidden states when ``model`` was built with ``head="hidden"``
    (``models.llama``; then the fused kernel runs against the output-layer weight shard).
    """
    from megatron_tulu.models.context_parallel import gather_tokens, local_targets

    m = model_chunks(model)[-1]  # the chunk holding the output layer
    s = targets.shape[1]
    targets = local_targets(targets, m.config)  # under context parallelism the output holds this rank's tokens
    if not getattr(m, "fused_logprob_head", False):
        return gather_tokens(vocab_parallel_logprobs(output, targets, true_vocab_size, temperature), s)
    from kernels.fused_logprob import fused_linear_logprob

    weight = m.output_layer.weight if m.output_layer.weight is not None else m.shared_embedding_or_output_weight()
    group = _tp_group()
    start = (dist.get_rank(group) if group is not None else 0) * weight.shape[0]
    d = output.shape[-1]
    lp = fused_linear_logprob(output.reshape(-1, d), weight, targets.reshape(-1), temperature=temperature,
                              tp_group=group, vocab_start=start, true_vocab_size=true_vocab_size)
    return gather_tokens(lp.view(targets.shape), s)
