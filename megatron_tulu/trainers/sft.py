"""SFT (and plain LM pretraining) as a Task for the shared loop: summed token loss on assistant tokens.

Tülu 3 sums the token losses instead of averaging per sequence; we sum over the whole global batch and divide
by a split-independent constant (``train.loss_reduction``), so the gradient does not depend on how the global
batch is cut into micro-batches or spread over DP ranks.

The sampler indexes EXAMPLES (documents), packed or not: a step takes ``train.global_batch_size`` examples, as
Tülu 3's 128 per step, and ``sum`` divides by the documents in the global batch. With ``train.packing`` each DP rank
packs its share of the step's examples into ``seq_length`` rows (``data.packing.pack_sft``, next-fit in sampler
order: the same indices give the same rows, so a resume at a sampler position is exact) and cuts those rows into
micro-batches of ``micro_batch_size`` rows. Packing is then only a layout: the loss and gradient are those of the
same examples unpacked.

Micro-batch counts under packing: a rank's count depends on how its examples pack, so DP ranks may run different
counts in one step. That is safe: the ranks of one pipeline (and its TP/CP peers) get the same indices and so the
same rows; the DP ranks meet only in once-per-step collectives (the loss normaliser, the metric sums, and the DDP
gradient reduction in ``finalize_model_grads``, with ``overlap_grad_reduce`` off), never per micro-batch; and the
schedule's ``1/M`` is undone per rank by ``Trainer.train_step`` with that rank's own ``len(microbatches)``. Two
things do need filling, with all-ignored filler rows (pad tokens, no labels, no documents, hence no loss and no
gradient): under PP the last micro-batch is filled to ``micro_batch_size`` rows (pipeline p2p buffers have one
shape per step), and under the interleaved schedule (VPP) a rank gets at least ``pp`` micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_tulu.data.packing import packed_attention_mask
from megatron_tulu.data.sampler import IGNORE_INDEX, collate, shift_targets, split_microbatches
from megatron_tulu.models.logprobs import token_logprobs
from megatron_tulu.models.packed import forward_rows
from megatron_tulu.trainers.config import DataConfig
from megatron_tulu.trainers.fit import StageConfig
from megatron_tulu.trainers.task import DataStageMixin, Task


@dataclass
class SFTConfig(StageConfig):
    """Top-level config of ``launch/sft.py`` (and ``launch/pretrain.py`` with ``data_kind: text``)."""

    data: DataConfig = field(default_factory=DataConfig)
    data_kind: str = "sft"
    """``sft`` (chat messages, loss on assistant tokens) or ``text`` (pretraining, loss on every token)."""


class SFTTask(DataStageMixin, Task):
    metric_names = ["loss_sum", "tokens", "sequences", "packed_rows"]
    """``sequences`` counts documents (examples), packed or not; ``packed_rows`` the rows they filled (filler rows
    excluded; equal to ``sequences`` unpacked)."""

    def __init__(self, cfg: SFTConfig):
        self.cfg = cfg

    def setup(self, trainer) -> int:
        """Tokenize (cached); return the number of EXAMPLES, which the sampler indexes whether or not rows are
        packed (packing happens per step in :meth:`microbatches`)."""
        cfg = self.cfg
        self.load_tokenizer(cfg.data)
        self.rows = self.build(trainer, cfg.data_kind, cfg.data.mixture, cfg.train.seq_length)
        self.packed = cfg.train.packing
        return len(self.rows)

    def _packed_rows(self, indices: list[int]) -> list[dict]:
        """The examples ``indices`` packed, in order, into ``seq_length`` rows (deterministic in ``indices``)."""
        from megatron_tulu.data.packing import pack_sft

        exs = [self.rows[i] for i in indices]
        exs = [{"input_ids": e["input_ids"], "labels": e.get("labels", e["input_ids"])} for e in exs]
        packed = pack_sft(exs, self.cfg.train.seq_length, self.pad_id)
        # the dataset builder already truncates to seq_length and drops examples without a label, so nothing is
        # dropped here and every sampled example counts as one document
        return packed.rows

    def _filler_row(self) -> dict:
        """An all-ignored packed row: pad tokens, no label, one pad segment, no document."""
        seq = self.cfg.train.seq_length
        return {"input_ids": [self.pad_id] * seq, "labels": [IGNORE_INDEX] * seq, "position_ids": list(range(seq)),
                "cu_seqlens": [0, seq], "num_docs": 0}

    def microbatches(self, indices: list[int], trainer) -> list[dict]:
        """This DP rank's examples ``indices`` as micro-batches: packed into rows first under ``train.packing``
        (then each micro-batch holds ``micro_batch_size`` ROWS, and this rank may run fewer micro-batches than
        ``len(indices) / micro_batch_size``; see the module docstring for the filler rows)."""
        mbs_rows = self.cfg.train.micro_batch_size
        pp, vpp = trainer.dims.pp, trainer.dims.vpp
        fixed = self.packed or pp > 1  # pipeline p2p needs one shape for every micro-batch
        seq = self.cfg.train.seq_length
        if self.packed:
            rows = self._packed_rows(indices)
            n_mb = -(-len(rows) // mbs_rows)
            if vpp > 1:
                n_mb = max(n_mb, pp)  # the interleaved schedule needs >= pp micro-batches
            if pp > 1:  # fill the last micro-batch to one p2p shape (without PP a short last one is fine)
                rows += [self._filler_row() for _ in range(n_mb * mbs_rows - len(rows))]
            chunks = [rows[i: i + mbs_rows] for i in range(0, len(rows), mbs_rows)]
        else:
            chunks = [[self.rows[i] for i in chunk] for chunk in split_microbatches(indices, mbs_rows)]
        out = []
        for exs in chunks:
            if fixed:
                exs = [dict(e, input_ids=list(e["input_ids"]) + [self.pad_id] * (seq - len(e["input_ids"])),
                            labels=list(e.get("labels", e["input_ids"])) + [IGNORE_INDEX] * (seq - len(e["input_ids"])))
                       for e in exs]
            b = collate(exs, self.pad_id, pad_to_multiple_of=8)
            b["targets"] = shift_targets(b["labels"])
            b["num_docs"] = sum(int(e.get("num_docs", 1)) for e in exs)  # documents (filler rows: 0)
            b["num_rows"] = sum(1 for e in exs if e.get("num_docs", 1) > 0)  # rows holding a document
            # packed rows: THD boundaries (what TE's attention honours), or under context parallelism a dense
            # block-causal mask that the CP split cuts by query rows (local spec)
            b["attn_mask"] = None
            if self.packed:
                cus = [list(e["cu_seqlens"]) for e in exs]
                # a document's last token predicts nothing (as unpacked, where it faces padding), not the first
                # token of the next document in the row (a label only for ``data_kind: text``)
                for r, cu in enumerate(cus):
                    for end in cu[1:]:
                        b["targets"][r, end - 1] = IGNORE_INDEX
                if trainer.dims.cp > 1:
                    b["attn_mask"] = packed_attention_mask(cus, b["input_ids"].shape[1])
                else:
                    b["cu_seqlens"] = cus
            out.append(b)
        return out

    def denominator(self, microbatches: list[dict]) -> float:
        """``sum``: this rank's documents (examples; their DP sum is the global batch's, ``global_batch_size``),
        packed or not; ``mean``: this rank's label tokens."""
        if self.cfg.train.loss_reduction == "sum":
            return float(sum(mb["num_docs"] for mb in microbatches))
        if self.cfg.train.loss_reduction == "mean":
            return float(sum(int((mb["targets"] != IGNORE_INDEX).sum()) for mb in microbatches))
        raise ValueError(f"train.loss_reduction must be sum|mean, got {self.cfg.train.loss_reduction!r}")

    def forward(self, model, batch: dict) -> torch.Tensor:
        return forward_rows(model, batch)

    def loss_fn(self, batch: dict, logits: torch.Tensor, trainer) -> tuple[torch.Tensor, dict]:
        targets = batch["targets"].to(logits.device)
        valid = targets != IGNORE_INDEX
        lp = token_logprobs(logits, targets.clamp(min=0), trainer.model, trainer.preset.vocab_size)
        loss_sum = -(lp * valid).sum()
        return loss_sum, {"loss_sum": loss_sum, "tokens": valid.sum(), "sequences": torch.tensor(float(batch["num_docs"])),
                          "packed_rows": torch.tensor(float(batch["num_rows"]))}

    def finalize(self, sums: dict[str, float], denom: float) -> dict[str, float]:
        return {
            "loss": sums["loss_sum"] / max(denom, 1e-12),
            "loss_per_token": sums["loss_sum"] / max(sums["tokens"], 1.0),
            "label_tokens": sums["tokens"],
            "sequences": sums["sequences"],
            "packed_rows": sums["packed_rows"],
        }
