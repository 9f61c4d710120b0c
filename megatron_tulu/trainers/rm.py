"""Reward-model training (Tülu 3 8B RM, open-instruct ``reward_modeling.py``) as a Task for the shared loop.

The model is the Llama backbone under a ``scalar`` head (``models.heads.ScalarHead``, the PPO value model's head):
one score per position, and a sequence's score is the one at its LAST real (non-pad) token, as
``LlamaForSequenceClassification`` and open-instruct's ``get_reward`` take it. The loss is Bradley-Terry
(``losses.rm.bt_loss``) on the preference pairs DPO reads (same data kind ``preference``, same released schema); with
``rm.margin_field`` / ``rm.margin_from_ratings`` each training pair also carries its target margin (Llama 2's RM).

A micro-batch holds ``b`` pairs as ``2b`` rows (chosen ``0..b-1``, rejected ``b..2b-1``, as DPO's). ``forward_mode``
``concatenated`` (open-instruct, any PP) runs them in one forward; ``separate`` (PP=1) runs chosen then rejected
and reduces each to its scores before the next. Under CP the per-token scores are gathered to full rows before the
last-token pick; under TP the head is replicated, so every TP rank computes the same loss. The export
(``checkpoint.export_hf``) is a ``LlamaForSequenceClassification`` (num_labels=1) that ``rlvr.value_init_hf`` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from megatron_tulu import platform
from megatron_tulu.data.sampler import collate_preference, split_microbatches
from megatron_tulu.losses.rm import METRICS, bt_loss
from megatron_tulu.trainers.config import DataConfig
from megatron_tulu.trainers.fit import StageConfig
from megatron_tulu.models.packed import forward_rows
from megatron_tulu.trainers.packed_pairs import PackedPairsMixin
from megatron_tulu.trainers.task import DataStageMixin, Task


@dataclass
class RMOptions:
    """Reward-model settings."""

    forward_mode: str = "concatenated"
    """``concatenated`` (chosen and rejected rows in one forward, as open-instruct; any PP) or ``separate`` (chosen
    then rejected as two forwards: lower peak activation memory; PP=1)."""
    center_coef: float = 0.0
    """Weight of the centring term ``mean((r_c + r_r)^2)`` (Eisenstein et al. 2023; open-instruct's
    ``center_rewards_coefficient``). 0: plain Bradley-Terry, what the Tülu 3 8B RM was trained with."""
    score_init_std: Optional[float] = None
    """Std of the normal init of a fresh score head; None: ``1 / sqrt(hidden_size + 1)`` (open-instruct's
    ``layer_init(model.score, ...)``, Stiennon et al. 2020 p. 11); 0: zeros. An ``init_hf`` that already has a
    ``score.weight`` (a reward model) keeps its head."""
    margin_field: str = ""
    """Name of a numeric column of the training preference rows holding each pair's target margin ``m`` (Llama 2's
    RM loss ``-log sigmoid(r_c - r_r - m)``, e.g. a ``margin`` column); "": no margin (plain Bradley-Terry, as the
    Tülu 3 8B RM). Every training row must carry it as a finite number: a row that lacks it or holds anything else
    fails at load time naming file:line and the field (or is skipped and counted with ``mixture.skip_invalid``).
    The held-out set (``data.eval_mixture``) is read without it: ``eval/loss`` is the plain BT loss."""
    margin_from_ratings: bool = False
    """Take each pair's margin as ``chosen_rating - rejected_rating`` (columns of the released Tülu 3 preference
    mixtures, e.g. UltraFeedback's 1-5 ratings), under the same rules as ``margin_field``; exclusive with it."""

    @property
    def margin_columns(self) -> tuple[str, ...]:
        """The preference-row columns the margin comes from (``data.loaders``: one column, or chosen - rejected)."""
        if self.margin_from_ratings:
            return ("chosen_rating", "rejected_rating")
        return (self.margin_field,) if self.margin_field else ()


