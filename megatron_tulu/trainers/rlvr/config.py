"""The RLVR stage's config: algorithm presets, rollout and engine settings (Tülu 3 defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_tulu.rewards.config import RewardsConfig
from megatron_tulu.trainers.config import DataConfig
from megatron_tulu.trainers.fit import StageConfig


@dataclass(frozen=True)
class AlgorithmPreset:
    """What ``rlvr.algorithm`` names: registered parts, looked up by name by the loop."""

    advantage_estimator: str
    """Key of ``algorithms.ADVANTAGE_ESTIMATORS``."""
    policy_loss: str
    """Key of ``losses.ppo.POLICY_LOSSES``."""
    kl_in: str
    """Where the β·KL to the reference goes: ``reward`` (per-token reward, PPO) or ``loss`` (GRPO)."""
    kl_kind: str
    """KL estimator used unless ``rlvr.kl_kind`` says otherwise."""
    uses_value_model: bool
    """Trains a value model (its predictions feed the estimator)."""
    whitens: bool
    """Its advantages are whitened over the DP-wide batch when ``rlvr.whiten_advantages`` is set (GAE's are;
    group-normalised ones are normalised per group already)."""


ALGORITHMS: dict[str, AlgorithmPreset] = {
    "ppo": AlgorithmPreset(advantage_estimator="gae", policy_loss="ppo", kl_in="reward", kl_kind="k1",
                           uses_value_model=True, whitens=True),
    "grpo": AlgorithmPreset(advantage_estimator="grpo", policy_loss="grpo", kl_in="loss", kl_kind="k3",
                            uses_value_model=False, whitens=False),
}


@dataclass
class RLVROptions:
    """Algorithm and rollout settings (Tülu 3 defaults)."""

    algorithm: str = "ppo"
    """A preset of ``ALGORITHMS``: ``ppo`` (value model + GAE, KL in the reward) or ``grpo`` (group-normalised
    advantages, no value model, KL in the loss)."""
    alpha: float = 10.0
    """Verifier reward for a correct response."""
    kl_coef: float = 0.05
    """β of the per-token KL penalty to the reference (Tülu 3 8B: 0.05)."""
    kl_kind: str | None = None
    """KL estimator ``k1``, ``k2`` or ``k3`` (``losses.kl``), wherever the algorithm puts the KL; None: the
    algorithm's own (PPO: k1 in the reward, as open-instruct; GRPO: k3 in the loss, as DeepSeekMath)."""
    non_eos_penalty: float = -10.0
    """Reward for a response that does not end in EOS (replaces the verifier score)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Whiten the advantages over the whole (DP-wide) batch where the algorithm allows it (``AlgorithmPreset.whitens``:
    PPO's GAE advantages; GRPO's are normalised per group instead)."""
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

    @property
    def preset(self) -> AlgorithmPreset:
        """The registered parts ``algorithm`` names."""
        return ALGORITHMS[self.algorithm]

    @property
    def kl_estimator(self) -> str:
        """``kl_kind``, else the algorithm's."""
        return self.kl_kind or self.preset.kl_kind


@dataclass
class RLVRConfig(StageConfig):
    """Top-level config of ``launch/rlvr.py``. ``train.global_batch_size`` counts prompts per step."""

    data: DataConfig = field(default_factory=DataConfig)
    rlvr: RLVROptions = field(default_factory=RLVROptions)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)

    def validate(self) -> None:
        """Choices and cross-field rules of the RLVR options (``load_config`` calls it), naming the field."""
        from megatron_tulu.config import check_at_least, check_choice
        from megatron_tulu.losses.kl import KL_ESTIMATORS

        super().validate()
        self.rewards.validate()
        o = self.rlvr
        check_choice("rlvr.algorithm", o.algorithm, tuple(ALGORITHMS))
        if o.preset.advantage_estimator == "grpo" and o.samples_per_prompt < 2:
            raise ValueError(f"rlvr.algorithm={o.algorithm} needs rlvr.samples_per_prompt >= 2 (the group size)")
        if o.kl_kind is not None:
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
