"""Rank-0 metrics: JSONL, TensorBoard, optional W&B, and a tqdm progress bar with tokens/s and ETA.

W&B: the run id is kept in ``run_dir/wandb_run_id`` and the run is opened with ``resume="allow"``, so a job that
is preempted and requeued (same ``run_dir``) keeps logging into the same W&B run, its steps continuing where the
checkpoint left off. ``WANDB_MODE=offline`` works as usual (files under ``run_dir/wandb``, ``wandb sync`` later).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path

from megatron_tulu import platform


class MetricsLogger:
    """Writes ``run_dir/metrics.jsonl`` (one line per step) and TensorBoard scalars; no-op off rank 0."""

    def __init__(self, run_dir: Path, cfg, enabled: bool = True, total_steps: int | None = None, prefix: str = "",
                 run_config: dict | None = None):
        self.enabled, self.cfg, self.prefix = enabled, cfg, prefix
        self.run_dir = Path(run_dir)
        self._tb = self._wandb = self._bar = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except Exception as e:  # noqa: BLE001 - logging must not kill training
                print(f"[megatron-tulu] TensorBoard disabled: {e}", file=sys.stderr)
        if cfg.wandb_project:
            self._wandb = self._open_wandb(cfg, run_config)
        if cfg.progress_bar and total_steps:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, desc=prefix or "train", file=sys.stderr, dynamic_ncols=True)
        self._t0 = time.time()

    def _open_wandb(self, cfg, run_config: dict | None):
        try:
            import wandb
        except ImportError:
            print("[megatron-tulu] logging.wandb_project set but wandb is not installed: W&B logging is off "
                  "(pip install wandb)", file=sys.stderr)
            return None
        id_file = self.run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        return wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, name=cfg.wandb_name or self.run_dir.name,
                          id=run_id, resume="allow", dir=str(self.run_dir), config=run_config or {})

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        rec = {"step": step, "time_s": round(time.time() - self._t0, 3), **metrics}
        mem = platform.peak_memory_bytes()
        rec["peak_mem_gb"] = round(mem / 2**30, 3)
        if step % max(1, self.cfg.interval) == 0:
            self._jsonl.write(json.dumps(rec) + "\n")
            if self._tb:
                for k, v in rec.items():
                    if isinstance(v, (int, float)) and k != "step":
                        self._tb.add_scalar(f"{self.prefix}{k}", v, step)
            if self._wandb:
                self._wandb.log(rec, step=step)
        if self._bar is not None:
            self._bar.n = step
            post = {k: f"{rec[k]:.4g}" for k in ("loss", "tokens_per_s", "reward") if k in rec}
            self._bar.set_postfix(post, refresh=False)
            self._bar.refresh()

    def log_eval(self, step: int, metrics: dict) -> None:
        """Evaluation metrics (keys starting with ``eval/``) to ``run_dir/eval.jsonl`` and TensorBoard."""
        if not self.enabled:
            return
        rec = {"step": step, **{k: v for k, v in metrics.items() if k.startswith("eval/")}}
        with open(self.run_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._wandb:
            self._wandb.log({k: v for k, v in rec.items() if k != "step"}, step=step)
        if self._tb:
            for k, v in rec.items():
                if k != "step":
                    self._tb.add_scalar(f"{self.prefix}{k}", v, step)

    def summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        final = summary.get("final", {})
        if self._wandb:
            self._wandb.summary.update({k: v for k, v in final.items() if isinstance(v, (int, float))})
        line = ", ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float))
        print(f"[megatron-tulu] done: {summary.get('steps')} steps in {summary.get('wall_s', 0):.1f}s; {line}", file=sys.stderr)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._wandb:
            self._wandb.finish()
            self._wandb = None
        self._jsonl.flush()
