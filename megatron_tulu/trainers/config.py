"""Config dataclasses shared by every stage (Hydra fills them from ``configs/<stage>/<size>.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelConfig:
    """Which model to build and where its weights come from."""

    preset: str = "tiny"
    """Model preset (``tiny``, ``llama3.1-8b``, ``llama3.1-70b``, ``llama3.1-405b``); ``hf`` takes the shape from ``init_hf``."""
    vocab_size: Optional[int] = None
    """Override the preset's vocab (the tiny preset takes its tokenizer's size; None = from the tokenizer when smaller presets)."""
    impl: str = "auto"
    """Layer spec: ``auto`` (Transformer Engine when installed on GPU, except for packed SFT rows under context
    parallelism, whose dense document masks TE ignores: those use the local spec), ``te`` (refused for that case)
    or ``local`` (pure torch). Packed rows without CP run in THD format on both specs."""
    dtype: str = "auto"
    """Parameter dtype: ``auto`` (bf16 on GPU, fp32 on CPU), ``bf16`` or ``fp32``."""
    fp8: Optional[str] = None
    """FP8 format through TE (``hybrid``/``e4m3``) with per-tensor current scaling (``models.build.fp8_config_kwargs``);
    GPU + TE >= 2.2 only, refused on CPU."""
    recompute: Optional[str] = None
    """Activation recompute: null, ``selective`` or ``full``."""
    recompute_layers: int = 0
    """With ``recompute: full``: recompute only the first N decoder layers of each pipeline chunk and keep the
    others' activations (megatron's ``recompute_method=block``; Megatron-Bridge's 8B recipe recomputes 5 of 32);
    0 = every layer (``uniform``). Trades memory for the recompute's extra forward on the layers that fit."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism: activations outside the TP regions sharded over the sequence (needs TP > 1;
    TE and local specs; the LM, fused log-prob and value heads gather the sequence)."""
    init_hf: Optional[str] = None
    """Start from this HF Llama directory (converted on load, each rank reading only its shard)."""
    init_mcore: Optional[str] = None
    """Start from a converted megatron dir (``checkpoint.convert hf-to-mcore``, same TP/PP), or from a training
    checkpoint (a ``step_*`` dir, a ``checkpoints`` root or a run dir: the newest complete one) at any TP/PP."""
    use_fused_logprob: bool = False
    """Compute token logprobs with the Triton fused linear+logprob kernel instead of the torch path."""


@dataclass
class ParallelConfig:
    """Trainer parallel layout. DP is what remains: world / (tp * pp * cp)."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size (1F1B schedule when > 1)."""
    cp: int = 1
    """Context-parallel size: each sequence is split over ``cp`` ranks (two load-balanced chunks each), which cuts
    activation memory per rank by ``cp`` for long sequences. The local spec all-gathers keys/values over the CP
    group (any mask, including packed SFT); the TE spec uses Transformer Engine's ring attention. CP ranks hold
    weight replicas: gradients and the distributed optimizer's shards span DP x CP."""
    vpp: int = 1
    """Model chunks (virtual pipeline stages) per pipeline rank. > 1 runs megatron's interleaved 1F1B, which cuts
    the pipeline bubble by ``vpp`` at the cost of ``vpp`` times the p2p messages; needs pp > 1, layers divisible
    by pp x vpp, and micro-batches per step (global batch / (micro-batch x DP)) a multiple of pp."""
    pp_account_embedding_loss: bool = False
    """Count the embedding and the loss as one layer each when splitting layers over pipeline chunks (megatron's
    ``account_for_embedding/loss_in_pipeline_split``): the first and last chunk get one decoder layer fewer, which
    balances their extra work and lets Llama 3.1 405B's 126 layers split evenly over PP=8 (and PP=8 x VPP=8)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over DP (megatron DistributedOptimizer, ZeRO-1 style)."""
    overlap_grad_reduce: bool = True
    """Reduce (or reduce-scatter) each gradient bucket over DP x CP as soon as the last micro-batch's backward has
    filled it, overlapping the communication with the rest of the backward (megatron DDP's ``overlap_grad_reduce``;
    the planner's ``overlap`` assumes it). Same numbers either way; false reduces all buckets after the backward."""
    timeout_s: int = 600
    """Timeout of every collective (a missing peer raises instead of hanging)."""


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (Tülu 3: linear warm-up then linear decay to 0)."""

    lr: float = 5e-6
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay (Tülu 3: 0)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    warmup_ratio: float = 0.03
    """Fraction of total steps spent in linear warm-up."""
    min_lr_ratio: float = 0.0
    """Final LR as a fraction of the peak after linear decay."""


@dataclass
class TrainConfig:
    """Steps, batch sizes, loss reduction."""

    global_batch_size: int = 128
    """Examples (SFT sequences, DPO pairs, RLVR prompts x samples) per optimizer step, over all DP ranks. Under SFT
    ``packing`` it still counts examples, as Tülu 3's 128 per step, not the packed rows they fill."""
    micro_batch_size: int = 1
    """Sequences per forward/backward on one rank; global = micro * num_microbatches * dp. Under SFT ``packing``:
    packed rows per forward/backward (a rank then runs as many micro-batches as its examples' rows need)."""
    seq_length: int = 4096
    """Maximum tokens per sequence (packed row length when packing)."""
    epochs: float = 2.0
    """Passes over the training data (fractional allowed); ignored when max_steps > 0."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: from epochs)."""
    seed: int = 1234
    """Seed for init, shuffling and dropout."""
    loss_reduction: str = "sum"
    """``sum`` (Tülu 3: token losses summed over the global batch, divided by the number of examples in it, which
    under ``packing`` are the documents, not the rows) or ``mean`` (divided by the global count of label tokens).
    Both are independent of the micro-batch/DP split and of packing."""
    packing: bool = True
    """SFT: each step's examples are packed, per DP rank, into ``seq_length`` rows (attention kept within
    documents); ``global_batch_size`` and the ``sum`` normaliser still count examples, so the step is the
    unpacked one's (as Tülu 3), in fewer, fuller rows."""
    max_tokens_per_microbatch: int = 0
    """Token budget of one micro-batch (RLVR, DPO, RM). 0 = off: fixed ``micro_batch_size`` padded rows, as before.
    > 0: each step's sequences are split over the DP ranks with near-equal token sums and packed, per rank, into THD
    rows of at most this many tokens (``data.token_budget``; documents kept apart by ``cu_seqlens`` and per-document
    positions), one row per micro-batch, so little padding is computed; ``micro_batch_size`` is then unused. The loss
    and gradient are those of the padded layout. A sequence longer than the budget gets a row of its own."""


