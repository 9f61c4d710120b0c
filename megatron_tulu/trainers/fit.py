"""The one training loop (``fit``) shared by pretraining, SFT and DPO; RLVR calls ``train_step`` directly.

A stage differs by its :class:`Task`: how it builds its dataset, cuts a global batch into micro-batches, and
computes the loss on the last pipeline stage. The loop itself: resume -> for each step (sample global batch
-> this DP rank's micro-batches -> megatron forward/backward schedule -> optimizer step -> LR schedule ->
metrics -> checkpoint / preemption) -> final checkpoint -> HF export.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from megatron_tulu import platform
from megatron_tulu.config import to_dict
from megatron_tulu.parallel import ParallelDims, init_distributed
from megatron_tulu.plan.throughput import model_flops_utilization
from megatron_tulu.preemption import REQUEUE_EXIT_CODE, PreemptionWatcher
from megatron_tulu.trainers import checkpointing
from megatron_tulu.trainers.config import (
    CheckpointConfig, LoggingConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig,
)
from megatron_tulu.trainers.metrics import MetricsLogger

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a stage plugs into the loop."""

    metric_names: list[str]
    """Names of the per-micro-batch SUM metrics ``loss_fn`` returns (reduced over micro-batches and DP)."""

    def setup(self, trainer: "Trainer") -> int:
        """Build/load data; return the number of training examples (rows)."""

    def microbatches(self, indices: list[int], trainer: "Trainer") -> list[dict]:
        """This DP rank's examples ``indices`` as micro-batches of tensors (each with ``input_ids`` [b, S])."""

    def denominator(self, microbatches: list[dict]) -> float:
        """This rank's contribution to the loss normaliser (summed over DP)."""

    def forward(self, model, batch: dict) -> torch.Tensor:
        """Run the model on one micro-batch; returns the output tensor (logits on the last stage)."""

    def loss_fn(self, batch: dict, output: torch.Tensor, trainer: "Trainer") -> tuple[torch.Tensor, dict]:
        """On the last stage: (summed loss of the micro-batch, {metric_name: summed value})."""

    def finalize(self, sums: dict[str, float], denom: float) -> dict[str, float]:
        """Turn reduced sums into the step's logged metrics (must include ``loss``)."""


@dataclass
class StageConfig:
    """Fields common to every stage's top-level config."""

    run_dir: str = "runs/default"
    """Where checkpoints, metrics, TensorBoard logs and exports go."""
    device: str = "auto"
    """``auto``, ``cuda`` or ``cpu``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> None:
        """Choices and ranges of the shared fields (``load_config`` calls it; stages extend it); raises
        ``ValueError`` naming the field."""
        from megatron_tulu.config import check_at_least, check_choice
        from megatron_tulu.models.build import FP8_FORMATS

        m, p, t = self.model, self.parallel, self.train
        check_choice("device", self.device, ("auto", "cuda", "cpu"))
        check_choice("model.impl", m.impl, ("auto", "te", "local"))
        check_choice("model.dtype", m.dtype, ("auto", "bf16", "fp32"))
        check_choice("model.recompute", m.recompute, (None, "selective", "full"))
        check_choice("model.fp8", m.fp8, (None, *FP8_FORMATS))
        for name in ("tp", "pp", "cp", "vpp"):
            check_at_least(f"parallel.{name}", getattr(p, name), 1)
        for name in ("global_batch_size", "micro_batch_size", "seq_length"):
            check_at_least(f"train.{name}", getattr(t, name), 1)
        check_choice("train.loss_reduction", t.loss_reduction, ("sum", "mean"))
        check_choice("checkpoint.optimizer_sharding", self.checkpoint.optimizer_sharding,
                     ("fully_reshardable", "dp_reshardable"))


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up over ``warmup_ratio * total`` steps, then linear decay to ``min_lr_ratio * lr``.

    ``step`` counts from 0 (the LR used by the first optimizer step)."""
    warm = int(math.ceil(cfg.warmup_ratio * total))
    if warm and step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return cfg.lr * (1.0 - (1.0 - cfg.min_lr_ratio) * min(1.0, frac))


