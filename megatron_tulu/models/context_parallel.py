"""Context parallelism (``parallel.cp``): every micro-batch's sequence is split over the CP ranks.

Layout (megatron's load-balanced split, the one its RoPE already assumes via ``get_pos_emb_on_this_cp_rank``):
the sequence is cut into ``2 * cp`` equal chunks and CP rank ``r`` holds chunks ``r`` and ``2cp - 1 - r``, so
under a causal mask every rank does the same attention work.

Data flow, all inside the model seam so the stages' loss functions never see it:

- A model chunk (``models.llama.LlamaGPTModel``) takes the FULL ``input_ids [b, S]`` (and the optional
  ``[b, 1, S, S]`` mask) and feeds megatron only this rank's ``S / cp`` tokens (:func:`local_inputs`: right-padding
  ``S`` to a multiple of ``2 * cp`` first; padding sits after every real token, so causality hides it).
- Attention: the local spec's core attention (``models.local_attention.LocalAttention``) all-gathers K and V
  over the CP group and attends this rank's queries to the whole sequence (Llama 3's all-gather CP). Any mask
  works, including packed SFT's block-causal one; the K/V gradient is reduce-scattered back. The TE spec uses
  Transformer Engine's own CP attention (ring exchange; container only).
- Outputs stay local on the last stage (the ``[b, S/cp, V/tp]`` logits are never gathered); per-token results
  (log-probs, values) are all-gathered into full ``[b, S]`` rows by :func:`gather_tokens`, whose backward keeps
  this rank's slice. Every CP rank then computes the same full-batch loss; megatron's schedule multiplies the
  loss by ``cp`` and DDP averages gradients over DP x CP, which adds up the CP ranks' partial gradients.
"""

from __future__ import annotations

import torch


def _ps():
    from megatron.core import parallel_state as ps

    return ps


def cp_size() -> int:
    ps = _ps()
    if not ps.model_parallel_is_initialized():
        return 1
    return ps.get_context_parallel_world_size()


def padded_length(s: int, cp: int, multiple: int = 1) -> int:
    """``s`` rounded up so it splits into ``2 * cp`` chunks (each a multiple of ``multiple``, e.g. TP under
    sequence parallelism)."""
    step = 2 * cp * multiple
    return -(-s // step) * step


def local_positions(s: int, cp: int, rank: int, device=None) -> torch.Tensor:
    """Global positions ``[s / cp]`` held by CP ``rank`` of a (padded) sequence of length ``s``."""
    if s % (2 * cp):
        raise ValueError(f"sequence length {s} does not split into 2 * cp = {2 * cp} chunks")
    c = s // (2 * cp)
    ar = torch.arange(c, device=device)
    return torch.cat([rank * c + ar, (2 * cp - 1 - rank) * c + ar])


def gathered_positions(s: int, cp: int, device=None) -> torch.Tensor:
    """Global position ``[s]`` of each row of a CP all-gather (rank 0's rows, then rank 1's, ...)."""
    return torch.cat([local_positions(s, cp, r, device) for r in range(cp)])


def _seq_multiple(config) -> int:
    return config.tensor_model_parallel_size if getattr(config, "sequence_parallel", False) else 1


def schedule_seq_length(models, s: int) -> int:
    """The sequence length to hand megatron's schedule for full inputs of length ``s`` (its p2p buffers are
    ``seq_length / cp`` long, so under CP it must be the padded length :func:`local_inputs` cuts)."""
    config = (models[0] if isinstance(models, (list, tuple)) else models).config
    if config.context_parallel_size == 1:
        return s
    return padded_length(s, config.context_parallel_size, _seq_multiple(config))


def split_tokens(x: torch.Tensor, dim: int, s_pad: int, cp: int, rank: int, fill=0) -> torch.Tensor:
    """This rank's part of ``x`` along ``dim`` after right-padding that dim to ``s_pad`` with ``fill``."""
    s = x.shape[dim]
    if s_pad > s:
        shape = list(x.shape)
        shape[dim] = s_pad - s
        x = torch.cat([x, torch.full(shape, fill, dtype=x.dtype, device=x.device)], dim=dim)
    return x.index_select(dim, local_positions(s_pad, cp, rank, x.device))


def local_inputs(input_ids, position_ids, attention_mask, config):
    """This CP rank's part of full inputs ``input_ids``/``position_ids`` ``[b, S]`` and ``attention_mask``
    ``[b, 1, S, S]`` | None, after right-padding ``S`` to a multiple of ``2 * cp`` (padding sits after every real
    token, so causality hides it). The mask keeps this rank's query rows and every key column, in global order."""
    cp = config.context_parallel_size
    rank = _ps().get_context_parallel_rank()
    s = input_ids.shape[1]
    s_pad = padded_length(s, cp, _seq_multiple(config))
    input_ids = split_tokens(input_ids, 1, s_pad, cp, rank)
    if position_ids is not None:
        position_ids = split_tokens(position_ids, 1, s_pad, cp, rank)
    if attention_mask is not None:
        if s_pad > s:
            attention_mask = torch.nn.functional.pad(attention_mask, (0, s_pad - s, 0, s_pad - s), value=True)
        attention_mask = attention_mask.index_select(2, local_positions(s_pad, cp, rank, attention_mask.device))
    return input_ids, position_ids, attention_mask


def gather_tokens(x: torch.Tensor, s: int) -> torch.Tensor:
    """Full rows ``[b, s, ...]`` from this CP rank's per-token results ``[b, s_pad / cp, ...]`` (a no-op without
    CP). Backward keeps this rank's slice of the gradient: every CP rank computes the same loss from the
    gathered rows, so each already holds the full gradient of its own tokens."""
    cp = cp_size()
    if cp == 1:
        return x
    from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

    group = _ps().get_context_parallel_group()
    s_pad = x.shape[1] * cp
    full = gather_from_sequence_parallel_region(x.transpose(0, 1).contiguous(), tensor_parallel_output_grad=False,
                                                group=group)  # [s_pad, b, ...] in gathered order
    order = torch.argsort(gathered_positions(s_pad, cp, x.device))
    return full.index_select(0, order)[:s].transpose(0, 1)


def local_targets(targets: torch.Tensor, config, fill: int = 0) -> torch.Tensor:
    """This CP rank's part of full per-token ``targets [b, S]``, matching the local outputs of a model chunk
    with TransformerConfig ``config`` (a no-op without CP)."""
    cp = config.context_parallel_size
    if cp == 1:
        return targets
    s_pad = padded_length(targets.shape[1], cp, _seq_multiple(config))
    return split_tokens(targets, 1, s_pad, cp, _ps().get_context_parallel_rank(), fill=fill)