@dataclass
class CheckpointConfig:
    """Saving and resuming."""

    interval: int = 500
    """Save every N optimizer steps (0: only at the end and on preemption)."""
    keep_last: int = 2
    """Keep the newest K complete checkpoints."""
    resume: str = "auto"
    """``auto`` (latest good checkpoint under run_dir, else start fresh), ``none``, or a checkpoint path."""
    export_hf: bool = True
    """Export the final model as an HF directory (``run_dir/hf``)."""
    optimizer_sharding: str = "fully_reshardable"
    """Distributed-optimizer checkpoint format: ``fully_reshardable`` (TP/PP may change) or ``dp_reshardable``."""


@dataclass
class LoggingConfig:
    """Metrics and progress."""

    interval: int = 1
    """Log every N steps."""
    tensorboard: bool = True
    """Write TensorBoard event files to run_dir/tb."""
    wandb_project: Optional[str] = None
    """Log to this W&B project when wandb is installed (a requeued job resumes the same W&B run)."""
    wandb_entity: Optional[str] = None
    """W&B entity (team or user); None: wandb's default for the logged-in key."""
    wandb_name: Optional[str] = None
    """W&B run name; None: the run directory's name."""
    progress_bar: bool = True
    """tqdm progress bar on rank 0."""


@dataclass
class DataConfig:
    """Training data: a mixture of local JSONL/Parquet files (open-instruct ``dataset_mixer`` shape)."""

    root: str = "runs/data"
    """Directory of the embedded synthetic suite; configs refer to it as ``${data.root}``."""
    mixture: dict[str, Any] = field(default_factory=dict)
    """``{path: count_or_fraction}`` or ``{datasets: [{path, count|fraction}], seed}``."""
    tokenizer: str = ""
    """HF tokenizer directory."""
    template: str = "tulu"
    """Chat template: ``tulu`` or ``tokenizer`` (the tokenizer's own chat_template)."""
    add_bos: bool = False
    """Put the tokenizer's BOS (``<|begin_of_text|>``) before the rendered chat. Off, as Tülu 3 trained: open-instruct
    tokenizes the ``tulu`` template (which writes no ``bos_token``) with ``apply_chat_template``, which adds no special
    tokens, and its Tülu 3 SFT/DPO configs leave ``add_bos`` False (only its OLMo configs set it)."""
    cache_dir: Optional[str] = None
    """Tokenized-dataset cache (default: run_dir/../data_cache)."""
    eval_mixture: dict[str, Any] = field(default_factory=dict)
    """Held-out data for the stage's eval metric (optional)."""


