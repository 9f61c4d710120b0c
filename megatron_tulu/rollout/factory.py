"""``make_engine``: the one place that turns an engine choice into a running rollout engine.

Every caller (the RLVR loop, the Ray engine actors, evaluation, the demo pipeline) starts its engine here, so the
vLLM-vs-torch choice, the ``auto`` fallback and the Ray placement are decided once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from megatron_tulu.rollout.base import RolloutEngine

ENGINE_KINDS = ("vllm", "torch")
"""``vllm``: real vLLM (``VLLMEngine``); ``torch``: transformers with a KV cache (``TorchEngine``)."""


def vllm_available() -> bool:
    """vLLM can be imported in this interpreter (the CPU build here, the CUDA one in the container)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine_kind(kind: str) -> str:
    """``auto`` -> ``vllm`` when it can be imported here or a vLLM interpreter is named (``$MT_VLLM_PYTHON``, whose
    child processes and Ray actors run the engines: the image's layout), else ``torch``; other kinds are checked
    and returned."""
    from megatron_tulu.rollout.engine_process import engine_python

    if kind == "auto":
        return "vllm" if vllm_available() or engine_python() else "torch"
    if kind not in ENGINE_KINDS:
        raise ValueError(f"engine kind must be auto|{'|'.join(ENGINE_KINDS)}, got {kind!r}")
    return kind


def require_engine_here(kind: str, placement: str) -> None:
    """A vLLM engine whose front-end would run in this process (placement ``local`` or ``colocated``) needs vLLM
    importable by this interpreter or a vLLM interpreter for its child process (``$MT_VLLM_PYTHON``,
    :func:`~megatron_tulu.rollout.engine_process.engine_python`, which must then be an executable): raise
    ``ValueError`` naming the interpreter otherwise, before any model loads."""
    from megatron_tulu.rollout.engine_process import engine_python

    if resolve_engine_kind(kind) != "vllm" or placement == "ray":
        return
    python = engine_python()
    if python is not None and not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ValueError(f"MT_VLLM_PYTHON={python} is not an executable file: a {placement} vLLM engine would run in a "
                         "child process of it; point it at a Python that has vLLM, or unset it")
    if python is not None or vllm_available():
        return
    raise ValueError(f"a {placement} vLLM engine runs in this process, but {sys.executable} cannot import vllm; "
                     "install it (CPU: scripts/install_vllm_cpu.sh), name a Python that has it in $MT_VLLM_PYTHON "
                     "(the engine then runs in a child process of it), or use the torch engine")


