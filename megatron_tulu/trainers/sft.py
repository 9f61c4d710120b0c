"""SFT (and plain LM pretraining) as a Task for the shared loop: summed token loss on assistant tokens.

Tülu 3 sums the token losses instead of averaging per sequence; we sum over the whole global batch and divide
by a split-independent constant (``train.loss_reduction``), so the gradient does not depend on how the global
batch is cut into micro-batches or spread over DP ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_tulu.data.packing import packed_attention_mask
from megatron_tulu.data.sampler import IGNORE_INDEX, collate, shift_targets, split_microbatches
from megatron_tulu.models.logprobs import token_logprobs
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
    metric_names = ["loss_sum", "tokens", "sequences"]

    def __init__(self, cfg: SFTConfig):
        self.cfg = cfg

    def setup(self, trainer) -> int:
        cfg = self.cfg
        self.load_tokenizer(cfg.data)
        ds = self.build(trainer, cfg.data_kind, cfg.data.mixture, cfg.train.seq_length)
        self.packed = cfg.train.packing
        if self.packed:
            from megatron_tulu.data.packing import pack_sft

            rows = [{"input_ids": r["input_ids"], "labels": r.get("labels", r["input_ids"])} for r in ds]
            packed = pack_sft(rows, cfg.train.seq_length, self.pad_id)
            self.rows = packed.rows
        else:
            self.rows = ds
        return len(self.rows)

    def microbatches(self, indices: list[int], trainer) -> list[dict]:
        fixed = self.packed or trainer.dims.pp > 1  # pipeline p2p needs one shape for every micro-batch
        seq = self.cfg.train.seq_length
        out = []
        for chunk in split_microbatches(indices, self.cfg.train.micro_batch_size):
            exs = [self.rows[i] for i in chunk]
            if fixed:
                exs = [dict(e, input_ids=list(e["input_ids"]) + [self.pad_id] * (seq - len(e["input_ids"])),
                            labels=list(e.get("labels", e["input_ids"])) + [IGNORE_INDEX] * (seq - len(e["input_ids"])))
                       for e in exs]
            b = collate(exs, self.pad_id, pad_to_multiple_of=8)
            b["targets"] = shift_targets(b["labels"])
            # packed rows: THD boundaries (what TE's attention honours), or under context parallelism a dense
            # block-causal mask that the CP split cuts by query rows (local spec)
            b["attn_mask"] = None
            if self.packed and trainer.dims.cp > 1:
                b["attn_mask"] = packed_attention_mask([e["cu_seqlens"] for e in exs], b["input_ids"].shape[1])
            elif self.packed:
                b["cu_seqlens"] = [list(e["cu_seqlens"]) for e in exs]
            out.append(b)
        return out

    def denominator(self, microbatches: list[dict]) -> float:
        if self.cfg.train.loss_reduction == "sum":
            return float(sum(mb["input_ids"].shape[0] for mb in microbatches))
        if self.cfg.train.loss_reduction == "mean":
            return float(sum(int((mb["targets"] != IGNORE_INDEX).sum()) for mb in microbatches))
        raise ValueError(f"train.loss_reduction must be sum|mean, got {self.cfg.train.loss_reduction!r}")

    def forward(self, model, batch: dict) -> torch.Tensor:
        from megatron_tulu import platform

        dev = platform.device()
        ids, pos = batch["input_ids"].to(dev), batch["position_ids"].to(dev)
        if "cu_seqlens" in batch:
            from megatron_tulu.models.packed import packed_seq_params

            return model(ids, pos, None, packed_seq_params=packed_seq_params(batch["cu_seqlens"], ids.shape[1], dev))
        mask = batch["attn_mask"].to(dev) if batch["attn_mask"] is not None else None
        return model(ids, pos, mask)

    def loss_fn(self, batch: dict, logits: torch.Tensor, trainer) -> tuple[torch.Tensor, dict]:
        targets = batch["targets"].to(logits.device)
        valid = targets != IGNORE_INDEX
        lp = token_logprobs(logits, targets.clamp(min=0), trainer.model, trainer.preset.vocab_size)
        loss_sum = -(lp * valid).sum()
        return loss_sum, {"loss_sum": loss_sum, "tokens": valid.sum(), "sequences": torch.tensor(float(targets.shape[0]))}

    def finalize(self, sums: dict[str, float], denom: float) -> dict[str, float]:
        return {
            "loss": sums["loss_sum"] / max(denom, 1e-12),
            "loss_per_token": sums["loss_sum"] / max(sums["tokens"], 1.0),
            "label_tokens": sums["tokens"],
        }
