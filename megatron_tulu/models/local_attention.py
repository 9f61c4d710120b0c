"""The local (pure torch) spec's core attention: megatron's ``DotProductAttention`` plus the two inputs it refuses.

- Packed rows in THD format (``PackedSeqParams``, see ``models.packed``): queries/keys/values ``[t, np, hn]`` with
  documents delimited by ``cu_seqlens``; each document runs its own causal attention (what TE's varlen kernels
  compute).
- Context parallelism (see ``models.context_parallel``): this rank's queries ``[s/cp, b, np, hn]`` against K/V
  all-gathered over the CP group ``[s, b, ng, hn]``, with the causal (and optional dense user) mask in global
  positions. The all-gather's backward reduce-scatters the K/V gradient to the ranks that own those tokens.
"""

from __future__ import annotations

import copy

import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention

from megatron_tulu.models.context_parallel import gathered_positions, local_positions


class LocalAttention(DotProductAttention):
    """``DotProductAttention`` that also takes THD packed rows and context-parallel sequence shards."""

    def __init__(self, config, *args, **kwargs):
        local = copy.copy(config)
        local.context_parallel_size = 1  # megatron's class refuses CP; the split is handled in forward
        super().__init__(local, *args, **kwargs)
        self.config = config

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None:
            if packed_seq_params.qkv_format != "thd" or self.config.context_parallel_size > 1:
                raise ValueError("the local spec takes packed rows in THD format and without context parallelism")
            # one causal attention per document: sum(len_i^2) work, never the [t, t] scores of the flattened rows
            cu = packed_seq_params.cu_seqlens_q.tolist()
            attend = super().forward  # (zero-argument super() does not work inside a comprehension before 3.12)
            outs = [attend(query[a:b].unsqueeze(1), key[a:b].unsqueeze(1), value[a:b].unsqueeze(1), None,
                           attn_mask_type, attention_bias) for a, b in zip(cu, cu[1:])]
            return torch.cat(outs).squeeze(1)  # [t, hp]; megatron restores the dummy batch dimension
        if self.config.context_parallel_size == 1:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
        return self._context_parallel(query, key, value, attention_mask, attn_mask_type, attention_bias)

    def _context_parallel(self, query, key, value, attention_mask, attn_mask_type, attention_bias):
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

        group = ps.get_context_parallel_group()
        cp, rank = group.size(), ps.get_context_parallel_rank()
        s = query.shape[0] * cp
        key = gather_from_sequence_parallel_region(key, tensor_parallel_output_grad=True, group=group)
        value = gather_from_sequence_parallel_region(value, tensor_parallel_output_grad=True, group=group)
        kpos = gathered_positions(s, cp, query.device)
        qpos = local_positions(s, cp, rank, query.device)
        mask = (kpos.unsqueeze(0) > qpos.unsqueeze(1)).view(1, 1, len(qpos), s)  # True = masked (future keys)
        if attention_mask is not None:  # [b, 1, s/cp, s], keys in global order -> gathered order
            mask = mask | attention_mask.index_select(3, kpos)
        return super().forward(query, key, value, mask, attn_mask_type, attention_bias)
