"""DPO (Tülu 3: length-normalised ``dpo_norm``, beta 5) as a Task for the shared loop.

Reference log-probs are computed ONCE before training by a forward-only pass of the initial (SFT) model,
sharded over DP, and cached on disk beside the tokenized data under a key made of the data cache key and a
fingerprint of the initial weights; a restart reuses the file. ``ref_mode: on_the_fly`` instead keeps a frozen
copy of the model and scores each batch as it comes (for comparison; PP=1 only).

A micro-batch holds ``b`` pairs as ``2b`` rows: chosen ``0..b-1``, rejected ``b..2b-1``. ``forward_mode``
``concatenated`` runs them in one forward; ``separate`` (Tülu 3, lower peak logits memory; PP=1) runs chosen
and rejected as two forwards and reduces each to per-sequence log-probs before the next.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_tulu import platform
from megatron_tulu.checkpoint.hf_io import write_atomic
from megatron_tulu.data.sampler import IGNORE_INDEX, collate_preference, shift_targets, split_microbatches
from megatron_tulu.losses.dpo import NEEDS_REFERENCE, get_dpo_loss
from megatron_tulu.models.logprobs import token_logprobs
from megatron_tulu.models.packed import forward_rows
from megatron_tulu.trainers.config import DataConfig
from megatron_tulu.trainers.fit import StageConfig
from megatron_tulu.trainers.packed_pairs import PackedPairsMixin, per_document_sums
from megatron_tulu.trainers.task import DataStageMixin, Task

METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen", "logps/rejected"]


@dataclass
class DPOOptions:
    """DPO-specific settings."""

    loss_type: str = "dpo_norm"
    """``dpo`` (sigmoid), ``dpo_norm`` (Tülu 3, length-normalised), ``ipo``, ``simpo``, ``wpo``."""
    beta: float = 5.0
    """Inverse temperature (Tülu 3 dpo_norm: 5; plain dpo usually 0.1)."""
    label_smoothing: float = 0.0
    """Conservative-DPO label smoothing."""
    simpo_gamma_beta_ratio: float = 0.3
    """SimPO target margin divided by beta."""
    ref_mode: str = "cached"
    """``cached`` (pre-pass once, stored on disk) or ``on_the_fly`` (frozen copy scores each batch; PP=1)."""
    forward_mode: str = "separate"
    """``separate`` (chosen then rejected, PP=1) or ``concatenated`` (one forward; any PP)."""
    use_fused_loss: bool = False
    """Compute the loss and its metrics with the Triton fused DPO kernel (``kernels.dpo_loss``) from per-token
    logps instead of the torch functions of ``megatron_tulu.losses.dpo``: the same numbers (tested), for
    ``dpo``, ``dpo_norm``, ``ipo`` and ``simpo`` (not ``wpo``). On CPU it needs ``TRITON_INTERPRET=1``."""


@dataclass
class DPOConfig(StageConfig):
    """Top-level config of ``launch/dpo.py``."""

    data: DataConfig = field(default_factory=DataConfig)
    dpo: DPOOptions = field(default_factory=DPOOptions)

    def validate(self) -> None:
        from megatron_tulu.config import check_choice

        super().validate()
        o = self.dpo
        get_dpo_loss(o.loss_type)  # names the choices
        check_choice("dpo.ref_mode", o.ref_mode, ("cached", "on_the_fly"))
        check_choice("dpo.forward_mode", o.forward_mode, ("separate", "concatenated"))
        if self.parallel.pp > 1 and (o.forward_mode == "separate" or o.ref_mode == "on_the_fly"):
            raise ValueError("with parallel.pp > 1 use dpo.forward_mode=concatenated and dpo.ref_mode=cached")
        if o.use_fused_loss:
            from kernels.dpo_loss import LOSS_IDS

            if o.loss_type not in LOSS_IDS:
                raise ValueError(f"dpo.use_fused_loss=true supports dpo.loss_type in {sorted(LOSS_IDS)}, "
                                 f"got {o.loss_type!r}; set dpo.use_fused_loss=false")


FINGERPRINT_SAMPLES_PER_FILE = 1024
"""Besides its first and last MiB, a file is sampled at this many evenly spaced 64 KiB windows: files up to
~66 MiB are read whole; in larger ones a training step, which changes every large matrix, changes sampled bytes,
and a 405B checkpoint is still fingerprinted in seconds. (A change confined to one small tensor deep inside a
large file can be missed: delete the ``ref_logps-*.pt`` cache by hand after such surgery.)"""


def weights_fingerprint(path: str | None, seed: int, model_desc: str = "") -> str:
    """Content-sensitive id of a checkpoint directory, cheap enough for 405B (never reads a whole file).

    Hashes each weight/config file's name and size, its first and last MiB, and evenly spaced 64 KiB windows.
    A random init (no path) is keyed by the seed and ``model_desc`` (the model shape), which fix its weights.
    """
    h = hashlib.sha256()
    if not path:
        h.update(f"random-init-seed-{seed}-{model_desc}".encode())
        return h.hexdigest()[:16]
    mib, window = 1 << 20, 64 << 10
    for f in sorted(Path(path).rglob("*")):
        if f.is_file() and (f.suffix in (".safetensors", ".distcp", ".json")):
            size = f.stat().st_size
            h.update(f"{f.relative_to(path)}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(mib))
                if size > 2 * mib:
                    stride = max(window, (size - 2 * mib) // FINGERPRINT_SAMPLES_PER_FILE)
                    for off in range(mib, size - mib, stride):
                        fh.seek(off)
                        h.update(fh.read(window))
                    fh.seek(-mib, os.SEEK_END)
                    h.update(fh.read())
    return h.hexdigest()[:16]


def sequence_logps(output: torch.Tensor, targets: torch.Tensor, vocab: int, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs ``[R]`` and label-token counts ``[R]`` of rows from the model output ``[R, S, ·]``
    (vocab-parallel logits, or hidden states with the fused logprob head)."""
    valid = targets != IGNORE_INDEX
    lp = token_logprobs(output, targets.clamp(min=0), model, vocab)
    return (lp * valid).sum(-1), valid.sum(-1)


