"""Preference pairs (DPO, reward model) on packed rows under a token budget (``train.max_tokens_per_microbatch``).

Padded pair micro-batches compute ``2b x longest`` tokens; a preference mixture's lengths spread widely, so most of
that is padding. With a budget, a step's pairs are split over DP ranks with near-equal token sums
(``data.token_budget``), each rank's pairs are cut into micro-batches of at most the budget (a pair never split), and
each micro-batch is ONE packed row: the chosen sequences of its pairs, then their rejected ones, each a document with
its own positions (RoPE restarts) and attention (THD ``cu_seqlens``; a dense block-causal mask under CP, as SFT). The
loss sees the same per-sequence numbers as padded rows (summed log-probs, last-token scores) in the same order
(``[2b]``, chosen first), so DPO and the RM are unchanged by the layout (tested against padded runs).

Row length: the row's tokens rounded up to a multiple of 8, of TP (sequence parallelism) and of ``2 x CP``; under
PP every micro-batch of a run has one shape, the budget (rounded the same way); the tail is a pad document.
"""

from __future__ import annotations


import torch

from megatron_tulu.data.packing import document_row, row_multiple
from megatron_tulu.data.sampler import IGNORE_INDEX, shift_targets
from megatron_tulu.data.token_budget import balance_over_ranks, token_budget_bins


def pack_pairs(rows: list[dict], indices: list[int], pad_id: int, row_len: int | None, multiple: int = 8,
               dense_mask: bool = False) -> dict:
    """One packed row of the pairs ``indices``: documents chosen_0..chosen_{b-1}, rejected_0..rejected_{b-1}.

    Returns ``input_ids``/``position_ids``/``targets`` ``[1, T]`` (a document's last token predicts nothing),
    ``cu_seqlens`` (``[[0, ..., T]]``, the pad tail its own document), ``doc_index`` ``[T]`` (document of each token,
    -1 for padding), ``last_pos`` ``[2b]`` (each document's last token), ``tokens`` ``[2b]`` (label tokens per
    document), ``indices`` ``[b]``. ``row_len``: fixed length (PP), else the tokens rounded up to ``multiple``.
    ``dense_mask`` (context parallelism): ``attn_mask`` instead of ``cu_seqlens`` (``data.packing.document_row``).
    """
    docs = [(rows[i]["chosen_input_ids"], rows[i]["chosen_labels"]) for i in indices]
    docs += [(rows[i]["rejected_input_ids"], rows[i]["rejected_labels"]) for i in indices]
    try:
        row = document_row([x for x, _ in docs], pad_id, multiple, row_len, dense_mask)
    except ValueError as e:
        raise ValueError(f"pairs {list(indices)}: {e} (train.max_tokens_per_microbatch must fit the longest pair "
                         "under pipeline parallelism)") from None
    n, starts = row["computed"], row.pop("starts")
    labels = torch.full((1, n), IGNORE_INDEX, dtype=torch.long)
    doc = torch.full((n,), -1, dtype=torch.long)
    for d, ((x, y), at) in enumerate(zip(docs, starts)):
        labels[0, at: at + len(y)] = torch.tensor(list(y), dtype=torch.long)
        doc[at: at + len(x)] = d
    last = torch.tensor([at + len(x) - 1 for (x, _), at in zip(docs, starts)])
    targets = shift_targets(labels)
    targets[0, last] = IGNORE_INDEX  # a document's last token faces the next document, not its answer
    tokens = torch.zeros(len(docs), dtype=torch.long).index_add_(
        0, doc.clamp(min=0), ((targets[0] != IGNORE_INDEX) & (doc >= 0)).long())
    bounds = {k: row[k] for k in ("cu_seqlens", "attn_mask") if k in row}
    return {"input_ids": row["input_ids"], "position_ids": row["position_ids"], "targets": targets, **bounds,
            "doc_index": doc, "last_pos": last, "tokens": tokens, "indices": torch.tensor(list(indices)),
            "useful_tokens": row["useful"]}


def per_document_sums(token_values: torch.Tensor, batch: dict) -> torch.Tensor:
    """``[2b]`` sums over each document's label tokens of ``token_values`` ``[1, T]`` (e.g. token log-probs)."""
    doc = batch["doc_index"].to(token_values.device)
    keep = (batch["targets"][0].to(token_values.device) != IGNORE_INDEX) & (doc >= 0)
    out = torch.zeros(len(batch["tokens"]), dtype=token_values.dtype, device=token_values.device)
    return out.index_add(0, doc[keep], token_values[0][keep])


class PackedPairsMixin:
    """For a Task over preference pairs (``self.rows`` tokenized pairs, ``self.cfg``, ``self.pad_id``): the
    DP split and the micro-batches under ``train.max_tokens_per_microbatch`` (0: the Task's padded path)."""

    @property
    def token_budget(self) -> int:
        return int(getattr(self.cfg.train, "max_tokens_per_microbatch", 0) or 0)

    def pair_tokens(self, i: int) -> int:
        r = self.rows[i]
        return len(r["chosen_input_ids"]) + len(r["rejected_input_ids"])

    def shard(self, indices: list[int], trainer) -> list[int]:
        """This DP rank's pairs: near-equal token sums per rank under the budget, else contiguous slices."""
        if not self.token_budget:
            return super().shard(indices, trainer)
        groups = balance_over_ranks([self.pair_tokens(i) for i in indices], trainer.dims.dp)
        return [indices[j] for j in groups[trainer.dp_rank]]

    def throughput(self, sums: dict[str, float]) -> dict[str, float]:
        """``throughput/useful_token_frac``: real tokens over computed ones (padding included) in the step."""
        return {"throughput/useful_token_frac": sums["tokens_useful"] / max(sums["tokens_computed"], 1.0)}

    def token_sums(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"tokens_useful": torch.tensor(float(batch["useful_tokens"])),
                "tokens_computed": torch.tensor(float(batch["input_ids"].numel()))}

    def check_budget(self, trainer) -> None:
        """Under PP every packed row is the budget long: the longest pair must fit (checked before any step)."""
        if self.token_budget and trainer.dims.pp > 1:
            longest = max(self.pair_tokens(i) for i in range(len(self.rows)))
            if longest > self.token_budget:
                raise ValueError(f"train.max_tokens_per_microbatch={self.token_budget} is below the longest pair "
                                 f"({longest} tokens); under pipeline parallelism every row is the budget long")

    def packed_microbatches(self, indices: list[int], trainer, extra=None) -> list[dict]:
        """This rank's pairs cut by the token budget, each micro-batch one packed row (``extra(batch)`` adds
        stage-specific fields). Under PP every row is the budget long (one p2p shape per step)."""
        dims = trainer.dims
        multiple = row_multiple(dims.tp, dims.cp, self.cfg.model.sequence_parallel)
        fixed = -(-self.token_budget // multiple) * multiple if dims.pp > 1 else None
        lengths = [self.pair_tokens(i) for i in indices]
        out = []
        for b in token_budget_bins(lengths, list(range(len(indices))), self.token_budget):
            # context parallelism splits rows by query positions: a dense block-causal mask (as SFT)
            batch = pack_pairs(self.rows, [indices[j] for j in b], self.pad_id, fixed, multiple, dense_mask=dims.cp > 1)
            if extra is not None:
                extra(batch)
            out.append(batch)
        return out
