"""Sequence packing for SFT: several tokenized conversations per fixed-length row, attention kept per document.

Each packed row has ``input_ids``/``labels``/``position_ids`` of length ``seq_len`` and ``cu_seqlens`` (row-local
cumulative document lengths, starting at 0 and ending at ``seq_len``). Position ids restart at 0 for every
document, so RoPE sees each document as if it were alone; the tail padding, if any, is its own segment with
labels -100 so that a varlen attention kernel (THD / flash-attn ``cu_seqlens``) never lets a document attend
across a boundary. :func:`block_causal_mask` builds the equivalent dense mask for the CPU path and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

IGNORE_INDEX = -100


@dataclass
class PackingStats:
    """Counts of what packing did (nothing is dropped without being counted here)."""

    documents: int = 0
    packed_documents: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_labels: int = 0
    rows: int = 0
    tokens: int = 0
    pad_tokens: int = 0

    @property
    def fill(self) -> float:
        """Share of non-pad tokens in the packed rows."""
        total = self.tokens + self.pad_tokens
        return self.tokens / total if total else 0.0


@dataclass
class PackedRows:
    rows: list[dict] = field(default_factory=list)
    stats: PackingStats = field(default_factory=PackingStats)


def pack_sft(
    examples: Iterable[dict], seq_len: int, pad_id: int, overflow: str = "truncate"
) -> PackedRows:
    """Pack ``{"input_ids", "labels"}`` examples, in order, into rows of exactly ``seq_len`` tokens (next-fit).

    Args:
        examples: tokenized SFT examples (lists of ints of equal length per example).
        seq_len: row length (4096 for Tülu SFT).
        pad_id: token id used for the tail of a row.
        overflow: ``"truncate"`` cuts an example longer than ``seq_len`` to ``seq_len`` (counted as truncated);
            ``"drop"`` drops it (counted as dropped_too_long). Examples with no trainable label are dropped and
            counted either way.
    Returns:
        :class:`PackedRows`; each row: ``input_ids``, ``labels``, ``position_ids`` (each ``seq_len`` ints),
        ``cu_seqlens`` (ints, first 0, last ``seq_len``), ``num_docs`` (documents, excluding the pad segment).
    """
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', got {overflow!r}")
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    out = PackedRows()
    st = out.stats
    cur_ids: list[int] = []
    cur_labels: list[int] = []
    cur_pos: list[int] = []
    cu = [0]

    def flush() -> None:
        if not cur_ids:
            return
        n_pad = seq_len - len(cur_ids)
        ids, labels, pos, c = list(cur_ids), list(cur_labels), list(cur_pos), list(cu)
        if n_pad:
            ids += [pad_id] * n_pad
            labels += [IGNORE_INDEX] * n_pad
            pos += list(range(n_pad))
            c.append(seq_len)
        out.rows.append({"input_ids": ids, "labels": labels, "position_ids": pos, "cu_seqlens": c,
                         "num_docs": len(cu) - 1})
        st.rows += 1
        st.pad_tokens += n_pad
        cur_ids.clear(), cur_labels.clear(), cur_pos.clear()
        del cu[1:]

    for ex in examples:
        st.documents += 1
        ids, labels = list(ex["input_ids"]), list(ex["labels"])
        if len(ids) != len(labels):
            raise ValueError(f"example {st.documents - 1}: input_ids and labels differ in length")
        if len(ids) > seq_len:
            if overflow == "drop":
                st.dropped_too_long += 1
                continue
            ids, labels = ids[:seq_len], labels[:seq_len]
            st.truncated += 1
        if not ids or all(x == IGNORE_INDEX for x in labels):
            st.dropped_no_labels += 1
            continue
        if len(cur_ids) + len(ids) > seq_len:
            flush()
        cur_ids.extend(ids)
        cur_labels.extend(labels)
        cur_pos.extend(range(len(ids)))
        cu.append(len(cur_ids))
        st.packed_documents += 1
        st.tokens += len(ids)
    flush()
    return out


def block_causal_mask(cu_seqlens: Sequence[int], seq_len: int):
    """Dense boolean mask ``[seq_len, seq_len]`` (True = may attend): causal within each segment, none across."""
    import torch

    seg = torch.zeros(seq_len, dtype=torch.long)
    for k in range(1, len(cu_seqlens)):
        seg[cu_seqlens[k - 1]: cu_seqlens[k]] = k
    same = seg[:, None] == seg[None, :]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    return same & causal


def packed_attention_mask(cu_seqlens_rows: list[list[int]], seq_len: int):
    """Megatron attention mask ``[B, 1, S, S]`` (True = masked) that is causal within each packed document."""
    import torch

    return torch.stack([~block_causal_mask(cu, seq_len) for cu in cu_seqlens_rows]).unsqueeze(1)


def row_multiple(tp: int, cp: int, sequence_parallel: bool = True) -> int:
    """Packed rows' lengths are multiples of this: 8 (kernels), TP under sequence parallelism (it splits tokens over
    TP ranks) and 2 x CP under context parallelism (megatron's load-balanced chunks)."""
    import math

    return math.lcm(8, tp if sequence_parallel else 1, 2 * cp if cp > 1 else 1)


def document_row(docs: Sequence[Sequence[int]], pad_id: int, multiple: int = 8, length: int | None = None,
                 dense_mask: bool = False) -> dict:
    """Token-id documents back to back in ONE row (the THD layout of the token-budget micro-batches; SFT's
    ``pack_sft`` fills fixed-length rows instead).

    Args:
        docs: the documents' token ids, in row order.
        pad_id: the tail padding's token.
        multiple: the row's length is rounded up to a multiple of this (:func:`row_multiple`).
        length: a fixed length (pipeline schedules need one shape per call), rounded the same way; None: the
            documents' tokens.
        dense_mask: context parallelism: the documents kept apart by a dense block-causal ``attn_mask`` instead of
            ``cu_seqlens`` (the CP split cuts the row by query positions, which cuts a dense mask with it; the local
            spec's all-gather attention reads it).
    Returns:
        ``input_ids`` / ``position_ids`` ``[1, L]`` long (positions restart at 0 at every document and at the tail
        pad, so RoPE sees each document alone), ``cu_seqlens`` ``[[0, ..., L]]`` (the tail pad a segment of its own)
        or with ``dense_mask`` ``attn_mask [1, 1, L, L]`` (:func:`packed_attention_mask`), ``starts`` (each document's
        first position), ``useful`` (real tokens) and ``computed`` (``L``).
    Raises:
        ValueError when the documents do not fit ``length``.
    """
    import torch

    used = sum(len(d) for d in docs)
    if length is not None and length < used:
        raise ValueError(f"packed row of {used} tokens does not fit length={length}")
    n = -(-(length or used) // multiple) * multiple
    ids = torch.full((1, n), pad_id, dtype=torch.long)
    pos = torch.zeros((1, n), dtype=torch.long)
    cu, starts = [0], []
    for doc in docs:
        at = cu[-1]
        starts.append(at)
        ids[0, at: at + len(doc)] = torch.tensor(list(doc), dtype=torch.long)
        pos[0, at: at + len(doc)] = torch.arange(len(doc))
        cu.append(at + len(doc))
    if used < n:
        pos[0, used:] = torch.arange(n - used)
        cu.append(n)
    bounds = {"attn_mask": packed_attention_mask([cu], n)} if dense_mask else {"cu_seqlens": [cu]}
    return {"input_ids": ids, "position_ids": pos, **bounds, "starts": starts, "useful": used, "computed": n}
