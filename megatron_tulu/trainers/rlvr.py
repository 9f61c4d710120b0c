"""RLVR (Tülu 3): PPO with a value model, or GRPO, on verifiable rewards, with a rollout engine in the loop.

One step (``RLVRDriver.step``), readable top to bottom:

    prompts (deterministic sampler, same on every rank)
    -> engine.generate on rank 0 (vLLM, or TorchEngine)          -> broadcast to all ranks
    -> rewards.verify_batch (alpha * correct)                     -> broadcast
    -> old / reference logprobs and values (forward-only, megatron schedules)
    -> shape_rewards (KL penalty, EOS penalty) -> GAE + whitening  |  GRPO group advantages
    -> ppo_epochs x minibatches: policy step (clipped loss) [+ value step]
    -> weight sync: megatron shards -> HF names (checkpoint.mapping) -> engine.update_weights

Engines: one in the rank-0 process (``rlvr.engine_placement=local``), or ``rlvr.num_engines`` Ray actors in a
placement group (``ray``: ``trainers.ray_engines``), fed by trainer rank 0. With ``rlvr.async_steps=k`` > 0 a
background thread generates up to k batches ahead while the trainer trains (at most k steps off-policy, a
bounded queue), so generation and training overlap; weight syncs happen between generations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_tulu import platform
from megatron_tulu.data.sampler import IGNORE_INDEX
from megatron_tulu.models.logprobs import token_logprobs
from megatron_tulu.trainers.config import DataConfig
from megatron_tulu.trainers.fit import StageConfig
from megatron_tulu.trainers.sft import DataStageMixin


@dataclass
class RLVROptions:
    """Algorithm and rollout settings (Tülu 3 defaults)."""

    algorithm: str = "ppo"
    """``ppo`` (value model + GAE) or ``grpo`` (group-normalised advantages, no value model)."""
    alpha: float = 10.0
    """Verifier reward for a correct response."""
    kl_coef: float = 0.05
    """β of the per-token KL penalty to the reference (Tülu 3 8B: 0.05)."""
    kl_kind: str = "k1"
    """KL estimator: ``k1``, ``k2`` or ``k3``."""
    non_eos_penalty: float = -10.0
    """Reward for a response that does not end in EOS (replaces the verifier score)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Whiten PPO advantages over the whole (DP-wide) batch."""
    clip_eps: float = 0.2
    """PPO ratio clip."""
    tis_cap: float = 0.0
    """Truncated importance sampling: weight each token's policy-gradient term by min(π_trainer / π_rollout, cap),
    correcting for rollouts from older weights (``async_steps``) and the engine's numerics. 0 disables it; 2.0 is
    a common cap (open-instruct's ``truncated_importance_sampling_ratio_cap``)."""
    vf_clip_eps: float = 0.2
    """Value clip (reward units)."""
    value_model: str = ""
    """PPO value-model shape: a preset name (``llama3.1-8b`` beside a 70B or 405B policy, as Tülu 3 ran an 8B value
    model from its 8B reward model), or empty: the shape of ``value_init_hf`` when set, else the policy's. It runs on
    the policy's TP/CP/DP ranks and pipeline stages; layers that do not divide over the stages get megatron's uneven
    first/last-stage split (``models.pipeline_split.PipelineSplit.fit``). Its vocab must be the policy's."""
    value_init_hf: str = ""
    """HF checkpoint the PPO value model starts from: a reward model (``LlamaForSequenceClassification``,
    num_labels=1), whose backbone and ``score.weight`` head initialise it, as Tülu 3 initialises the value model
    from its RM; or a causal LM (backbone, zero head). Empty: the policy's initial weights under a zero head when
    the value model has the policy's shape, else a random init."""
    value_lr: float = 0.0
    """Value-model LR (0: same as optim.lr)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    num_minibatches: int = 1
    """Optimizer steps per epoch over a rollout batch."""
    samples_per_prompt: int = 1
    """Responses per prompt (GRPO group size K; Tülu 3 PPO: 1)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    max_new_tokens: int = 64
    """Response length limit."""
    engine: str = "vllm"
    """``vllm`` (real vLLM; CPU build here) or ``torch`` (TorchEngine)."""
    engine_tp: int = 1
    """vLLM tensor-parallel size of one engine."""
    num_engines: int = 1
    """Number of rollout engines (each ``engine_tp`` GPUs). More than one needs ``engine_placement=ray``; the
    prompts of a step are split evenly between them and every engine receives each weight sync."""
    engine_placement: str = "local"
    """Where engines run: ``local`` (one engine inside trainer rank 0's process; laptop, CI, one node) or
    ``ray`` (Ray actors in a placement group, on the cluster at ``$RAY_ADDRESS`` as the slurm/ scripts start
    it, else on a Ray started locally; engines may run another Python, ``$MT_VLLM_PYTHON``)."""
    engine_memory_fraction: float = 0.9
    """Fraction of an engine GPU's memory vLLM takes for weights, activations and KV cache (its
    ``gpu_memory_utilization``). With ``engine_placement=local`` on a GPU the engine shares trainer rank 0's GPU, so
    this must leave room for the trainer's weights, gradients, optimizer state, reference and value models: the run
    refuses to start, naming what does not fit, when the planner says it cannot (``plan.colocation``)."""
    engine_sleep_level: int = 0
    """vLLM sleep mode while the trainer steps (GPU only; vLLM has none on CPU, where it is a no-op): 0 off; 1 moves
    the engine's weights to CPU memory and drops its KV cache; 2 drops both (the weights are re-synced after every
    step anyway, so 2 costs least). The engine sleeps once a batch is generated and wakes right before the weight
    sync. Needs ``async_steps=0``: an engine asleep cannot generate ahead."""
    engine_timeout_s: float = 1800.0
    """Bound on every call to a Ray-hosted engine and on each weight-sync collective (start-up included)."""
    engine_dtype: str = "float32"
    """Engine weights dtype (fp32 on CPU for exact agreement; bf16 on GPU)."""
    async_steps: int = 0
    """k: generate up to k rollout batches ahead while training (batches at most k optimizer steps
    off-policy; ``mismatch/policy_lag`` reports it). 0 = synchronous (on-policy). Resume restarts the queue,
    so an asynchronous run resumed mid-way is not bit-identical to an uninterrupted one."""
    sync_bucket_mb: float = 64.0
    """Weight-sync bucket size (MiB): the trainer streams the gathered HF tensors through buckets of at most
    this size, so rank 0 never holds more than one bucket plus one parameter of the full model."""
    verifier_workers: int = 0
    """Processes for verify_batch (0: in-process, still time-bounded)."""
    probe_prompts: int = 2
    """Post-sync check after every weight sync: the engine's greedy logprobs on this many fixed training prompts
    must match the trainer's (max |diff| within the mismatch tolerance), else the run stops with
    ``WeightSyncMismatch``. 0 disables it."""


@dataclass
class RLVRConfig(StageConfig):
    """Top-level config of ``launch/rlvr.py``. ``train.global_batch_size`` counts prompts per step."""

    data: DataConfig = field(default_factory=DataConfig)
    rlvr: RLVROptions = field(default_factory=RLVROptions)

    def validate(self) -> None:
        """Choices and cross-field rules of the RLVR options (``load_config`` calls it), naming the field."""
        from megatron_tulu.config import check_at_least, check_choice
        from megatron_tulu.losses.kl import KL_ESTIMATORS

        super().validate()
        o = self.rlvr
        check_choice("rlvr.algorithm", o.algorithm, ("ppo", "grpo"))
        if o.algorithm == "grpo" and o.samples_per_prompt < 2:
            raise ValueError("rlvr.algorithm=grpo needs rlvr.samples_per_prompt >= 2 (the group size)")
        check_choice("rlvr.kl_kind", o.kl_kind, tuple(KL_ESTIMATORS))
        check_choice("rlvr.engine", o.engine, ("vllm", "torch"))
        check_choice("rlvr.engine_placement", o.engine_placement, ("local", "ray"))
        check_at_least("rlvr.num_engines", o.num_engines, 1)
        check_at_least("rlvr.engine_tp", o.engine_tp, 1)
        if o.num_engines > 1 and o.engine_placement != "ray":
            raise ValueError(f"rlvr.num_engines={o.num_engines}: more than one engine needs "
                             "rlvr.engine_placement=ray (a local engine lives in trainer rank 0's process)")
        if o.tis_cap < 0:
            raise ValueError(f"rlvr.tis_cap must be >= 0 (0 disables truncated importance sampling), got {o.tis_cap}")
        check_at_least("rlvr.async_steps", o.async_steps, 0)
        check_at_least("rlvr.samples_per_prompt", o.samples_per_prompt, 1)
        check_at_least("rlvr.max_new_tokens", o.max_new_tokens, 1)
        if not 0 < o.engine_memory_fraction <= 1:
            raise ValueError(f"rlvr.engine_memory_fraction must be in (0, 1], got {o.engine_memory_fraction}")
        check_choice("rlvr.engine_sleep_level", o.engine_sleep_level, (0, 1, 2))
        if o.engine_sleep_level and o.async_steps:
            raise ValueError(f"rlvr.engine_sleep_level={o.engine_sleep_level} needs rlvr.async_steps=0 (got "
                             f"{o.async_steps}): an engine asleep while the trainer steps cannot generate ahead")


def response_rows(prompts: list[list[int]], responses: list[list[int]], pad_id: int, seq: int | None = None):
    """Concatenate prompt+response rows. Returns input_ids [B,S], targets [B,S] (next token, IGNORE elsewhere)
    and mask [B,S] (1 where the target is a response token)."""
    lens = [len(p) + len(r) for p, r in zip(prompts, responses)]
    s = seq or max(lens)
    s = -(-s // 8) * 8
    b = len(prompts)
    ids = torch.full((b, s), pad_id, dtype=torch.long)
    targets = torch.full((b, s), IGNORE_INDEX, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        row = list(p) + list(r)
        ids[i, : len(row)] = torch.tensor(row)
        if r:
            targets[i, len(p) - 1: len(row) - 1] = torch.tensor(r)
    return ids, targets, (targets != IGNORE_INDEX).float()


class ValueHead(torch.nn.Module):
    """Scalar head replacing the LM output layer (replicated across TP: its input is not vocab-sharded; under
    sequence parallelism it runs on the gathered sequence, see ``models.logprobs.full_sequence``)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.weight = torch.nn.Parameter(torch.zeros(1, config.hidden_size, dtype=config.params_dtype,
                                                     device=platform.device()))

    def forward(self, hidden, weight=None, runtime_gather_output=None):  # megatron's output_layer signature
        from megatron_tulu.models.logprobs import full_sequence

        return torch.nn.functional.linear(full_sequence(hidden, self.config), self.weight), None


class PolicyTask(DataStageMixin):
    """Clipped policy loss over response tokens; the loop's Task interface (train_step only)."""

    metric_names = ["loss_sum", "tokens", "clipfrac", "approx_kl"]

    def __init__(self, cfg: RLVRConfig):
        self.cfg = cfg

    def setup(self, trainer) -> int:
        self.load_tokenizer(self.cfg.data)
        self.prompts = self.build(trainer, "rlvr", self.cfg.data.mixture, self.cfg.train.seq_length)
        return len(self.prompts)

    def forward(self, model, batch):
        dev = platform.device()
        pos = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        return model(batch["input_ids"].to(dev), pos.to(dev), None)

    def denominator(self, mbs):
        return float(sum(mb["mask"].sum() for mb in mbs))

    def loss_fn(self, batch, logits, trainer):
        from megatron_tulu.losses.ppo import POLICY_LOSSES

        o = self.cfg.rlvr
        t = batch["targets"].to(logits.device)
        logp = token_logprobs(logits, t.clamp(min=0), trainer.model, trainer.preset.vocab_size, temperature=o.temperature)
        mask = batch["mask"].to(logits.device)
        kw = {}
        if o.algorithm == "grpo":
            kw = dict(ref_logp=batch["ref_logp"].to(logits.device), kl_coef=o.kl_coef, kl_kind="k3")
        if "is_w" in batch:
            kw["is_weights"] = batch["is_w"].to(logits.device)
        loss, m = POLICY_LOSSES[o.algorithm](logp, batch["old_logp"].to(logits.device), batch["adv"].to(logits.device),
                                             mask, clip_eps=o.clip_eps, reduction="token-sum", **kw)
        n = mask.sum()
        return loss, {"loss_sum": loss.detach(), "tokens": n, "clipfrac": m["clipfrac"] * n, "approx_kl": m["approx_kl"] * n}

    def finalize(self, sums, denom):
        n = max(sums["tokens"], 1.0)
        return {"loss": sums["loss_sum"] / max(denom, 1e-12), "clipfrac": sums["clipfrac"] / n, "approx_kl": sums["approx_kl"] / n}


class ValueTask(PolicyTask):
    metric_names = ["loss_sum", "tokens"]

    def loss_fn(self, batch, values, trainer):
        from megatron_tulu.losses.ppo import value_loss
        from megatron_tulu.models.context_parallel import gather_tokens

        mask = batch["mask"].to(values.device)
        full = gather_tokens(values.squeeze(-1).float(), mask.shape[1])  # full rows under context parallelism
        loss, _ = value_loss(full, batch["old_values"].to(values.device), batch["returns"].to(values.device),
                             mask, clip_eps=self.cfg.rlvr.vf_clip_eps, reduction="token-sum")
        return loss, {"loss_sum": loss.detach(), "tokens": mask.sum()}

    def finalize(self, sums, denom):
        return {"value_loss": sums["loss_sum"] / max(denom, 1e-12)}
