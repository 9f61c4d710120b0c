"""Per-rank bodies of the reward-model trainer tests (module-level so that processes spawned by
``megatron_tulu.testing.run_distributed`` can import them). One launch runs several RM runs one after another."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import torch

from dpo_helpers import dpo_overrides

SCORED_PAIRS = 6
"""Held-out pairs each run scores after training (compared with transformers and across layouts)."""


def rm_overrides(data_root, init_hf, run_dir, **extra) -> list[str]:
    """DPO's fast, quiet tiny overrides: ``rm/tiny`` has the same keys."""
    return dpo_overrides(data_root, init_hf, run_dir, **extra)


def _value_loader_matches(trainer, task, cfg, export: Path) -> dict:
    """Load ``export`` the way the PPO value model does (``rlvr.value_init_hf``: ``value_model_shape``, the backbone
    with ``load_hf_into_model(backbone_only=True)``, then ``score.weight`` into the ``ScalarHead``) and compare
    every tensor with the trained model's, bit for bit."""
    from megatron_tulu.checkpoint.model_io import load_hf_into_model, named_local_params
    from megatron_tulu.trainers.model_setup import build_model_chunks
    from megatron_tulu.trainers.rlvr.value import value_model_shape

    opts = SimpleNamespace(value_model=None, value_init_hf=str(export))
    reader, preset = value_model_shape(opts, cfg.model, trainer.preset, task.vocab_size)

    def load(model):  # as trainers/rlvr/value.py's load_reward_model
        load_hf_into_model(model, reader, preset, backbone_only=True)
        if model.post_process:
            with torch.no_grad():
                model.output_layer.weight.copy_(reader.get("score.weight").reshape(1, -1))

    cold = dataclasses.replace(cfg.model, init_hf=None, init_mcore=None)
    chunks = build_model_chunks(trainer, cold, preset, wrap_ddp=False, customize=load, head="scalar")
    trained = {g: p for _, g, p in named_local_params(trainer.model)}
    loaded = {g: p for _, g, p in named_local_params(chunks)}
    return {"same_names": sorted(trained) == sorted(loaded),
            "mismatched": [g for g in trained if g in loaded and not torch.equal(trained[g].detach(), loaded[g].detach())],
            "score_weight": reader.get("score.weight").clone(), "preset": preset.to_dict()}


def _recording_task(base):
    """An RMTask whose ``loss_fn`` records, per optimizer step and training-pair index, the (chosen, rejected) scores
    it computed and the margin its batch carried (None without one): ``task.seen[step][index]``."""

    class Recording(base):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.seen: dict[int, dict[int, tuple]] = {}

        def loss_fn(self, batch, output, trainer):
            sc = self.scores(batch, output).detach().double().cpu()
            k = len(batch["indices"])
            rec = self.seen.setdefault(trainer.step + 1, {})
            for j, i in enumerate(batch["indices"].tolist()):
                m = float(batch["margin"][j]) if "margin" in batch else None
                rec[int(i)] = (float(sc[j]), float(sc[j + k]), m)
            return super().loss_fn(batch, output, trainer)

    return Recording


def rm_jobs(jobs: list[tuple[str, list[str]]]) -> list:
    """Per-rank body: for each ``(kind, overrides)`` (``rm/tiny``) fit, then score the first ``SCORED_PAIRS`` held-out
    pairs with the trained model. Kind ``fit+export`` also checks the HF export with the value model's loader; a
    kind containing ``+record`` records every training pair's scores (and margin) as the loss saw them.
    Gives per run: ``summary``, ``scores`` [n, 2], the scored rows' ``chosen``/``rejected`` token ids,
    ``value_loader`` (export runs) and ``seen`` (recording runs: step -> pair index -> (r_c, r_r, margin))."""
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.fit import Trainer
    from megatron_tulu.trainers.rm import RMConfig, RMTask

    out = []
    for kind, overrides in jobs:
        cfg = load_config(RMConfig, "rm/tiny", overrides)
        record = "+record" in kind
        kind = kind.replace("+record", "")
        task = (_recording_task(RMTask) if record else RMTask)(cfg)
        trainer = Trainer(cfg, task)
        summary = trainer.fit()
        rows = [task.eval_rows[i] for i in range(SCORED_PAIRS)]
        for chunk in trainer.model:
            chunk.eval()
        res = {"summary": summary, "scores": task.score_pairs(trainer, rows),
               "chosen": [list(r["chosen_input_ids"]) for r in rows],
               "rejected": [list(r["rejected_input_ids"]) for r in rows]}
        if kind == "fit+export":
            res["value_loader"] = _value_loader_matches(trainer, task, cfg, Path(cfg.run_dir) / "hf")
        if record:
            res["seen"] = task.seen
        out.append(res)
    return out