@dataclass
class ClusterConfig:
    """The SLURM allocation a job of this config runs on. The config owns it (with the layout), so the job planner
    (``megatron_tulu.plan.jobs``) derives node roles, trainer ranks and engine slots from here; the stage's
    ``slurm/<stage>_<size>.sh`` states the same numbers in its ``#SBATCH`` header, and ``DRY_RUN=1`` (and the job
    itself, before anything starts) fails naming both numbers when they disagree."""

    nodes: int = 1
    """Nodes in the job (``#SBATCH --nodes``)."""
    gpus_per_node: int = 8
    """GPUs per node (``#SBATCH --gpus-per-node``), one SLURM task each; 0 = a CPU-only job (CI, laptop)."""
    tasks_per_node: int = 0
    """SLURM tasks (processes) per node (``#SBATCH --ntasks-per-node``): 0 = one per GPU (one per engine's GPUs for
    prefgen, whose tasks are workers with an engine each), which is the only choice on GPU jobs; a CPU-only job must
    set it (one trainer process, RLVR engine slot or prefgen worker per task)."""
    gpu: str = "h100-80gb"
    """Accelerator the planner's memory verdict is for (a key of ``megatron_tulu.plan.hardware.GPUS``)."""

    def tasks(self, gpus_per_task: int = 1) -> int:
        """SLURM tasks per node: ``tasks_per_node``, or (0) one per ``gpus_per_task`` GPUs."""
        return self.tasks_per_node or self.gpus_per_node // gpus_per_task

    def validate(self, gpus_per_task: int = 1, task: str = "one task per GPU") -> None:
        """Ranges and the task rule (``task``: one task per ``gpus_per_task`` GPUs of a node; whether those tile a
        node is the job plan's to say); raises ``ValueError`` naming the field."""
        from megatron_tulu.config import check_at_least, check_choice
        from megatron_tulu.plan.hardware import GPUS

        check_at_least("cluster.nodes", self.nodes, 1)
        check_at_least("cluster.gpus_per_node", self.gpus_per_node, 0)
        check_at_least("cluster.tasks_per_node", self.tasks_per_node, 0)
        check_choice("cluster.gpu", self.gpu, tuple(GPUS))
        per_node = self.gpus_per_node // gpus_per_task
        if self.gpus_per_node and self.tasks_per_node not in (0, per_node):
            named = "cluster.gpus_per_node=" if gpus_per_task == 1 else f"cluster.gpus_per_node / {gpus_per_task} = "
            raise ValueError(f"cluster.tasks_per_node={self.tasks_per_node} must be 0 or {named}{per_node} ({task})")
        if not self.gpus_per_node and not self.tasks_per_node:
            raise ValueError("cluster.gpus_per_node=0 (a CPU-only job) needs cluster.tasks_per_node >= 1")
