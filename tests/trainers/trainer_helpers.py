"""Helpers for the trainer tests: the tiny HF starting point, config overrides, metrics reading, and the
per-rank bodies that ``megatron_tulu.testing.run_distributed`` runs (module-level so spawned processes can
import them).

A process launch costs ~10-20 s on 2 shared cores, so each per-rank body runs SEVERAL trainer runs one after
another in the same processes (``init_distributed`` re-creates megatron's groups for each run).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Reference run: TP=1, global batch 8 as 2 micro-batches of 4, loss summed, 6 steps.
REF_STEPS = 6
# Split-invariance runs: global batch 8 cut differently; 2 steps (the step-2 loss shows the step-1 update).
SPLITS_1RANK = {f"{red}_{mb}": dict(mb=mb, red=red) for red in ("sum", "mean") for mb in (8, 2)}
SPLITS_DP2 = {f"{red}_dp2": dict(mb=2, red=red) for red in ("sum", "mean")}


def make_tiny_hf(out_dir: str | Path, vocab_size: int, seed: int = 0) -> Path:
    """Random fp32 HF Llama with the shape of the ``tiny`` preset and the synthetic tokenizer's vocab."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_tulu.checkpoint.hf_io import hf_config_from_preset
    from megatron_tulu.models.presets import get_preset

    preset = get_preset("tiny").with_(vocab_size=vocab_size)
    cfg = {k: v for k, v in hf_config_from_preset(preset).items() if k not in ("architectures", "torch_dtype")}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.05)
            else:
                p.uniform_(0.8, 1.2)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def base_overrides(data_root: str | Path, run_dir: str | Path, **extra) -> list[str]:
    """Fast, quiet tiny-SFT overrides shared by every test run (``extra``: dotted key -> value)."""
    data_root = Path(data_root)
    o = {
        "data.root": str(data_root),
        "data.cache_dir": str(data_root.parent / "data_cache"),  # tokenize once per session
        "run_dir": str(run_dir),
        "logging.progress_bar": "false",
        "logging.tensorboard": "false",
        "checkpoint.export_hf": "false",
        "train.global_batch_size": "8",
        "train.micro_batch_size": "4",
    }
    o.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in o.items()]


def step_records(run_dir: str | Path) -> dict[int, dict]:
    """``metrics.jsonl`` as {step: record}; when a step was logged more than once (a run killed after logging
    it and resumed from an earlier checkpoint) the LAST record wins."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[int(rec["step"])] = rec
    return dict(sorted(out.items()))


def losses(run_dir: str | Path) -> list[float]:
    return [r["loss"] for r in step_records(run_dir).values()]


# ----------------------------------------------------------------------------------------------- per-rank bodies


def rank_jobs(jobs: list[tuple[str, list[str]]]) -> list:
    """Per-rank body: run ``jobs`` one after another in the same processes.

    Each job is ``(kind, overrides)`` for ``load_config(SFTConfig, "sft/tiny", overrides)``:
    ``"fit"`` runs ``Trainer(cfg, SFTTask(cfg)).fit()`` and gives its summary; ``"stop@N"`` does the same but
    sends this process SIGUSR1 while step N runs and gives the ``SystemExit`` code (the requeue code when the run
    checkpointed and stopped); ``"error"`` runs only ``Trainer.setup()`` and gives the text of the exception it
    raised (None when it raised nothing). metrics.jsonl of each fit is written by rank 0 into its run_dir.
    """
    import os
    import signal

    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.fit import Trainer
    from megatron_tulu.trainers.sft import SFTConfig, SFTTask

    class StopAt(SFTTask):
        stop_step = 0

        def microbatches(self, indices, trainer):
            if trainer.step + 1 == self.stop_step:
                os.kill(os.getpid(), signal.SIGUSR1)
            return super().microbatches(indices, trainer)

    out = []
    for kind, overrides in jobs:
        cfg = load_config(SFTConfig, "sft/tiny", overrides)
        if kind == "fit":
            out.append(Trainer(cfg, SFTTask(cfg)).fit())
        elif kind.startswith("stop@"):
            task = StopAt(cfg)
            task.stop_step = int(kind.split("@")[1])
            try:
                Trainer(cfg, task).fit()
                out.append(None)
            except SystemExit as e:
                out.append(e.code)
        elif kind == "error":
            try:
                Trainer(cfg, SFTTask(cfg)).setup()
                out.append(None)
            except Exception as e:  # noqa: BLE001 - the text is what the test checks
                out.append(f"{type(e).__name__}: {e}")
        else:
            raise ValueError(f"unknown job kind {kind!r}")
    return out


def snapshot_grads_before_step(trainer) -> dict:
    """Make ``trainer``'s next optimizer steps first copy every parameter's reduced gradient (``main_grad``) into the
    returned dict (``"<chunk>.<name>"`` -> numpy array, picklable): the packed-vs-padded tests compare these."""
    grads: dict = {}
    step = trainer.optimizer.step

    def snapshot_then_step():
        for c, chunk in enumerate(trainer.model):
            for n, p in chunk.named_parameters():
                grads[f"{c}.{n}"] = p.main_grad.detach().float().numpy().copy()
        return step()

    trainer.optimizer.step = snapshot_then_step
    return grads
