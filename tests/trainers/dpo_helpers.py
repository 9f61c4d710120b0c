"""Helpers for the DPO trainer tests: the tiny HF starting point, overrides, and the per-rank bodies that
``megatron_tulu.testing.run_distributed`` runs (module-level so spawned processes can import them).

A process launch costs 10-20 s on 2 shared cores, so one launch runs SEVERAL DPO runs one after another
(``init_distributed`` re-creates megatron's groups for each run).
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import torch

from trainer_helpers import make_tiny_hf, step_records  # noqa: F401 - re-exported for the DPO tests

LN2 = math.log(2.0)


def dpo_overrides(data_root: str | Path, init_hf: str | Path, run_dir: str | Path, **extra) -> list[str]:
    """Fast, quiet tiny-DPO overrides (``extra``: dotted key -> value); the held-out pairs of dpo/tiny stay on
    (12 pairs at ``--scale ci``: the eval pass is cheap). The token/reference caches go to ``data.cache_dir``."""
    o = {
        "data.root": str(data_root),
        "model.init_hf": str(init_hf),
        "run_dir": str(run_dir),
        "logging.progress_bar": "false",
        "logging.tensorboard": "false",
        "checkpoint.export_hf": "false",
        "checkpoint.interval": "0",
        "train.global_batch_size": "8",
        "train.micro_batch_size": "4",
    }
    o.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in o.items()]


def eval_records(run_dir: str | Path) -> dict[int, dict]:
    out = {}
    for line in (Path(run_dir) / "eval.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[int(rec["step"])] = rec
    return out


def ref_cache_files(cache_dir: str | Path) -> list[Path]:
    return sorted(Path(cache_dir).glob("ref_logps-*.pt"))


# ----------------------------------------------------------------------------------------------- per-rank bodies


def _recording_task(base, stop_after: int | None):
    """A DPOTask that records, per optimizer step, the global batch's pair indices and the cached reference rows
    fed to the loss, and (``stop_after``) sends itself SIGUSR1 during that step, as SLURM does before preemption."""

    class Recording(base):
        def microbatches(self, indices, trainer):
            mbs = super().microbatches(indices, trainer)
            step = trainer.step + 1
            self.seen[step] = {
                "indices": [int(i) for mb in mbs for i in mb["indices"].tolist()],
                "ref": torch.cat([mb["ref"] for mb in mbs]) if "ref" in mbs[0] else None,
            }
            if stop_after is not None and step == stop_after:
                os.kill(os.getpid(), signal.SIGUSR1)
            return mbs

    return Recording


def dpo_jobs(jobs: list[tuple[str, list[str]]]) -> list:
    """Per-rank body: run ``jobs`` one after another in the same processes.

    Each job is ``(kind, overrides)`` for ``load_config(DPOConfig, "dpo/tiny", overrides)``. Kinds: ``"fit"``
    runs ``Trainer(cfg, task).fit()``; ``"stop@N"`` does the same but sends SIGUSR1 during step N (the run must
    checkpoint and exit with REQUEUE_EXIT_CODE). Each gives a dict: ``exit`` (None or the SystemExit code),
    ``ref_cache_hit``, ``ref_train`` (cached reference logps [N, 2] or None), ``seen`` (per-step indices/ref
    rows) and ``start_step`` (the step the trainer started from, after any resume).
    """
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.dpo import DPOConfig, DPOTask
    from megatron_tulu.trainers.fit import Trainer

    out = []
    for kind, overrides in jobs:
        cfg = load_config(DPOConfig, "dpo/tiny", overrides)
        stop = int(kind.split("@")[1]) if kind.startswith("stop@") else None
        if kind != "fit" and stop is None:
            raise ValueError(f"unknown job kind {kind!r}")
        task = _recording_task(DPOTask, stop)(cfg)
        task.seen = {}
        trainer = Trainer(cfg, task)
        trainer.setup()
        start = trainer.step
        code = None
        try:
            trainer.fit()
        except SystemExit as e:
            code = e.code
        out.append({
            "exit": code,
            "ref_cache_hit": getattr(task, "ref_cache_hit", None),
            "ref_train": getattr(task, "ref_train", None),
            "seen": task.seen,
            "start_step": start,
        })
    return out


def sft_then_dpo(sft_overrides: list[str], dpo_overrides_: list[str]) -> dict:
    """Per-rank body: an SFT run (``sft/tiny``, exports ``run_dir/hf``) then a DPO run from that export."""
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.dpo import DPOConfig, DPOTask
    from megatron_tulu.trainers.fit import Trainer
    from megatron_tulu.trainers.sft import SFTConfig, SFTTask

    cfg = load_config(SFTConfig, "sft/tiny", sft_overrides)
    sft = Trainer(cfg, SFTTask(cfg)).fit()
    cfg = load_config(DPOConfig, "dpo/tiny", dpo_overrides_)
    dpo = Trainer(cfg, DPOTask(cfg)).fit()
    return {"sft": sft, "dpo": dpo}
