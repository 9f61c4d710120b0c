"""Config of ``python -m launch.prefgen``: prompts, the model pool, the judge, the engines and the shards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from megatron_tulu.config import check_at_least, check_choice
from megatron_tulu.trainers.config import ClusterConfig

PROMPT_KINDS = ("sft", "preference", "rlvr")
TEMPLATES = ("tulu", "tokenizer")


@dataclass
class PoolModel:
    """One model that writes completions (a pool model, or the SFT policy itself)."""

    name: str = ""
    """Label written as ``chosen_model`` / ``rejected_model`` and used for the run's file names (required)."""
    path: str = ""
    """HF-format model directory (config.json + weights); the rollout engine serves it."""
    tokenizer: str = ""
    """Tokenizer directory; empty: ``path`` (a model directory without a tokenizer must name one)."""
    template: str = "tulu"
    """How the prompt is rendered for this model: ``tulu`` or ``tokenizer`` (the tokenizer's own chat template)."""
    n: int = 1
    """Completions per prompt from this model."""
    temperature: float = 0.7
    """Sampling temperature (recorded per model in the report)."""
    top_p: float = 1.0
    """Nucleus sampling (1 = off)."""
    max_new_tokens: int = 512
    """Longest completion; a completion cut here is ``length``-finished (see ``PrefGenConfig.drop_truncated``)."""

    def validate(self, where: str) -> None:
        if not self.name or not self.path:
            raise ValueError(f"{where}: name and path are required (got name={self.name!r}, path={self.path!r})")
        if any(c in self.name for c in "/\\ "):
            raise ValueError(f"{where}.name {self.name!r}: no '/', '\\\\' or spaces (it names the run's files)")
        check_choice(f"{where}.template", self.template, TEMPLATES)
        check_at_least(f"{where}.n", self.n, 1)
        check_at_least(f"{where}.max_new_tokens", self.max_new_tokens, 1)
        if self.temperature <= 0 and self.n > 1:
            raise ValueError(f"{where}: n={self.n} with temperature {self.temperature} gives identical completions")


@dataclass
class JudgeConfig:
    """Who rates the completions: an LLM judge on the four Tülu 3 aspects, and/or the verifiers."""

    model: str = ""
    """HF directory of the LLM judge (Tülu 3: GPT-4o; here any open model the engine serves). Empty: no LLM judge,
    then every prompt must be verifiable (``verifier`` on, rows with ``ground_truth`` and ``dataset``)."""
    tokenizer: str = ""
    """Judge tokenizer directory; empty: ``model``."""
    template: str = "tokenizer"
    """Chat template of the judge prompt: ``tokenizer`` (the judge's own) or ``tulu``."""
    temperature: float = 0.0
    """Judge sampling temperature; 0: greedy, so a rerun rates a completion the same."""
    max_new_tokens: int = 96
    """Reply budget of the judge (the score JSON is ~40 tokens with a Llama 3 tokenizer)."""
    structured_output: bool = True
    """Constrain the judge's reply to the score JSON with vLLM's structured output; engines without it (the torch
    engine) get the same prompt and their reply is parsed leniently."""
    verifier: bool = True
    """Rate verifiable prompts (rows with ``ground_truth`` + ``dataset``) with their verifier (the programmatic judge,
    Tülu 3's RLVR verifiers) instead of the LLM judge: every aspect 5 when correct, 1 when wrong (IFEval partial
    credit in between)."""

    def validate(self) -> None:
        check_choice("judge.template", self.template, TEMPLATES)
        check_at_least("judge.max_new_tokens", self.max_new_tokens, 8)
        check_at_least("judge.temperature", self.temperature, 0.0)


@dataclass
class EngineSettings:
    """The rollout engine that serves each model in turn (``rollout.make_engine``)."""

    kind: str = "auto"
    """``vllm``, ``torch`` or ``auto`` (vLLM when importable here or ``$MT_VLLM_PYTHON`` names its interpreter)."""
    tp: int = 1
    """Tensor-parallel size of one vLLM engine."""
    dtype: str = "auto"
    """vLLM weight dtype; ``auto``: bfloat16 on GPU, float32 on CPU."""
    placement: str = "local"
    """``local`` (in this worker process; under ``$MT_VLLM_PYTHON``, when that names another interpreter, in a child
    process of it) or ``ray`` (``num_engines`` Ray actors behind this worker)."""
    num_engines: int = 1
    """Engines behind one worker (``ray`` only); workers themselves are the SLURM tasks / ``--nproc`` ranks."""
    memory_fraction: float = 0.9
    """vLLM ``gpu_memory_utilization``."""
    max_model_len: Optional[int] = None
    """vLLM context length (prompt + completion); None: the model's."""
    timeout_s: float = 1800.0
    """Bound on every engine call (a start, one shard's generation or judging); past it the worker stops with an
    error naming the model (and shard), and a rerun resumes from the finished shards."""

    def validate(self) -> None:
        check_choice("engine.kind", self.kind, ("auto", "vllm", "torch"))
        check_choice("engine.placement", self.placement, ("local", "ray"))
        check_at_least("engine.tp", self.tp, 1)
        check_at_least("engine.num_engines", self.num_engines, 1)
        if self.timeout_s <= 0:
            raise ValueError(f"engine.timeout_s must be > 0, got {self.timeout_s}")


