"""Packed rows as megatron's THD format (``PackedSeqParams``): documents separated by ``cu_seqlens`` instead of a
dense ``[b, 1, S, S]`` mask.

This is the format Transformer Engine's attention honours (TE ignores a dense mask under the ``causal`` mask type),
and RoPE restarts its positions at each document. A micro-batch ``[b, S]`` of packed rows runs as one THD sequence
of ``t = b * S`` tokens (megatron's THD path has batch 1): ``models.llama.LlamaGPTModel.forward`` flattens the rows on
the way in and restores ``[b, S, ...]`` on the last stage's output; the pipeline schedule sees ``(t, micro-batch 1)``
(:func:`models.forward.schedule_shape`). The local spec reads the same parameters
(``models.local_attention.LocalAttention``: one causal attention per document), so the CPU tests run this exact
data path; only TE's kernel is container-only. Context parallelism with packed rows keeps the dense mask (local
spec only).
"""

from __future__ import annotations

import torch


def packed_seq_params(cu_seqlens_rows: list[list[int]], seq_len: int, device=None):
    """``PackedSeqParams`` for ``b`` packed rows of ``seq_len`` tokens run as one THD sequence.

    ``cu_seqlens_rows``: per row, document boundaries (first 0, last ``seq_len``; a trailing pad segment counts as a
    document of its own, attending only to itself). Row ``r``'s boundaries are offset by ``r * seq_len``.
    """
    from megatron.core.packed_seq_params import PackedSeqParams

    bounds = [0]
    for r, cu in enumerate(cu_seqlens_rows):
        if not cu or cu[0] != 0 or cu[-1] != seq_len or any(b <= a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"packed row {r}: cu_seqlens {list(cu)} must rise strictly from 0 to seq_len={seq_len}")
        bounds += [r * seq_len + c for c in cu[1:]]
    cu = torch.tensor(bounds, dtype=torch.int32, device=device)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest)


def forward_rows(model, batch: dict):
    """The model on one micro-batch of rows: packed rows by their THD boundaries (``cu_seqlens``), else with the
    batch's dense ``attn_mask`` (packed rows under context parallelism) or none (plain causal rows); positions from
    the batch (restarting per document when packed), else 0..S-1. The forward of every stage's Task."""
    from megatron_tulu import platform

    dev = platform.device()
    ids = batch["input_ids"].to(dev)
    pos = batch.get("position_ids")
    pos = (torch.arange(ids.shape[1]).expand_as(ids) if pos is None else pos).to(dev)
    if "cu_seqlens" in batch:
        return model(ids, pos, None, packed_seq_params=packed_seq_params(batch["cu_seqlens"], ids.shape[1], dev))
    mask = batch.get("attn_mask")
    return model(ids, pos, None if mask is None else mask.to(dev))