class DPOTask(PackedPairsMixin, DataStageMixin, Task):
    metric_names = ["loss_sum", "pairs", "tokens_useful", "tokens_computed"] + METRICS

    def __init__(self, cfg: DPOConfig):
        cfg.validate()  # load_config did already; a config built in code is checked here
        self.cfg = cfg
        self.loss = get_dpo_loss(cfg.dpo.loss_type)
        self.needs_ref = NEEDS_REFERENCE[cfg.dpo.loss_type]

    # ---- data ----------------------------------------------------------------------------------
    def setup(self, trainer) -> int:
        cfg = self.cfg
        self.load_tokenizer(cfg.data)
        self.rows = self.build(trainer, "preference", cfg.data.mixture, cfg.train.seq_length)
        self.data_key = self.data_report.cache_key
        self.eval_rows = None
        if cfg.data.eval_mixture:
            self.eval_rows = self.build(trainer, "preference", cfg.data.eval_mixture, cfg.train.seq_length)
            self.eval_key = self.data_report.cache_key
        return len(self.rows)

    def _batch(self, rows, indices: list[int], ref: torch.Tensor | None, pad_to: int | None) -> dict:
        exs = [rows[i] for i in indices]
        b = collate_preference(exs, self.pad_id, pad_to_multiple_of=8)
        if pad_to is not None and b["input_ids"].shape[1] < pad_to:
            extra = pad_to - b["input_ids"].shape[1]
            b["input_ids"] = torch.nn.functional.pad(b["input_ids"], (0, extra), value=self.pad_id)
            b["labels"] = torch.nn.functional.pad(b["labels"], (0, extra), value=IGNORE_INDEX)
        s = b["input_ids"].shape[1]
        b["position_ids"] = torch.arange(s).expand_as(b["input_ids"])
        b["targets"] = shift_targets(b["labels"])
        b["tokens"] = (b["targets"] != IGNORE_INDEX).sum(-1)
        b["indices"] = torch.tensor(indices)
        b["useful_tokens"] = sum(len(e["chosen_input_ids"]) + len(e["rejected_input_ids"]) for e in exs)
        if ref is not None:
            b["ref"] = ref[torch.tensor(indices)]  # [b, 2]: chosen, rejected summed ref logps
        return b

    def _pad_to(self, trainer) -> int | None:
        return self.cfg.train.seq_length if trainer.dims.pp > 1 else None

    def microbatches(self, indices: list[int], trainer) -> list[dict]:
        ref = self.ref_train if self.needs_ref and self.cfg.dpo.ref_mode == "cached" else None
        if self.token_budget:  # packed rows (chosen then rejected documents), one forward each
            def add_ref(b):
                if ref is not None:
                    b["ref"] = ref[b["indices"]]
            return self.packed_microbatches(indices, trainer, add_ref)
        return [self._batch(self.rows, c, ref, self._pad_to(trainer))
                for c in split_microbatches(indices, self.cfg.train.micro_batch_size)]

    def denominator(self, microbatches: list[dict]) -> float:
        return float(sum(len(mb["indices"]) for mb in microbatches))

    # ---- reference pass --------------------------------------------------------------------------
    def after_model(self, trainer) -> None:
        self.check_budget(trainer)
        self.cfg_vocab = trainer.preset.vocab_size
        fp = weights_fingerprint(self.cfg.model.init_hf or self.cfg.model.init_mcore, self.cfg.train.seed,
                                 repr(trainer.preset))
        # eval rewards are measured against the initial model, except for reference-free losses (SimPO), whose
        # eval loss ignores it: no reference pass at all then
        if self.eval_rows is not None and self.needs_ref:
            self.ref_eval = self._cached_ref(trainer, self.eval_rows, f"{self.eval_key}-{fp}")
        if not self.needs_ref:
            return
        if self.cfg.dpo.ref_mode == "on_the_fly":
            from megatron_tulu.trainers.model_setup import build_reference

            self.ref_model = build_reference(trainer, self.cfg.model, trainer.preset)[0]
            self.ref_model.eval()
            return
        self.ref_train = self._cached_ref(trainer, self.rows, f"{self.data_key}-{fp}")

    def _cached_ref(self, trainer, rows, key: str) -> torch.Tensor:
        cache = Path(self.cfg.data.cache_dir or Path(trainer.run_dir) / "data_cache") / f"ref_logps-{key}.pt"
        if cache.exists():
            ref = torch.load(cache)
            if ref.shape != (len(rows), 2):
                raise ValueError(f"{cache}: shape {tuple(ref.shape)} does not match {len(rows)} pairs; delete it")
            self.ref_cache_hit = True
            return ref
        if trainer.step > 0 or any(trainer.ckpt_root.glob("step_*")):
            raise RuntimeError(f"reference cache {cache} is missing but the run already has checkpoints: "
                               "reference logps must come from the initial model; restore the file or start fresh")
        self.ref_cache_hit = False
        ref = self.score_pairs(trainer, rows)
        if dist.get_rank() == 0:
            buf = io.BytesIO()
            torch.save(ref, buf)
            write_atomic(cache, buf.getvalue())
        if dist.is_initialized():
            dist.barrier()
        return ref

    def score_pairs(self, trainer, rows) -> torch.Tensor:
        """Summed logps ``[N, 2]`` (chosen, rejected) of every pair under the current model, sharded over DP."""
        from megatron_tulu.models.forward import forward_only_map

        n, dp, mbs = len(rows), trainer.dims.dp, self.cfg.train.micro_batch_size
        mine = list(range(trainer.dp_rank, n, dp))
        out = torch.zeros(n, 2, dtype=torch.float64)
        # every DP rank runs the same number of micro-batches (pipeline collectives); pad with index 0
        per_rank = -(-n // dp)  # ceil(n / dp) ...
        per_rank = -(-per_rank // mbs) * mbs  # ... rounded up to whole micro-batches
        padded = mine + [mine[0] if mine else 0] * (per_rank - len(mine))
        chunks = [padded[i:i + mbs] for i in range(0, per_rank, mbs)]
        batches = [self._batch(rows, c, None, self._pad_to(trainer)) for c in chunks]
        vocab = trainer.preset.vocab_size
        res = forward_only_map(trainer.model, batches, self._forward_concat,
                               lambda b, logits: sequence_logps(logits, b["targets"].to(logits.device), vocab, trainer.model)[0])
        if trainer.reports_results:
            seen = set()
            for b, r in zip(batches, res):
                k = len(b["indices"])
                for j, idx in enumerate(b["indices"].tolist()):
                    if idx in seen or idx not in mine:
                        continue
                    seen.add(idx)
                    out[idx, 0], out[idx, 1] = r[j].double(), r[j + k].double()
        out = out.to(platform.device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(out)
        return out.cpu()

    # ---- forward + loss --------------------------------------------------------------------------
    def _forward_concat(self, model, batch):
        dev = platform.device()
        return model(batch["input_ids"].to(dev), batch["position_ids"].to(dev), None)

    def forward(self, model, batch: dict) -> torch.Tensor:
        if "doc_index" in batch:  # a packed row: one forward whatever dpo.forward_mode
            if self.needs_ref and self.cfg.dpo.ref_mode == "on_the_fly":
                with torch.no_grad():
                    out = forward_rows(self.ref_model, batch)
                    lp = token_logprobs(out, batch["targets"].to(out.device).clamp(min=0), self.ref_model, self.cfg_vocab)
                    ref = per_document_sums(lp, batch)
                k = len(batch["indices"])
                batch["ref"] = torch.stack([ref[:k], ref[k:]], dim=1).double().cpu()
            return forward_rows(model, batch)
        if self.needs_ref and self.cfg.dpo.ref_mode == "on_the_fly":
            with torch.no_grad():
                logits = self._forward_concat(self.ref_model, batch)
                ref, _ = sequence_logps(logits, batch["targets"].to(logits.device), self.cfg_vocab, self.ref_model)
            k = len(batch["indices"])
            batch["ref"] = torch.stack([ref[:k], ref[k:]], dim=1).double().cpu()
        if self.cfg.dpo.forward_mode == "concatenated":
            return self._forward_concat(model, batch)
        dev = platform.device()
        k = len(batch["indices"])
        parts = []
        for sl in (slice(0, k), slice(k, 2 * k)):
            logits = model(batch["input_ids"][sl].to(dev), batch["position_ids"][sl].to(dev), None)
            targets = batch["targets"][sl].to(dev)
            if self.cfg.dpo.use_fused_loss:  # the kernel reduces per-token logps itself
                parts.append(token_logprobs(logits, targets.clamp(min=0), model, self.cfg_vocab))
            else:
                parts.append(sequence_logps(logits, targets, self.cfg_vocab, model)[0])
        return torch.cat(parts)  # [2b] per-sequence summed logps, or [2b, S] per-token logps (fused loss)

    def loss_fn(self, batch: dict, output: torch.Tensor, trainer) -> tuple[torch.Tensor, dict]:
        targets = batch["targets"].to(output.device)
        if "doc_index" in batch:  # packed: per-document sums of the row's token log-probs, chosen documents first
            lp = token_logprobs(output, targets.clamp(min=0), trainer.model, trainer.preset.vocab_size)
            loss, metrics = self._loss_from_seq(batch, per_document_sums(lp, batch))
        elif self.cfg.dpo.use_fused_loss:
            if output.dim() == 3:  # concatenated forward: logits (or hidden states with the fused logprob head)
                output = token_logprobs(output, targets.clamp(min=0), trainer.model, trainer.preset.vocab_size)
            loss, metrics = self._fused_loss(batch, output, targets != IGNORE_INDEX)
        else:
            if output.dim() == 3:
                output, _ = sequence_logps(output, targets, trainer.preset.vocab_size, trainer.model)
            loss, metrics = self._loss_from_seq(batch, output)
        k = len(batch["indices"])
        sums = {"loss_sum": loss.detach() * k, "pairs": torch.tensor(float(k)), **self.token_sums(batch)}
        sums.update({m: metrics[m].detach() * k for m in METRICS})
        return loss * k, sums

    def _loss_from_seq(self, batch: dict, seq_logps: torch.Tensor):
        k = len(batch["indices"])
        tokens = batch["tokens"].to(seq_logps.device)
        ref = batch.get("ref")
        rc = rr = None
        if ref is not None:
            ref = ref.to(seq_logps.device, seq_logps.dtype)
            rc, rr = ref[:, 0], ref[:, 1]
        o = self.cfg.dpo
        return self.loss(seq_logps[:k], seq_logps[k:], rc, rr, tokens[:k], tokens[k:], beta=o.beta,
                         label_smoothing=o.label_smoothing, gamma_beta_ratio=o.simpo_gamma_beta_ratio)

    def _fused_loss(self, batch: dict, token_logps: torch.Tensor, valid: torch.Tensor):
        """The loss from per-token policy logps ``[2b, S]`` (chosen rows first) with the Triton kernel.

        The cached reference is one summed logp per sequence; the kernel reduces per-token reference logps over
        the same mask, so each sum is placed on its row's first label token (zeros elsewhere): the kernel's sum
        (``dpo``) and its length-normalised mean (``dpo_norm``, ``ipo``) then see exactly the cached value.
        """
        from kernels.dpo_loss import fused_dpo_loss

        ref_tok = None
        ref = batch.get("ref")
        if ref is not None:
            seq_ref = torch.cat([ref[:, 0], ref[:, 1]]).to(token_logps.device, token_logps.dtype)
            first = valid.to(torch.int8).argmax(dim=-1)
            ref_tok = torch.zeros_like(token_logps)
            ref_tok[torch.arange(len(first), device=first.device), first] = seq_ref
        o = self.cfg.dpo
        return fused_dpo_loss(token_logps * valid, ref_tok, valid, loss_type=o.loss_type, beta=o.beta,
                              label_smoothing=o.label_smoothing, gamma_beta_ratio=o.simpo_gamma_beta_ratio)

    def finalize(self, sums: dict[str, float], denom: float) -> dict[str, float]:
        n = max(sums["pairs"], 1.0)
        out = {"loss": sums["loss_sum"] / max(denom, 1e-12), **self.throughput(sums)}
        out.update({m: sums[m] / n for m in METRICS})
        return out

    # ---- held-out preference accuracy ------------------------------------------------------------
    def evaluate(self, trainer) -> dict[str, float]:
        """Implicit-reward accuracy and margin on the eval pairs (same loss definition as training)."""
        if self.eval_rows is None:
            return {}
        for chunk in trainer.model:
            chunk.eval()
        pol = self.score_pairs(trainer, self.eval_rows)
        for chunk in trainer.model:
            chunk.train()
        n = len(self.eval_rows)
        tokens = torch.tensor([[sum(1 for t in r["chosen_labels"][1:] if t != IGNORE_INDEX),
                                sum(1 for t in r["rejected_labels"][1:] if t != IGNORE_INDEX)] for r in self.eval_rows])
        ref = getattr(self, "ref_eval", None)
        batch = {"indices": torch.arange(n), "tokens": tokens.T.reshape(-1), "ref": ref}
        loss, m = self._loss_from_seq(batch, torch.cat([pol[:, 0], pol[:, 1]]))
        return {"eval/loss": float(loss), "eval/accuracy": float(m["rewards/accuracy"]),
                "eval/margin": float(m["rewards/margin"])}