class Trainer:
    """Holds model, optimizer, data position and step; ``fit()`` runs the loop."""

    def __init__(self, cfg: StageConfig, task: Task, preset=None):
        self.cfg, self.task = cfg, task
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.step = 0
        self.preset = preset
        self.model = None
        self.optimizer = None
        self.peak_tflops = 0.0  # dense BF16 peak of a known GPU: metrics then carry an MFU estimate

    # ---- set-up -------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        platform.setup(cfg.device)
        self.dims: ParallelDims = init_distributed(
            ParallelDims(tp=cfg.parallel.tp, pp=cfg.parallel.pp, cp=cfg.parallel.cp, vpp=cfg.parallel.vpp),
            timeout_s=cfg.parallel.timeout_s,
        )
        from megatron.core import parallel_state as ps

        self.dp_rank = ps.get_data_parallel_rank()
        self.is_last_stage = ps.is_pipeline_last_stage()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        # the one rank per model replica that reports the last stage's per-micro-batch results: TP and CP peers
        # hold the same (replicated) losses and metrics
        self.reports_results = self.is_last_stage and self.tp_rank == 0 and ps.get_context_parallel_rank() == 0
        if platform.has_gpu():
            from megatron_tulu.plan.hardware import gpu_from_device_name

            spec = gpu_from_device_name(torch.cuda.get_device_name())
            self.peak_tflops = spec.bf16_tflops if spec else 0.0
        self._check_batch_layout()
        platform.seed_everything(cfg.train.seed)
        self.num_examples = self.task.setup(self)
        from megatron_tulu.trainers.model_setup import build_trainable

        self.model, self.optimizer = build_trainable(self)
        if hasattr(self.task, "after_model"):  # e.g. DPO's reference pre-pass, with the initial weights
            self.task.after_model(self)
        from megatron_tulu.data.sampler import EpochSampler

        self.sampler = EpochSampler(self.num_examples, cfg.train.global_batch_size, seed=cfg.train.seed)
        if cfg.train.max_steps > 0:
            self.total_steps = cfg.train.max_steps
        else:
            self.total_steps = max(1, int(cfg.train.epochs * len(self.sampler)))
        self._maybe_resume()
        self.metrics = MetricsLogger(self.run_dir, cfg.logging, enabled=dist.get_rank() == 0, total_steps=self.total_steps,
                                     run_config=to_dict(cfg))

    def _check_batch_layout(self) -> None:
        t = self.cfg.train
        per = t.micro_batch_size * self.dims.dp
        if t.global_batch_size % per:
            raise ValueError(
                f"train.global_batch_size={t.global_batch_size} is not divisible by micro_batch_size x dp = "
                f"{t.micro_batch_size} x {self.dims.dp} = {per}"
            )
        self.num_microbatches = t.global_batch_size // per
        if self.dims.vpp > 1 and self.num_microbatches < self.dims.pp:
            raise ValueError(
                f"parallel.vpp={self.dims.vpp}: the interleaved schedule needs at least pp={self.dims.pp} micro-batches "
                f"per step, but train.global_batch_size={t.global_batch_size} / (micro_batch_size x dp = {per}) = "
                f"{self.num_microbatches}"
            )

    def _maybe_resume(self) -> None:
        mode = self.cfg.checkpoint.resume
        path = None
        if mode == "auto":
            path = checkpointing.find_resume(self.ckpt_root)
        elif mode not in ("none", "", None):
            path = Path(mode)
        if path is None:
            return
        state = checkpointing.load(path, self.model, self.optimizer, self.cfg.checkpoint.optimizer_sharding)
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        if hasattr(self.task, "load_state_dict") and "task" in state:
            self.task.load_state_dict(state["task"])
        if dist.get_rank() == 0:
            print(f"[megatron-tulu] resumed from {path} at step {self.step}", file=sys.stderr, flush=True)

    # ---- one optimizer step -----------------------------------------------------------------------
    def train_step(self, microbatches: list[dict], denom: float, lr: float) -> dict[str, float]:
        """Forward/backward over ``microbatches`` with megatron's schedule, then an optimizer step."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from megatron_tulu.models.forward import schedule_inputs, schedule_shape

        task = self.task
        # undo the schedule's /M and DDP's /dp (under CP the schedule's x cp and DDP's / (dp x cp) also cancel)
        scale = len(microbatches) * self.dims.dp / max(denom, 1e-12)

        def forward_step(data_iter, model):
            batch = next(data_iter)
            out = task.forward(model, batch)

            def loss_func(output):
                loss_sum, metrics = task.loss_fn(batch, output, self)
                return loss_sum * scale, {k: v.detach().float() for k, v in metrics.items()}

            return out, loss_func

        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        seq, micro_batch_size = schedule_shape(self.model, microbatches[0])
        microbatches, data_iter = schedule_inputs(self.model, microbatches, forward_only=False)
        outs = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=data_iter,
            model=self.model,
            num_microbatches=len(microbatches),
            seq_length=seq,
            micro_batch_size=micro_batch_size,
            forward_only=False,
        )
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            raise FloatingPointError(f"optimizer step {self.step} was skipped (non-finite gradients)")
        sums = self.reduce_sums(outs)
        out = task.finalize(sums, denom)
        out["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        out["lr"] = lr
        return out

    def reduce_sums(self, outs: list[dict]) -> dict[str, float]:
        """Sum task metrics over micro-batches (last stage) and DP ranks; the result is on every rank."""
        names = self.task.metric_names
        vec = torch.zeros(len(names), dtype=torch.float64)
        if self.reports_results:
            for o in outs:
                for i, n in enumerate(names):
                    vec[i] += float(o[n])
        vec = vec.to(platform.device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(vec)
        return dict(zip(names, vec.tolist()))

    def all_reduce_dp(self, value: float) -> float:
        from megatron.core import parallel_state as ps

        t = torch.tensor([value], dtype=torch.float64, device=platform.device())
        if self.dims.dp > 1:
            dist.all_reduce(t, group=ps.get_data_parallel_group())
        return float(t.item())

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict:
        # Installed before setup: a SIGTERM/SIGUSR1 while data and weights load (minutes at scale) must not kill
        # the job with the default action (no checkpoint, no requeue code); it stops at the first step boundary.
        watcher = PreemptionWatcher()
        if self.model is None:
            self.setup()
        cfg = self.cfg
        last = {}
        t_start = time.time()
        if hasattr(self.task, "evaluate") and self.step == 0:
            self.metrics.log_eval(0, self.task.evaluate(self))
        try:
            while self.step < self.total_steps:
                indices = self.sampler.next_batch()
                from megatron_tulu.data.sampler import shard_batch

                local = shard_batch(indices, self.dp_rank, self.dims.dp)
                mbs = self.task.microbatches(local, self)
                denom = self.all_reduce_dp(self.task.denominator(mbs))
                t0 = time.time()
                last = self.train_step(mbs, denom, lr_at(self.step, self.total_steps, cfg.optim))
                self.step += 1
                tokens = sum(int(mb["input_ids"].numel()) for mb in mbs) * self.dims.dp
                last.update(step=self.step, step_time_s=time.time() - t0, tokens_per_s=tokens / max(time.time() - t0, 1e-9))
                if self.peak_tflops:
                    seq = int(mbs[0]["input_ids"].shape[1])
                    last["mfu"] = model_flops_utilization(self.preset, seq, last["tokens_per_s"] / self.dims.world,
                                                          self.peak_tflops)
                self.metrics.log(self.step, last)
                stop = watcher.requested()
                interval = cfg.checkpoint.interval
                if stop or (interval and self.step % interval == 0 and self.step < self.total_steps):
                    self.save()
                if stop:
                    if dist.get_rank() == 0:
                        print(f"[megatron-tulu] {watcher.signal_name}: checkpointed step {self.step}; exiting "
                              f"with {REQUEUE_EXIT_CODE} to be requeued", file=sys.stderr, flush=True)
                    self.metrics.close()
                    raise SystemExit(REQUEUE_EXIT_CODE)
            if not (self.ckpt_root / checkpointing.step_dir_name(self.step)).exists():
                self.save()
            if hasattr(self.task, "evaluate"):
                last.update(self.task.evaluate(self))
                self.metrics.log_eval(self.step, last)
            if cfg.checkpoint.export_hf:
                self.export_hf(self.run_dir / "hf")
        finally:
            watcher.restore()
        summary = {"steps": self.step, "final": last, "wall_s": time.time() - t_start}
        self.metrics.summary(summary)
        self.metrics.close()
        return summary

    def save(self) -> Path:
        # the model's shape, tokenizer and HF extras travel with the weights, so `convert mcore-to-hf` needs no config
        tokenizer_dir, extra = self._hf_meta()
        state = {"sampler": self.sampler.state_dict(), "total_steps": self.total_steps, "preset": self.preset.to_dict(),
                 "tokenizer_dir": tokenizer_dir, "hf_extra_config": extra}
        if hasattr(self.task, "state_dict"):
            state["task"] = self.task.state_dict()
        return checkpointing.save(
            self.ckpt_root, self.step, self.model, self.optimizer, state,
            sharding=self.cfg.checkpoint.optimizer_sharding, keep_last=self.cfg.checkpoint.keep_last,
        )

    def _hf_meta(self) -> tuple[str | None, dict]:
        """The task's tokenizer dir and extra HF config entries (what an HF export of this model carries)."""
        return getattr(self.task, "tokenizer_dir", None), getattr(self.task, "hf_extra_config", lambda: {})()

    def export_hf(self, out: Path) -> None:
        from megatron_tulu.checkpoint.model_io import export_hf

        tokenizer_dir, extra = self._hf_meta()
        export_hf(self.model, self.preset, out, tokenizer_dir=tokenizer_dir, extra_config=extra)


def run_stage(cfg: StageConfig, task: Task) -> dict:
    """Entry used by ``launch/*.py``: fit, then tear down process groups."""
    from megatron_tulu.parallel import destroy_distributed

    trainer = Trainer(cfg, task)
    try:
        return trainer.fit()
    finally:
        destroy_distributed()