@dataclass
class PromptsConfig:
    """Where the prompts come from."""

    mixture: dict[str, Any] = field(default_factory=dict)
    """A data mixture (``{datasets: [{path, count|fraction, source}], seed}``), read by the training loaders."""
    kind: str = "sft"
    """Row schema of the mixture's files: ``sft`` (``messages``; the prompt is everything before the last assistant
    turn), ``preference`` (the shared prompt of ``chosen``/``rejected``) or ``rlvr`` (``messages``, ``ground_truth``,
    ``dataset``: verifiable prompts)."""
    max_prompts: Optional[int] = None
    """Use at most this many prompts (after mixing and decontamination); None: all."""
    max_prompt_tokens: int = 2048
    """Prompts longer than this (with any pool model's tokenizer and template) are dropped and counted."""
    decontaminate: list[str] = field(default_factory=list)
    """Eval files (``name=path`` or paths) the prompts are decontaminated against with the 8-gram tool
    (``data.decontaminate``, Tülu 3's rule): a prompt sharing an n-gram with a matched eval instance is dropped."""
    ngram: int = 8
    """N-gram length of the decontamination."""
    threshold: float = 0.5
    """An eval instance is matched when the prompts' n-grams cover more than this share of it."""

    def validate(self) -> None:
        check_choice("prompts.kind", self.kind, PROMPT_KINDS)
        if not self.mixture:
            raise ValueError("prompts.mixture is empty")
        if self.max_prompts is not None:
            check_at_least("prompts.max_prompts", self.max_prompts, 1)


@dataclass
class PrefGenConfig:
    """On-policy preference data (Tülu 3 §5.2): prompts -> completions from the pool and the SFT policy -> judge ->
    binarised pairs in the released preference schema."""

    run_dir: str = "runs/tiny/prefgen"
    """Output directory: ``preferences.jsonl``, ``report.json`` and the per-shard files a resumed run reuses."""
    data_root: str = "runs/data"
    """Directory of the embedded synthetic suite; configs name its files as ``${data_root}/...`` (as ``data.root``)."""
    runs_root: str = "runs/tiny"
    """This size's stage runs, as the trainers' ``runs_root``: configs name the earlier stages' HF exports
    ``${runs_root}/<stage>/hf`` and their ``run_dir`` ``${runs_root}/prefgen`` (the SLURM scripts:
    ``$MT_RUNS_DIR/<size>``; the demo: its run directory)."""
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    pool: list[PoolModel] = field(default_factory=list)
    """Off-policy models (Tülu 3: a pool of open and API models); each serves every prompt."""
    policy: PoolModel = field(default_factory=PoolModel)
    """The current SFT policy (the on-policy completions); empty ``path``: none."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """The SLURM allocation of ``slurm/prefgen_<size>.sh``: one task (worker) per :meth:`gpus_per_worker` GPUs."""
    shard_size: int = 64
    """Prompts per shard: the unit of work of a worker, of resumption and of every engine call."""
    seed: int = 0
    """Seeds sampling (per model and shard) and the choice of the rejected completion (per prompt)."""
    drop_truncated: bool = True
    """Drop completions cut at ``max_new_tokens`` (counted) instead of judging a half answer."""
    fresh: bool = False
    """Delete ``run_dir``'s previous shards and start over (default: resume)."""

    def gpus_per_worker(self) -> int:
        """GPUs of one worker's engines, all on its node: ``engine.tp``, times ``engine.num_engines`` with
        ``engine.placement=ray`` (the engines are actors of a Ray the worker starts on its node)."""
        e = self.engine
        return e.tp * (e.num_engines if e.placement == "ray" else 1)

    def models(self) -> list[PoolModel]:
        """Every completion model, the pool first, then the policy."""
        return list(self.pool) + ([self.policy] if self.policy.path else [])

    def validate(self) -> None:
        self.prompts.validate()
        self.judge.validate()
        self.engine.validate()
        self.cluster.validate(self.gpus_per_worker(), "one prefgen worker, with its engines' GPUs, per task")
        check_at_least("shard_size", self.shard_size, 1)
        for i, m in enumerate(self.pool):
            m.validate(f"pool[{i}]")
        if self.policy.path:
            self.policy.validate("policy")
        models = self.models()
        if not models:
            raise ValueError("no completion model: set pool and/or policy.path")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"pool/policy names must be unique, got {names}")
        if sum(m.n for m in models) < 2:
            raise ValueError("fewer than 2 completions per prompt in all (pool + policy n): no pair can be formed")
        if not self.judge.model and not self.judge.verifier:
            raise ValueError("no judge: set judge.model (an LLM judge) and/or judge.verifier=true")
        if not self.judge.model and self.prompts.kind != "rlvr":
            raise ValueError(f"prompts.kind={self.prompts.kind!r} has no ground truth: the verifier cannot judge it, "
                             "set judge.model")
