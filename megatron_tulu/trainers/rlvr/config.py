"""The RLVR stage's config: algorithm presets, rollout and engine settings (Tülu 3 defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from megatron_tulu.rewards.config import RewardsConfig
from megatron_tulu.trainers.config import DataConfig
from megatron_tulu.trainers.fit import StageConfig


@dataclass(frozen=True)
class AlgorithmPreset:
    """What ``rlvr.algorithm`` names: three registered parts (each also settable alone in ``RLVROptions``), the
    clip range, and where the KL goes. The loop looks the parts up by name."""

    advantage_estimator: str
    """Key of ``algorithms.ADVANTAGE_ESTIMATORS``."""
    policy_loss: str
    """Key of ``losses.ppo.POLICY_LOSSES``."""
    loss_agg: str
    """One of ``losses.ppo.LOSS_AGGS``: how per-token losses are aggregated over an optimizer-step batch."""
    kl_in: str
    """Where the β·KL to the reference goes: ``reward`` (per-token reward, PPO), ``loss`` (GRPO) or ``none``."""
    kl_kind: str
    """KL estimator used unless ``rlvr.kl_kind`` says otherwise."""
    uses_value_model: bool
    """Trains a value model (its predictions feed the estimator)."""
    whitens: bool
    """Its advantages are whitened over the DP-wide batch when ``rlvr.whiten_advantages`` is set (GAE's are;
    group-normalised ones are normalised per group already)."""
    clip_low: float = 0.2
    """ε_low of the policy loss's ratio clip (PPO: 0.2)."""
    clip_high: float = 0.2
    """ε_high of the policy loss's ratio clip (= ε_low unless the method decouples them)."""
    dynamic_sampling: bool = False
    """Drops prompt groups whose K rewards are all equal and refills the batch (DAPO §3.2)."""
    overlong_buffer_frac: float = 0.0
    """Soft overlong punishment buffer L_cache as a fraction of ``rlvr.max_new_tokens`` (= L_max); 0: none."""


ALGORITHMS: dict[str, AlgorithmPreset] = {
    # Tülu 3 PPO (open-instruct ppo_vllm_thread_ray_gtrl): GAE + value model, k1 KL in the reward, ε = 0.2,
    # token-mean over the batch.
    "ppo": AlgorithmPreset(advantage_estimator="gae", policy_loss="ppo", loss_agg="token_mean", kl_in="reward",
                           kl_kind="k1", uses_value_model=True, whitens=True),
    # GRPO (DeepSeekMath, Shao et al. 2024; ε = 0.2) as open-instruct's grpo_fast runs it: group-normalised scores,
    # k3 KL in the loss, token-mean aggregation (the paper's is seq_mean_token_mean).
    "grpo": AlgorithmPreset(advantage_estimator="grpo", policy_loss="grpo", loss_agg="token_mean", kl_in="loss",
                            kl_kind="k3", uses_value_model=False, whitens=False),
    # DAPO (Yu et al. 2025): clip-higher ε_low = 0.2, ε_high = 0.28 (§3.1), dynamic sampling (§3.2), token-level
    # loss (§3.3), soft overlong punishment (§3.4: L_cache 4096 of L_max 20480, 0.2 of L_max), no KL (§2.3).
    "dapo": AlgorithmPreset(advantage_estimator="grpo", policy_loss="clipped", loss_agg="token_mean", kl_in="none",
                            kl_kind="k3", uses_value_model=False, whitens=False, clip_low=0.2, clip_high=0.28,
                            dynamic_sampling=True, overlong_buffer_frac=0.2),
    # Dr. GRPO (Liu et al. 2025): mean-centred advantages (no std), Σ loss / (max_new_tokens · S) (no 1/|o_i|),
    # ε = 0.2, no KL (β = 0 in the paper's R1-Zero runs).
    "dr_grpo": AlgorithmPreset(advantage_estimator="dr_grpo", policy_loss="clipped", loss_agg="token_sum_norm",
                               kl_in="none", kl_kind="k3", uses_value_model=False, whitens=False),
    # GSPO (Zheng et al. 2025): sequence ratio, sequence clip ε_low = 3e-4, ε_high = 4e-4 (§5.1), 1/G Σ_i per
    # response (seq_mean_token_mean), group-normalised advantages, no KL.
    "gspo": AlgorithmPreset(advantage_estimator="grpo", policy_loss="gspo", loss_agg="seq_mean_token_mean",
                            kl_in="none", kl_kind="k3", uses_value_model=False, whitens=False, clip_low=3e-4,
                            clip_high=4e-4),
    # CISPO (MiniMax-M1 2025): clipped stop-gradient IS weight, no lower bound (ε_low = 1 -> 1-ε_low = 0), ε_high
    # unpublished -> open-instruct's clip_higher 0.272; token-mean over the batch (1/Σ|o_i|); no KL.
    "cispo": AlgorithmPreset(advantage_estimator="grpo", policy_loss="cispo", loss_agg="token_mean", kl_in="none",
                             kl_kind="k3", uses_value_model=False, whitens=False, clip_low=1.0, clip_high=0.272),
    # RLOO (Ahmadian et al. 2024): leave-one-out baseline on r - β·KL (k1, in the reward), REINFORCE on the whole
    # response (seq_mean_token_sum); the clipped surrogate is REINFORCE while on-policy (one step per batch).
    "rloo": AlgorithmPreset(advantage_estimator="rloo", policy_loss="clipped", loss_agg="seq_mean_token_sum",
                            kl_in="reward", kl_kind="k1", uses_value_model=False, whitens=False),
}

GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
"""Advantage estimators that compare the ``samples_per_prompt`` responses of a prompt (need K >= 2)."""
IS_CORRECTION_CHOICES = ("none", "tis", "masked", "sequence")
"""``rlvr.is_correction`` values: none, or a key of ``algorithms.IS_CORRECTIONS``."""


@dataclass
class RLVROptions:
    """Algorithm and rollout settings (Tülu 3 defaults)."""

    algorithm: str = "ppo"
    """A preset of ``ALGORITHMS``: ``ppo`` (Tülu 3: value model + GAE, KL in the reward), ``grpo`` (group-normalised
    advantages, no value model, KL in the loss), ``dapo``, ``dr_grpo``, ``gspo``, ``cispo``, ``rloo`` (see the
    comments of ``ALGORITHMS`` for each paper's values). The three fields below override its parts one by one."""
    advantage_estimator: str | None = None
    """Key of ``algorithms.ADVANTAGE_ESTIMATORS`` (``gae``, ``grpo``, ``dr_grpo``, ``rloo``); None: the preset's.
    ``gae`` needs a preset with a value model (``ppo``); the group ones need ``samples_per_prompt >= 2``."""
    policy_loss: str | None = None
    """Key of ``losses.ppo.POLICY_LOSSES`` (``ppo``/``clipped``, ``grpo``, ``gspo``, ``cispo``); None: the preset's."""
    loss_agg: str | None = None
    """Loss aggregation over each optimizer-step batch, one of ``losses.ppo.LOSS_AGGS``: ``token_mean`` (DAPO,
    open-instruct, CISPO), ``seq_mean_token_sum`` (RLOO), ``seq_mean_token_mean`` (original GRPO, GSPO),
    ``token_sum_norm`` (Dr. GRPO: Σ / (max_new_tokens · responses)); None: the preset's. Exact under any
    micro-batch / DP split (per-token weights computed over the whole batch in ``make_experience``)."""
    alpha: float = 10.0
    """Verifier reward for a correct response."""
    kl_coef: float = 0.05
    """β of the per-token KL penalty to the reference (Tülu 3 8B: 0.05); unused by presets with ``kl_in="none"``
    (dapo, dr_grpo, gspo, cispo)."""
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
    clip_low: float | None = None
    """ε_low: ratios below 1 - ε_low are clipped (for ``cispo`` the IS weight's lower bound; 1.0 = none). None: the
    preset's (PPO/GRPO 0.2, Schulman et al. 2017 and DeepSeekMath; DAPO 0.2; GSPO 3e-4; CISPO 1.0)."""
    clip_high: float | None = None
    """ε_high: ratios above 1 + ε_high are clipped (DAPO's decoupled "clip-higher"). None: the preset's (PPO/GRPO
    0.2; DAPO 0.28; GSPO 4e-4; CISPO 0.272, open-instruct's ``clip_higher``)."""
    dynamic_sampling: bool | None = None
    """DAPO's dynamic sampling (Yu et al. 2025, §3.2): after scoring a generated batch, drop the prompt groups whose
    ``samples_per_prompt`` rewards (the final ones the advantage sees: verifier, non-EOS and overlong terms) are all
    equal, which carry zero advantage under a group baseline, and generate for further prompts of the prompt stream
    until ``train.global_batch_size`` groups have a signal (surplus ones are discarded, as DAPO does). None: the
    preset's (on for ``dapo`` only). Needs ``samples_per_prompt >= 2`` and ``async_steps=0``. Metrics:
    ``dynamic_sampling/*`` and ``reward/gen_accuracy`` (over every response generated in the step)."""
    dynamic_sampling_max_batches: int = 3
    """Bound on the extra generation rounds of one step under ``dynamic_sampling``, each a further
    ``train.global_batch_size`` prompts (DAPO's verl recipe: ``max_num_gen_batches=10`` rounds in all, each of 3x
    the training prompt batch). When it is reached short of a full batch, the missing groups are filled with
    dropped (zero-advantage) ones, in generation order, so the step keeps its shape, with a warning and
    ``dynamic_sampling/filled_groups``; when not one group has a signal the run stops (``RuntimeError``)."""
    overlong_buffer_len: int | None = None
    """L_cache of DAPO's soft overlong punishment (§3.4), in tokens; L_max is ``max_new_tokens``. A response of
    |y| tokens gets ``overlong_penalty_factor`` x (0 if |y| <= L_max - L_cache, ((L_max - L_cache) - |y|) / L_cache
    up to L_max, -1 beyond) added to its reward (``algorithms.reward_shaping.overlong_penalty``). 0: off. None: the
    preset's fraction of ``max_new_tokens`` (dapo: 0.2, the paper's 4096 of 20480; others: 0)."""
    overlong_penalty_factor: float = 1.0
    """Scale of the overlong penalty (DAPO / verl: 1.0, on a +-1 verifier reward)."""
    is_correction: str = "none"
    """Importance-sampling correction of the engine/trainer mismatch (rollouts from older weights under
    ``async_steps`` and the engine's numerics), ``algorithms.IS_CORRECTIONS``: ``none``; ``tis`` (token-level
    truncated IS, w = min(π_trainer/π_rollout, is_high); Yao et al. 2025, open-instruct's
    ``truncated_importance_sampling_ratio_cap``); ``masked`` (IcePop: tokens whose ratio leaves [is_low, is_high]
    get weight 0); ``sequence`` (per-response geometric-mean ratio, truncated at is_high). Metrics: ``mismatch/is_*``."""
    is_low: float = 0.5
    """Lower bound of the ratio band of ``masked`` (IcePop's 0.5); unused by ``tis``/``sequence``."""
    is_high: float = 2.0
    """Cap of ``tis``/``sequence`` (2.0: open-instruct's truncated_importance_sampling_ratio_cap and
    rho_clamp_upper_bound) and upper bound of ``masked`` (IcePop uses 5.0: set it)."""
    vf_clip_eps: float = 0.2
    """Value clip (reward units; Tülu 3: 0.2)."""
    vf_coef: float = 0.1
    """Scale of the value loss before backward, so before gradient clipping (open-instruct PPO's ``vf_coef``,
    0.1, as Tülu 3 trained; the value model has its own optimizer, so the scale matters through clipping and
    Adam's epsilon)."""
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
    """Number of rollout engines (each ``engine_tp`` GPUs). More than one needs ``engine_placement=ray`` or
    ``colocated`` (there it is the trainer world / ``engine_tp``: leave it at 1 or set exactly that); the prompts of
    a step are split evenly between them and every engine receives each weight sync."""
    engine_placement: str = "local"
    """Where engines run: ``local`` (one engine inside trainer rank 0's process; laptop, CI, one node) or
    ``ray`` (Ray actors in a placement group, on the cluster at ``$RAY_ADDRESS`` as the slurm/ scripts start
    it, else on a Ray started locally; engines may run another Python, ``$MT_VLLM_PYTHON``) or ``colocated`` (every
    trainer GPU also hosts its share of an engine, as verl's and NeMo-RL's hybrid engines: world / ``engine_tp``
    engines, engine g on the GPUs of a node's trainer ranks ``[g*engine_tp, (g+1)*engine_tp)``, each node's started
    by its first rank; the engines sleep while the trainer steps (``engine_sleep_level``, within
    ``engine_memory_fraction`` of each GPU) and wake for the weight sync and generation; the worker on the node
    leader's GPU gets the weights by CUDA IPC handle, the others by NCCL broadcast, rank 0 forwards each tensor to the
    other nodes' leaders: :mod:`megatron_tulu.rollout.colocated`, :mod:`megatron_tulu.rollout.colocated_nodes`).
    ``colocated`` needs ``engine_tp`` to divide the trainer world (checked at start) and, over several nodes, a node's
    ranks (``cluster.gpus_per_node``, checked here), and ``async_steps=0`` (engine and trainer take turns on each
    GPU). A vLLM front-end of ``local`` or ``colocated`` runs in a child process of ``$MT_VLLM_PYTHON`` where that
    names another interpreter (the image: :mod:`megatron_tulu.rollout.engine_process`)."""
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

    def part(self, name: str):
        """The setting ``name`` (``advantage_estimator``, ``policy_loss``, ``loss_agg``, ``clip_low``,
        ``clip_high``, ``dynamic_sampling``): this config's value, else (None) the preset's."""
        value = getattr(self, name)
        return getattr(self.preset, name) if value is None else value

    @property
    def overlong_buffer(self) -> int:
        """L_cache in tokens: ``overlong_buffer_len``, else the preset's fraction of ``max_new_tokens``."""
        if self.overlong_buffer_len is not None:
            return self.overlong_buffer_len
        return round(self.preset.overlong_buffer_frac * self.max_new_tokens)

    @property
    def needs_reference(self) -> bool:
        """A frozen reference model is built only when a KL term can change anything: the preset puts the KL
        somewhere (``kl_in`` reward or loss) and ``kl_coef`` > 0. Otherwise none is loaded (its memory and forward
        are saved) and the KL is 0 by construction."""
        return self.preset.kl_in != "none" and self.kl_coef > 0

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
        if o.value_init_hf:  # `${runs_root}/../8b/rm/hf` (70B, 405B) must not need ${runs_root} to exist yet
            o.value_init_hf = os.path.normpath(o.value_init_hf)
        from megatron_tulu.algorithms import ADVANTAGE_ESTIMATORS
        from megatron_tulu.losses.ppo import LOSS_AGGS, POLICY_LOSSES

        check_choice("rlvr.algorithm", o.algorithm, tuple(ALGORITHMS))
        check_at_least("train.max_tokens_per_microbatch", self.train.max_tokens_per_microbatch, 0)
        if o.advantage_estimator is not None:
            check_choice("rlvr.advantage_estimator", o.advantage_estimator, tuple(ADVANTAGE_ESTIMATORS))
        if o.policy_loss is not None:
            check_choice("rlvr.policy_loss", o.policy_loss, tuple(POLICY_LOSSES))
        if o.loss_agg is not None:
            check_choice("rlvr.loss_agg", o.loss_agg, LOSS_AGGS)
        est = o.part("advantage_estimator")
        if est in GROUP_ESTIMATORS and o.samples_per_prompt < 2:
            raise ValueError(f"rlvr.algorithm={o.algorithm} (advantage estimator {est}) needs "
                             "rlvr.samples_per_prompt >= 2 (the group size)")
        if est == "gae" and not o.preset.uses_value_model:
            raise ValueError(f"rlvr.advantage_estimator=gae needs a value model: rlvr.algorithm={o.algorithm} has "
                             "none (use rlvr.algorithm=ppo)")
        if est != "gae" and o.preset.uses_value_model:
            raise ValueError(f"rlvr.advantage_estimator={est}: rlvr.algorithm={o.algorithm} trains a value model on "
                             "GAE returns; pick a preset without one (e.g. grpo) for a group estimator")
        if not 0 <= o.part("clip_low") <= 1 or o.part("clip_high") < 0:
            raise ValueError(f"rlvr.clip_low must be in [0, 1] and rlvr.clip_high >= 0, got "
                             f"{o.part('clip_low')}, {o.part('clip_high')}")
        if o.part("dynamic_sampling"):
            how = "" if o.dynamic_sampling else f" (on in the {o.algorithm} preset; rlvr.dynamic_sampling=false: off)"
            if o.samples_per_prompt < 2:
                raise ValueError(f"rlvr.dynamic_sampling{how} needs rlvr.samples_per_prompt >= 2: it drops groups "
                                 f"whose samples all got the same reward, got {o.samples_per_prompt}")
            if o.async_steps:
                raise ValueError(f"rlvr.dynamic_sampling{how} needs rlvr.async_steps=0 (got {o.async_steps}): its "
                                 "refill rounds draw prompts and generate at train time, which batches generated "
                                 "ahead would make timing-dependent and not resumable")
            check_at_least("rlvr.dynamic_sampling_max_batches", o.dynamic_sampling_max_batches, 0)
        if not 0 <= o.overlong_buffer <= o.max_new_tokens:
            raise ValueError(f"rlvr.overlong_buffer_len must be in [0, rlvr.max_new_tokens={o.max_new_tokens}], "
                             f"got {o.overlong_buffer}")
        check_at_least("rlvr.overlong_penalty_factor", o.overlong_penalty_factor, 0.0)
        check_choice("rlvr.is_correction", o.is_correction, IS_CORRECTION_CHOICES)
        if o.is_correction != "none" and not o.is_high > 0:
            raise ValueError(f"rlvr.is_high must be > 0 for rlvr.is_correction={o.is_correction}, got {o.is_high}")
        if o.is_correction == "masked" and not 0 <= o.is_low < 1 < o.is_high:
            raise ValueError(f"rlvr.is_correction=masked needs 0 <= rlvr.is_low < 1 < rlvr.is_high, got "
                             f"[{o.is_low}, {o.is_high}]")
        check_at_least("rlvr.vf_coef", o.vf_coef, 0.0)
        if o.kl_kind is not None:
            check_choice("rlvr.kl_kind", o.kl_kind, tuple(KL_ESTIMATORS))
        check_choice("rlvr.engine", o.engine, ("vllm", "torch"))
        check_choice("rlvr.engine_placement", o.engine_placement, ("local", "ray", "colocated"))
        check_at_least("rlvr.num_engines", o.num_engines, 1)
        check_at_least("rlvr.engine_tp", o.engine_tp, 1)
        if o.num_engines > 1 and o.engine_placement == "local":
            raise ValueError(f"rlvr.num_engines={o.num_engines}: more than one engine needs "
                             "rlvr.engine_placement=ray or colocated (a local engine lives in trainer rank 0's process)")
        if o.engine_placement == "colocated":
            from megatron_tulu.plan.layouts import colocated_engine_tp_problem

            c = self.cluster
            problem = colocated_engine_tp_problem(o.engine_tp, c.gpus_per_node or c.tasks_per_node or o.engine_tp, c.nodes)
            if problem:
                raise ValueError(problem)
        if o.engine_placement == "colocated" and o.async_steps:
            raise ValueError(f"rlvr.engine_placement=colocated needs rlvr.async_steps=0 (got {o.async_steps}): engine "
                             "and trainer share each GPU and take turns, so no batch can be generated while one trains")
        check_at_least("rlvr.async_steps", o.async_steps, 0)
        check_at_least("rlvr.samples_per_prompt", o.samples_per_prompt, 1)
        check_at_least("rlvr.max_new_tokens", o.max_new_tokens, 1)
        if not 0 < o.engine_memory_fraction <= 1:
            raise ValueError(f"rlvr.engine_memory_fraction must be in (0, 1], got {o.engine_memory_fraction}")
        check_choice("rlvr.engine_sleep_level", o.engine_sleep_level, (0, 1, 2))
        if o.engine_sleep_level and o.async_steps:
            raise ValueError(f"rlvr.engine_sleep_level={o.engine_sleep_level} needs rlvr.async_steps=0 (got "
                             f"{o.async_steps}): an engine asleep while the trainer steps cannot generate ahead")