def make_engine(kind: str, model_dir: str | Path, *, tp: int = 1, dtype: str = "float32", seed: int = 0,
                memory_fraction: float = 0.9, sleep_level: int = 0, sync_bucket_bytes: int = 64 * 2**20,
                placement: str = "local", num_engines: int = 1, timeout_s: float = 1800.0,
                events_path: str | Path | None = None, **vllm_kwargs) -> RolloutEngine:
    """Start the rollout engine(s) serving the HF checkpoint in ``model_dir``.

    Args:
        kind: ``vllm``, ``torch`` or ``auto`` (``resolve_engine_kind``).
        model_dir: HF-format directory (config.json, weights, tokenizer).
        tp: tensor-parallel size of one vLLM engine.
        dtype: vLLM weight dtype (``float32`` on CPU for exact agreement with the trainer; ``bfloat16`` on GPU).
            TorchEngine always runs float32.
        seed: vLLM's seed.
        memory_fraction: vLLM's ``gpu_memory_utilization``.
        sleep_level: vLLM sleep mode used by ``sleep()`` (0 off, 1, 2).
        sync_bucket_bytes: weight-sync bucket size.
        placement: ``local`` (in this process), ``ray`` (``num_engines`` Ray actors in a placement group on
            the cluster at ``$RAY_ADDRESS``, else on a local Ray) or ``colocated`` (``num_engines`` engines whose
            workers share the trainer ranks' GPUs, engine g on those of ranks ``[g*tp, (g+1)*tp)``; front-ends in this
            process, weight sync by IPC handle on this GPU, :mod:`megatron_tulu.rollout.colocated`). A vLLM front-end
            of ``local`` or ``colocated`` runs in a child process of ``$MT_VLLM_PYTHON`` where that names another
            interpreter (the image: :mod:`megatron_tulu.rollout.engine_process`).
        num_engines: engines behind one ``RolloutEngine`` (``ray`` and ``colocated``).
        timeout_s: bound on every Ray call, engine-process call and weight-sync collective.
        events_path: ``colocated``: a JSON line per generate/sleep/wake/update_weights call is appended there.
        vllm_kwargs: further ``VLLMEngine`` arguments (e.g. ``max_model_len``, ``kv_cache_memory_bytes``).
    """
    require_engine_here(kind, placement)
    kind = resolve_engine_kind(kind)
    kwargs = {}
    if kind == "vllm":
        kwargs = dict(tensor_parallel_size=tp, dtype=dtype, seed=seed, sync_bucket_bytes=sync_bucket_bytes,
                      gpu_memory_utilization=memory_fraction, sleep_level=sleep_level, **vllm_kwargs)
    if placement == "ray":
        from megatron_tulu.rollout.ray_engines import start_ray_engines

        return start_ray_engines(kind, model_dir, num_engines, tp, kwargs, timeout_s=timeout_s,
                                 sync_bucket_bytes=sync_bucket_bytes)
    if placement == "colocated":
        from megatron_tulu.rollout.colocated import start_colocated_engines

        return start_colocated_engines(kind, model_dir, num_engines, tp, kwargs, timeout_s=timeout_s,
                                       sync_bucket_bytes=sync_bucket_bytes, events_path=events_path)
    if placement != "local":
        raise ValueError(f"engine placement must be local|ray|colocated, got {placement!r}")
    if num_engines != 1:
        raise ValueError(f"num_engines={num_engines}: more than one engine needs placement=ray")
    return build_front_end(kind, model_dir, kwargs, timeout_s=timeout_s)


def build_front_end(kind: str, model_dir: str | Path, engine_kwargs: dict, timeout_s: float) -> RolloutEngine:
    """The engine a ``local`` or ``colocated`` placement talks to directly: a vLLM engine in a child process of
    ``$MT_VLLM_PYTHON`` where that names another interpreter (:mod:`~megatron_tulu.rollout.engine_process`), else
    :func:`build_local_engine` in this process."""
    from megatron_tulu.rollout.engine_process import EngineProcess, engine_python

    python = engine_python() if kind == "vllm" else None
    if python is None:
        return build_local_engine(kind, model_dir, engine_kwargs)
    return EngineProcess(kind, model_dir, engine_kwargs, python, timeout_s=timeout_s,
                         sync_bucket_bytes=engine_kwargs.get("sync_bucket_bytes", 64 * 2**20))


def build_local_engine(kind: str, model_dir: str | Path, engine_kwargs: dict) -> RolloutEngine:
    """One engine in this process from constructor arguments (what a Ray engine actor runs, too)."""
    if kind == "vllm":
        from megatron_tulu.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, **engine_kwargs)
    if kind == "torch":
        from megatron_tulu.rollout.torch_engine import TorchEngine

        return TorchEngine(model_dir, **engine_kwargs)
    raise ValueError(f"engine kind must be {'|'.join(ENGINE_KINDS)}, got {kind!r}")


class EngineHost:
    """One engine built from constructor arguments (:func:`build_local_engine`), answering calls by name: the body of
    a Ray engine actor (``rollout.ray_engines``) and of an engine child process (``rollout.engine_process``)."""

    def __init__(self, kind: str, model_dir: str, engine_kwargs: dict):
        self.engine = build_local_engine(kind, model_dir, engine_kwargs)

    def generate(self, prompts, sampling):
        return self.engine.generate(prompts, sampling)

    def call(self, method: str, *args):
        """``engine.<method>(*args)`` for the calls that return nothing (``update_weights``, ``reset_prefix_cache``,
        ``sleep``, ``wake``, ``shutdown``); True once it returned, so the caller can wait on it."""
        getattr(self.engine, method)(*args)
        return True

    def num_workers(self) -> int:
        return int(self.engine.num_workers)

    def rpc(self, method: str, args: tuple):
        """``collective_rpc`` on this engine's vLLM workers (the weight-sync extension's methods)."""
        return self.engine.llm.collective_rpc(method, args=tuple(args))
