"""The one training loop shared by every stage: ``Trainer.run_steps`` (preemption, checkpoint cadence, evaluation,
export, summary) around a step function; ``fit`` runs it with ``data_step`` (pretraining, SFT, DPO), RLVR with its
rollout step (``trainers.rlvr.loop``), which calls ``train_step`` for the policy and the value model.

A stage differs by its :class:`~megatron_tulu.trainers.task.Task`: how it builds its dataset, cuts a global batch
into micro-batches, and computes the loss on the last pipeline stage. The loop itself: resume -> for each step
(sample global batch -> this DP rank's micro-batches -> megatron forward/backward schedule -> optimizer step -> LR
schedule -> metrics -> checkpoint / preemption) -> final checkpoint -> evaluation -> HF export.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from megatron_tulu import platform
from megatron_tulu.config import to_dict
from megatron_tulu.parallel import ParallelDims, init_distributed
from megatron_tulu.plan.throughput import model_flops_utilization
from megatron_tulu.preemption import REQUEUE_EXIT_CODE, PreemptionWatcher
from megatron_tulu.checkpoint import distributed as checkpointing
from megatron_tulu.trainers.config import (
    CheckpointConfig, ClusterConfig, LoggingConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig,
)
from megatron_tulu.trainers.metrics import MetricsLogger
from megatron_tulu.trainers.task import Task

log = logging.getLogger(__name__)


@dataclass
class StageConfig:
    """Fields common to every stage's top-level config."""

    run_dir: str = "runs/default"
    """Where checkpoints, metrics, TensorBoard logs and exports go (shipped configs: ``${runs_root}/<stage>``)."""
    runs_root: str = "runs/default"
    """This size's stage runs, ``${runs_root}/<stage>``: shipped configs name their ``run_dir`` and the earlier
    stages' HF exports (``model.init_hf``, ``rlvr.value_init_hf``) under it, so a stage finds the one before it.
    The SLURM scripts set it to ``$MT_RUNS_DIR/<size>``; locally it is ``runs/<size>``."""
    device: str = "auto"
    """``auto``, ``cuda`` or ``cpu``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

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
        check_at_least("model.recompute_layers", m.recompute_layers, 0)
        if m.recompute_layers and m.recompute != "full":
            raise ValueError(f"model.recompute_layers={m.recompute_layers} needs model.recompute=full (got "
                             f"{m.recompute!r})")
        check_choice("model.fp8", m.fp8, (None, *FP8_FORMATS))
        for name in ("tp", "pp", "cp", "vpp"):
            check_at_least(f"parallel.{name}", getattr(p, name), 1)
        for name in ("global_batch_size", "micro_batch_size", "seq_length"):
            check_at_least(f"train.{name}", getattr(t, name), 1)
        check_choice("train.loss_reduction", t.loss_reduction, ("sum", "mean"))
        check_choice("checkpoint.optimizer_sharding", self.checkpoint.optimizer_sharding,
                     ("fully_reshardable", "dp_reshardable"))
        self.cluster.validate()


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
        self.sampler = None
        self.peak_tflops = 0.0  # dense BF16 peak of a known GPU: metrics then carry an MFU estimate

    # ---- set-up -------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        platform.setup(cfg.device)
        self.dims: ParallelDims = init_distributed(
            ParallelDims(tp=cfg.parallel.tp, pp=cfg.parallel.pp, cp=cfg.parallel.cp, vpp=cfg.parallel.vpp),
            timeout_s=cfg.parallel.timeout_s,
        )
        if platform.has_gpu():
            from megatron_tulu.plan.hardware import gpu_from_device_name

            spec = gpu_from_device_name(torch.cuda.get_device_name())
            self.peak_tflops = spec.bf16_tflops if spec else 0.0
        self._check_batch_layout()
        platform.seed_everything(cfg.train.seed)
        self.num_examples = self.task.setup(self)
        from megatron_tulu.trainers.model_setup import build_trainable

        self.model, self.optimizer = build_trainable(self)
        self.task.after_model(self)  # e.g. DPO's reference pre-pass, with the initial weights
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
        if path is not None:
            self.resume_from(path)

    def resume_from(self, path: Path) -> None:
        """Load model, optimizer, step, data position and task state from the checkpoint at ``path``."""
        state = checkpointing.load(path, self.model, self.optimizer, self.cfg.checkpoint.optimizer_sharding)
        self.step = int(state["step"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        if "task" in state:
            self.task.load_state_dict(state["task"])
        if dist.get_rank() == 0:
            print(f"[megatron-tulu] resumed from {path} at step {self.step}", file=sys.stderr, flush=True)

    def setup_beside(self, other: "Trainer", build: Callable[["Trainer"], tuple[list, object]]) -> None:
        """Set up a second model on ``other``'s ranks (the PPO value model): the same ``ParallelDims``, batch layout
        and step count; its own model and optimizer from ``build(self)``, checkpointed under its own ``ckpt_root``
        by ``save`` and resumed at ``other``'s step by ``resume_from``, as any trainer."""
        self.dims, self.num_microbatches, self.total_steps = other.dims, other.num_microbatches, other.total_steps
        self.peak_tflops, self.sampler = other.peak_tflops, None
        self.model, self.optimizer = build(self)
        if other.step > 0:
            self.resume_from(self.ckpt_root / checkpointing.step_dir_name(other.step))

    # ---- one optimizer step -----------------------------------------------------------------------
    def train_step(self, microbatches: list[dict], denom: float, lr: float) -> dict[str, float]:
        """Forward/backward over ``microbatches`` with megatron's schedule, then an optimizer step."""
        from megatron_tulu.models.forward import schedule_inputs, schedule_shape
        from megatron_tulu.models.training import run_schedule

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
        outs = run_schedule(self.model, forward_step, data_iter, len(microbatches), seq, micro_batch_size,
                            forward_only=False)
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
        """``value`` summed over the data-parallel replicas."""
        t = torch.tensor([value], dtype=torch.float64, device=platform.device())
        return float(self.dims.all_reduce_dp(t).item())

    # this process's place in the layout (``ParallelDims``, filled once by ``init_distributed``)
    dp_rank = property(lambda self: self.dims.dp_rank)
    tp_rank = property(lambda self: self.dims.tp_rank)
    is_last_stage = property(lambda self: self.dims.is_last_stage)
    reports_results = property(lambda self: self.dims.reports_results)

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Set up (unless done), then train on the task's batches until ``total_steps`` (``run_steps``)."""
        # Installed before setup: a SIGTERM/SIGUSR1 while data and weights load (minutes at scale) must not kill
        # the job with the default action (no checkpoint, no requeue code); it stops at the first step boundary.
        watcher = PreemptionWatcher()
        if self.model is None:
            self.setup()
        return self.run_steps(self.data_step, watcher=watcher)

    def data_step(self) -> dict[str, float]:
        """One optimizer step on the sampler's next global batch (this DP rank's share, the task's micro-batches)."""
        local = self.task.shard(self.sampler.next_batch(), self)
        mbs = self.task.microbatches(local, self)
        denom = self.all_reduce_dp(self.task.denominator(mbs))
        t0 = time.time()
        out = self.train_step(mbs, denom, lr_at(self.step, self.total_steps, self.cfg.optim))
        self.step += 1
        elapsed = max(time.time() - t0, 1e-9)
        tokens = sum(int(mb["input_ids"].numel()) for mb in mbs) * self.dims.dp
        out.update(step=self.step, step_time_s=elapsed, tokens_per_s=tokens / elapsed)
        if self.peak_tflops:
            seq = int(mbs[0]["input_ids"].shape[1])
            out["mfu"] = model_flops_utilization(self.preset, seq, out["tokens_per_s"] / self.dims.world, self.peak_tflops)
        return out

    def run_steps(self, step_fn: Callable[[], dict], save: Callable[[], object] | None = None,
                  watcher: PreemptionWatcher | None = None) -> dict:
        """The loop skeleton every stage shares (``fit`` and RLVR): call ``step_fn`` (one optimizer step; it
        advances ``self.step`` and returns the step's metrics) until ``total_steps``; log each step; checkpoint
        every ``checkpoint.interval`` steps, at the end, and on SIGTERM/SIGUSR1 (then exit with the requeue code);
        evaluate before the first and after the last step; export to HF; write the run summary.

        ``save`` replaces ``self.save`` (RLVR also checkpoints its value model and rewinds the sampler over
        batches generated ahead)."""
        save = save or self.save
        watcher = watcher or PreemptionWatcher()
        interval = self.cfg.checkpoint.interval
        last: dict = {}
        t_start = time.time()
        try:
            if self.step == 0 and (evals := self.task.evaluate(self)):
                self.metrics.log_eval(0, evals)
            while self.step < self.total_steps:
                last = step_fn()
                self.metrics.log(self.step, last)
                stop = watcher.requested()
                if stop or (interval and self.step % interval == 0):
                    save()
                if stop:
                    if dist.get_rank() == 0:
                        print(f"[megatron-tulu] {watcher.signal_name}: checkpointed step {self.step}; exiting "
                              f"with {REQUEUE_EXIT_CODE} to be requeued", file=sys.stderr, flush=True)
                    self.metrics.close()
                    raise SystemExit(REQUEUE_EXIT_CODE)
            if not (self.ckpt_root / checkpointing.step_dir_name(self.step)).exists():
                save()
            if evals := self.task.evaluate(self):
                last.update(evals)
                self.metrics.log_eval(self.step, last)
            if self.cfg.checkpoint.export_hf:
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
        state = {"sampler": self.sampler.state_dict() if self.sampler is not None else {},
                 "total_steps": self.total_steps, "preset": self.preset.to_dict(),
                 "tokenizer_dir": tokenizer_dir, "hf_extra_config": extra}
        state["task"] = self.task.state_dict()
        return checkpointing.save(
            self.ckpt_root, self.step, self.model, self.optimizer, state,
            sharding=self.cfg.checkpoint.optimizer_sharding, keep_last=self.cfg.checkpoint.keep_last,
        )

    def _hf_meta(self) -> tuple[str | None, dict]:
        """The task's tokenizer dir and extra HF config entries (what an HF export of this model carries)."""
        return self.task.tokenizer_dir, self.task.hf_extra_config()

    def export_hf(self, out: Path) -> None:
        from megatron_tulu.checkpoint.model_io import export_hf

        tokenizer_dir, extra = self._hf_meta()
        export_hf(self.model, self.preset, out, tokenizer_dir=tokenizer_dir, extra_config=extra,
                  head=self.task.head or "lm")


def run_stage(cfg: StageConfig, task: Task) -> dict:
    """Entry used by ``launch/*.py``: fit, then tear down process groups."""
    from megatron_tulu.parallel import destroy_distributed

    trainer = Trainer(cfg, task)
    try:
        return trainer.fit()
    finally:
        destroy_distributed()