@dataclass
class RMConfig(StageConfig):
    """Top-level config of ``launch/rm.py``."""

    data: DataConfig = field(default_factory=DataConfig)
    rm: RMOptions = field(default_factory=RMOptions)

    def validate(self) -> None:
        from megatron_tulu.config import check_at_least, check_choice

        super().validate()
        o = self.rm
        check_choice("rm.forward_mode", o.forward_mode, ("concatenated", "separate"))
        check_at_least("rm.center_coef", o.center_coef, 0.0)
        if o.score_init_std is not None:
            check_at_least("rm.score_init_std", o.score_init_std, 0.0)
        if o.margin_field and o.margin_from_ratings:
            raise ValueError(f"rm.margin_field={o.margin_field!r} and rm.margin_from_ratings=true: give one margin "
                             "source")
        if self.parallel.pp > 1 and o.forward_mode == "separate":
            raise ValueError("with parallel.pp > 1 use rm.forward_mode=concatenated")


def last_token_scores(output: torch.Tensor, rows: torch.Tensor, seq_len: int,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sequence scores ``[N]`` (fp32) from the scalar head's output ``[R, S / cp, 1]`` (this CP rank's tokens).

    Padded rows (``positions`` None): ``rows [R]`` is each row's last real token (indices into the full row of
    length ``seq_len``). Packed rows: sequence ``n`` is read at row ``rows[n]``, position ``positions[n]``."""
    from megatron_tulu.models.context_parallel import gather_tokens

    full = gather_tokens(output.squeeze(-1).float(), seq_len)  # [R, S]: every CP rank sees the whole row
    if positions is None:
        rows, positions = torch.arange(full.shape[0]), rows
    return full[rows.to(full.device), positions.to(full.device)]


class RMTask(PackedPairsMixin, DataStageMixin, Task):
    head = "scalar"
    metric_names = ["loss_sum", "pairs", "tokens_useful", "tokens_computed", *METRICS]

    def __init__(self, cfg: RMConfig):
        cfg.validate()  # load_config did already; a config built in code is checked here
        self.cfg = cfg

    # ---- data ----------------------------------------------------------------------------------
    def setup(self, trainer) -> int:
        cfg = self.cfg
        self.load_tokenizer(cfg.data)
        self.rows = self.build(trainer, "preference", cfg.data.mixture, cfg.train.seq_length,
                               margin_columns=cfg.rm.margin_columns)
        self.eval_rows = None
        if cfg.data.eval_mixture:
            self.eval_rows = self.build(trainer, "preference", cfg.data.eval_mixture, cfg.train.seq_length)
        return len(self.rows)

    def build(self, trainer, kind: str, mixture: dict, max_len: int | None, margin_columns: tuple[str, ...] = ()):
        """``DataStageMixin.build`` (rank 0 builds the cache first) with the loader's ``margin_columns``: the rows
        then carry a ``margin`` column (``rm.margin_field`` / ``rm.margin_from_ratings``)."""
        if not margin_columns:
            return super().build(trainer, kind, mixture, max_len)
        from megatron_tulu.data.loaders import build_dataset, mixture_from_dict

        data = self.cfg.data
        cache = Path(data.cache_dir or Path(trainer.run_dir) / "data_cache")
        mix = mixture_from_dict(dict(mixture))
        rank = dist.get_rank() if dist.is_initialized() else 0

        def load():
            return build_dataset(mix, kind, self.tokenizer, max_len, data.template, cache_dir=cache,
                                 add_bos=data.add_bos, margin_columns=margin_columns)

        if rank == 0:  # rank 0 writes the cache, then the others read it
            ds, report = load()
        if dist.is_initialized():
            dist.barrier()
        if rank != 0:
            ds, report = load()
        self.data_report = report
        return ds

    def _batch(self, rows, indices: list[int], pad_to: int | None) -> dict:
        examples = [rows[i] for i in indices]
        b = collate_preference(examples, self.pad_id, pad_to_multiple_of=8)
        if examples and all("margin" in e for e in examples):  # training rows under rm.margin_field / _from_ratings
            b["margin"] = torch.tensor([float(e["margin"]) for e in examples], dtype=torch.float32)
        if pad_to is not None and b["input_ids"].shape[1] < pad_to:  # PP: every micro-batch has the same shape
            b["input_ids"] = torch.nn.functional.pad(b["input_ids"], (0, pad_to - b["input_ids"].shape[1]),
                                                     value=self.pad_id)
        # from the collated lengths, not by searching for pad ids: a pad id that is also EOS ends real rows
        b["last"] = b.pop("attention_mask").sum(-1) - 1
        b["position_ids"] = torch.arange(b["input_ids"].shape[1]).expand_as(b["input_ids"])
        b["indices"] = torch.tensor(indices)
        b["useful_tokens"] = sum(len(e["chosen_input_ids"]) + len(e["rejected_input_ids"]) for e in examples)
        for k in ("labels", "loss_mask"):  # the RM has no token targets
            b.pop(k, None)
        return b

    def _pad_to(self, trainer) -> int | None:
        return self.cfg.train.seq_length if trainer.dims.pp > 1 else None

    def microbatches(self, indices: list[int], trainer) -> list[dict]:
        if self.token_budget:  # packed rows (chosen then rejected documents), one forward each
            def add_margin(b):
                if len(self.rows) and "margin" in self.rows[0]:
                    b["margin"] = torch.tensor([float(self.rows[i]["margin"]) for i in b["indices"].tolist()])
                b["last"] = b["last_pos"]
            return self.packed_microbatches(indices, trainer, add_margin)
        return [self._batch(self.rows, c, self._pad_to(trainer))
                for c in split_microbatches(indices, self.cfg.train.micro_batch_size)]

    def denominator(self, microbatches: list[dict]) -> float:
        return float(sum(len(mb["indices"]) for mb in microbatches))  # pairs: the loss is a mean over GLOBAL pairs

    def after_model(self, trainer) -> None:
        self.check_budget(trainer)

    # ---- model ---------------------------------------------------------------------------------
    def customize_model(self, chunk) -> None:
        """The score head of the last stage: the ``init_hf`` reward model's ``score.weight`` when it has one, else a
        normal init with ``rm.score_init_std`` from a generator seeded by ``train.seed`` (the head is replicated over
        TP: every rank must draw the same values)."""
        if not chunk.post_process:
            return
        w = chunk.output_layer.weight
        src = self.cfg.model.init_hf
        with torch.no_grad():
            if src:
                from megatron_tulu.checkpoint.hf_io import HFReader

                reader = HFReader(src)
                if "score.weight" in reader.weight_map:
                    w.copy_(reader.get("score.weight").reshape(w.shape).to(w.dtype))
                    return
            std = self.cfg.rm.score_init_std
            std = 1.0 / math.sqrt(w.shape[1] + 1) if std is None else std
            g = torch.Generator().manual_seed(self.cfg.train.seed)
            w.copy_((torch.randn(w.shape, generator=g, dtype=torch.float32) * std).to(w.dtype))

    def hf_extra_config(self) -> dict:
        # LlamaForSequenceClassification finds each row's last token from pad_token_id when batching
        pad = getattr(self, "pad_id", None)
        return {} if pad is None else {"pad_token_id": int(pad)}

    # ---- forward + loss --------------------------------------------------------------------------
    def _forward_concat(self, model, batch):
        dev = platform.device()
        return model(batch["input_ids"].to(dev), batch["position_ids"].to(dev), None)

    def forward(self, model, batch: dict) -> torch.Tensor:
        if "doc_index" in batch:  # a packed row: one forward, scores read at each document's last token
            return forward_rows(model, batch)  # [1, T / cp, 1]
        if self.cfg.rm.forward_mode == "concatenated":
            return self._forward_concat(model, batch)  # [2b, S / cp, 1]
        dev, k, s = platform.device(), len(batch["indices"]), batch["input_ids"].shape[1]
        parts = []
        for sl in (slice(0, k), slice(k, 2 * k)):
            out = model(batch["input_ids"][sl].to(dev), batch["position_ids"][sl].to(dev), None)
            parts.append(last_token_scores(out, batch["last"][sl], s))
        return torch.cat(parts)  # [2b] scores

    def scores(self, batch: dict, output: torch.Tensor) -> torch.Tensor:
        """``[2b]`` scores (chosen rows first) of a micro-batch from the forward's output."""
        if output.dim() == 1:  # separate forward: already reduced
            return output
        if "doc_index" in batch:  # one packed row: its documents' last tokens
            return last_token_scores(output, torch.zeros_like(batch["last"]), batch["input_ids"].shape[1],
                                     positions=batch["last"])
        return last_token_scores(output, batch["last"], batch["input_ids"].shape[1])

    def loss_fn(self, batch: dict, output: torch.Tensor, trainer) -> tuple[torch.Tensor, dict]:
        sc = self.scores(batch, output)
        k = len(batch["indices"])
        loss, metrics = bt_loss(sc[:k], sc[k:], margin=batch.get("margin"), center_coef=self.cfg.rm.center_coef)
        sums = {"loss_sum": loss.detach() * k, "pairs": torch.tensor(float(k)), **self.token_sums(batch)}
        sums.update({m: metrics[m] * k for m in METRICS})
        return loss * k, sums  # summed over pairs; the loop divides by the global pair count

    def finalize(self, sums: dict[str, float], denom: float) -> dict[str, float]:
        n = max(sums["pairs"], 1.0)
        out = {"loss": sums["loss_sum"] / max(denom, 1e-12), **self.throughput(sums)}
        out.update({m: sums[m] / n for m in METRICS})
        return out

    # ---- scoring and held-out accuracy -----------------------------------------------------------
    def score_pairs(self, trainer, rows) -> torch.Tensor:
        """Scores ``[N, 2]`` (chosen, rejected) of every pair under the current model, sharded over DP; on every
        rank."""
        from megatron_tulu.models.forward import forward_only_map

        n, dp, mbs = len(rows), trainer.dims.dp, self.cfg.train.micro_batch_size
        mine = list(range(trainer.dp_rank, n, dp))
        # every DP rank runs the same number of micro-batches (pipeline collectives); pad with a repeated index
        per_rank = -(-n // dp)  # ceil(n / dp) ...
        per_rank = -(-per_rank // mbs) * mbs  # ... rounded up to whole micro-batches
        padded = mine + [mine[0] if mine else 0] * (per_rank - len(mine))
        batches = [self._batch(rows, padded[i:i + mbs], self._pad_to(trainer)) for i in range(0, per_rank, mbs)]
        res = forward_only_map(trainer.model, batches, self._forward_concat, self.scores)
        out = torch.zeros(n, 2, dtype=torch.float64)
        if trainer.reports_results:
            for b, r in zip(batches, res):
                k = len(b["indices"])
                for j, idx in enumerate(b["indices"].tolist()):
                    if idx in mine:
                        out[idx, 0], out[idx, 1] = r[j].double(), r[j + k].double()
        out = out.to(platform.device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(out)
        return out.cpu()

    def evaluate(self, trainer) -> dict[str, float]:
        """Held-out preference accuracy, loss and score statistics on ``data.eval_mixture``."""
        if self.eval_rows is None:
            return {}
        for chunk in trainer.model:
            chunk.eval()
        sc = self.score_pairs(trainer, self.eval_rows)
        for chunk in trainer.model:
            chunk.train()
        loss, m = bt_loss(sc[:, 0], sc[:, 1], center_coef=self.cfg.rm.center_coef)
        return {"eval/loss": float(loss), **{f"eval/{k}": float(v) for k, v in m.items()}}

