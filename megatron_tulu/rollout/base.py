"""The rollout engine interface: what the RLVR driver calls to sample responses and to push new weights.

Two implementations share it: :class:`~megatron_tulu.rollout.vllm_engine.VLLMEngine` (real vLLM, GPU or
the CPU build) and :class:`~megatron_tulu.rollout.torch_engine.TorchEngine` (plain transformers with a KV
cache, for machines where vLLM cannot be installed). Prompts go in as token ids and come back as token ids,
so tokenisation and chat templates stay in ``data/``.

Logprob convention (both engines): ``logprobs[j][t]`` is the log-probability of the sampled token under the
distribution it was sampled from, i.e. ``log_softmax(logits / temperature)`` restricted to the top-p
nucleus and renormalised (with ``top_p=1`` this is plain ``log_softmax(logits / temperature)``). For greedy
decoding (``temperature == 0``) it is ``log_softmax(logits)``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

FINISH_REASONS = ("stop", "length")
SHUTDOWN_TIMEOUT_S = 60.0
"""Bound on an engine's own shutdown when it answers calls (a Ray actor, an engine process); past it the engine is
killed."""


class EngineRPCTimeout(TimeoutError):
    """A call to a rollout engine that answers calls (a Ray actor, an engine process) did not answer within the
    timeout."""


@dataclass
class SamplingConfig:
    """How to sample responses for one batch of prompts."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax) decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability mass reaches top_p (1 = off)."""
    max_new_tokens: int = 64
    """Maximum number of generated tokens per sample (finish reason "length" when reached)."""
    n: int = 1
    """Number of samples per prompt (GRPO's group size K)."""
    seed: int | None = None
    """Seed for sampling; the same seed, prompts and weights give the same samples. None = unseeded."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end a sample (e.g. EOS, <|eot_id|>); the stop token is included in the output."""
    regex: str | None = None
    """Constrain every sample to text matching this regular expression (structured output: an LLM judge's score
    format). Only engines with ``supports_regex`` honour it; the others refuse a config that sets it."""

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError("SamplingConfig.n > 1 with temperature 0 gives n identical samples; use temperature > 0")


@dataclass
class Generation:
    """The samples for one prompt."""

    prompt_index: int
    """Index of the prompt in the batch passed to ``generate``."""
    token_ids: list[list[int]]
    """One list of generated token ids per sample (n lists), prompt excluded."""
    logprobs: list[list[float]]
    """Per-token logprob of each generated token (same shape as token_ids); see the module docstring."""
    finish_reasons: list[str]
    """Per sample: "stop" (hit a stop token) or "length" (hit max_new_tokens)."""


def check_prompts(prompt_token_ids: list[list[int]], vocab_size: int | None = None) -> None:
    """Reject empty prompts and out-of-range ids with an error naming the prompt."""
    if not isinstance(prompt_token_ids, list):
        raise TypeError(f"prompt_token_ids must be a list of lists of ints, got {type(prompt_token_ids).__name__}")
    for i, p in enumerate(prompt_token_ids):
        if len(p) == 0:
            raise ValueError(f"prompt_token_ids[{i}] is empty")
        if vocab_size is not None:
            bad = [t for t in p if not 0 <= int(t) < vocab_size]
            if bad:
                raise ValueError(f"prompt_token_ids[{i}] has ids outside [0, {vocab_size}): {bad[:5]}")


def prompt_chunks(num_prompts: int, num_engines: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` prompt ranges, one per engine (ceil-sized, empty ones dropped), as engine groups split
    a batch. An engine given chunk ``[lo, hi)`` with seed ``seed + lo`` samples what one engine would: both engines
    seed prompt ``i`` of their batch with ``seed + i``."""
    if num_engines < 1:
        raise ValueError(f"num_engines must be >= 1, got {num_engines}")
    per = max(1, -(-num_prompts // num_engines))
    return [(lo, min(lo + per, num_prompts)) for lo in range(0, num_prompts, per)][:num_engines]


def chunk_sampling(sampling: SamplingConfig, lo: int) -> SamplingConfig:
    """``sampling`` for the engine given the chunk that starts at prompt ``lo`` (seed + lo, see :func:`prompt_chunks`)."""
    return dataclasses.replace(sampling, seed=None if sampling.seed is None else sampling.seed + lo)


def chunk_generations(generations: list[Generation], lo: int) -> list[Generation]:
    """A chunk's generations with ``prompt_index`` counted in the whole batch (the chunk starts at prompt ``lo``)."""
    return [dataclasses.replace(g, prompt_index=lo + g.prompt_index) for g in generations]


class RolloutEngine(abc.ABC):
    """A sampler the RLVR driver talks to. Implementations hold one copy of the policy weights."""

    supports_regex: bool = False
    """``generate`` honours ``SamplingConfig.regex`` (vLLM started with ``structured_outputs=True``)."""

    @abc.abstractmethod
    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig) -> list[Generation]:
        """Sample ``sampling.n`` responses per prompt; returns one :class:`Generation` per prompt, in order."""

    @abc.abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], metas=None) -> None:
        """Replace weights in place from ``(hf_name, full_tensor)`` pairs (HF names, unsharded shapes).

        ``metas``: optional ``(name, dtype, shape)`` of every pair, in order, known before the first tensor
        exists (``checkpoint.model_io.hf_tensor_metas``); an engine that can stream (vLLM's bucketed
        broadcast) then consumes ``named_tensors`` lazily instead of collecting it.

        TorchEngine accepts a subset of the parameters; VLLMEngine needs the full set (it reloads layer
        by layer, see ``vllm_worker_ext.validate_metas``).

        Names, shapes and dtypes are checked before anything is loaded; a bad entry raises ``ValueError``
        and leaves the engine usable with its old weights.
        """

    def sleep(self) -> None:
        """Free accelerator memory (weights/KV cache) between rollouts, where supported; no-op otherwise."""

    def wake(self) -> None:
        """Undo :meth:`sleep`; no-op where sleep is not supported."""

    def shutdown(self) -> None:
        """Release the engine's processes and memory. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
