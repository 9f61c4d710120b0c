"""Colocated rollout engines (``rlvr.engine_placement=colocated``): every trainer GPU also hosts its share of an
engine, like verl's and NeMo-RL's hybrid engines.

Layout: the W trainer ranks of a node serve W / ``engine_tp`` engines; engine g runs on the GPUs of the node's
trainer ranks ``[g*engine_tp, (g+1)*engine_tp)`` (its vLLM workers are started with ``CUDA_VISIBLE_DEVICES`` set
to exactly those GPUs, :func:`engine_gpus`). The engines' front-ends (vLLM's ``LLM`` objects; their engine cores
and workers are processes of their own) live in trainer rank 0's process (one node; several: below) or, where vLLM
is another interpreter's (``$MT_VLLM_PYTHON``: the image), each in a child process of it
(:class:`~megatron_tulu.rollout.engine_process.EngineProcess`, same interface), behind one
:class:`ColocatedEngineGroup`, so the RLVR loop talks to it as to any :class:`RolloutEngine`: rank 0 generates
and broadcasts, and rank 0 alone holds the gathered full tensors a sync sends (``model_io.iter_hf_tensors``).

- ``generate``: the prompts are split into contiguous chunks, one per engine, each chunk's seed offset by its first
  prompt index (as ``RayEngineGroup``), so the samples equal one engine's; the chunks run concurrently.
- ``sleep`` / ``wake``: every engine frees its GPU memory (vLLM sleep mode at ``rlvr.engine_sleep_level``) while
  the trainer steps and takes it back before the weight sync; the calls are recorded (``events``, and one JSON line
  each in ``events_path``) so tests and logs show the order generate -> sleep -> train -> wake -> sync.
- ``update_weights``: vLLM engines get the buckets through one ``WeightSyncGroup(ipc=True)``: the worker on rank
  0's own GPU (NCCL refuses two ranks on one device) copies each bucket out of rank 0's buffer by CUDA IPC handle,
  the workers on the other GPUs receive it by NCCL broadcast, bucketed and streamed as for the other placements.
  On CPU every worker shares rank 0's device, so all of them take the IPC path (shared-memory handles, the same
  ``reduce_tensor`` serialisation). TorchEngines (in this process) get the tensors directly.

GPU-only, and not run on CPU: ``CUDA_VISIBLE_DEVICES`` per engine, CUDA IPC handles (``cudaIpcGetMemHandle`` /
``rebuild_cuda_tensor`` on the receiver's device index), the NCCL broadcast to other-GPU workers beside it, and
vLLM's sleep mode (``LLM.sleep``/``wake_up``; vLLM has none on CPU, where the calls are no-ops).

On several nodes each node's first rank holds such a group for its node's GPUs, and
:mod:`megatron_tulu.rollout.colocated_nodes` joins them (a process can start engines on its own node only).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from megatron_tulu.rollout.base import (
    Generation, RolloutEngine, SamplingConfig, chunk_generations, chunk_sampling, prompt_chunks,
)

log = logging.getLogger(__name__)


def colocated_num_engines(world_size: int, engine_tp: int, num_engines: int = 1) -> int:
    """Engines of a colocated placement: ``world_size / engine_tp``. Raises ``ValueError`` naming the fields when
    ``rlvr.engine_tp`` does not divide the trainer world or ``rlvr.num_engines`` is neither its default (1) nor
    that number."""
    if engine_tp < 1 or world_size % engine_tp:
        raise ValueError(f"rlvr.engine_placement=colocated: rlvr.engine_tp={engine_tp} must divide the trainer's "
                         f"world of {world_size} ranks (parallel.tp x pp x cp x dp): every trainer GPU hosts one "
                         "engine worker")
    n = world_size // engine_tp
    if num_engines not in (1, n):
        raise ValueError(f"rlvr.engine_placement=colocated: rlvr.num_engines={num_engines}, but {world_size} trainer "
                         f"ranks / rlvr.engine_tp={engine_tp} make {n} engines; leave rlvr.num_engines at 1 or set {n}")
    return n


def engine_gpus(index: int, engine_tp: int) -> list[str]:
    """The physical GPUs (``CUDA_VISIBLE_DEVICES`` entries) of engine ``index``: those of trainer local ranks
    ``[index*engine_tp, (index+1)*engine_tp)``, trainer local rank r using visible device r. GPU only."""
    from megatron_tulu import platform

    devices = platform.visible_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    lo, hi = index * engine_tp, (index + 1) * engine_tp
    if len(devices) < hi:
        raise ValueError(f"colocated engine {index} needs GPUs {lo}..{hi - 1} of the node, but this node's first trainer rank sees "
                         f"{len(devices)} ({visible or 'all'}): launch the trainer ranks with every GPU of the node "
                         "visible (torchrun does; under srun use --gpus-per-task=all or one task per node)")
    return devices[lo:hi]


class ColocatedEngineGroup(RolloutEngine):
    """``engines`` (built by :func:`start_colocated_engines`) as one :class:`RolloutEngine`; see the module doc.

    ``events``: the calls made on the group, in order (``{"call": "generate" | "sleep" | "wake" |
    "update_weights", "t": unix time, ...}``), also appended as JSON lines to ``events_path`` when given.
    """

    def __init__(self, engines: list[RolloutEngine], sync_bucket_bytes: int = 64 * 2**20, timeout_s: float = 1800.0,
                 events_path: str | Path | None = None):
        if not engines:
            raise ValueError("ColocatedEngineGroup needs at least one engine")
        self.engines = list(engines)
        self.vllm = all(hasattr(e, "rpc_async") for e in self.engines)
        if not self.vllm and any(hasattr(e, "rpc_async") for e in self.engines):
            raise ValueError("ColocatedEngineGroup: all engines must be of one kind")
        self.sync_bucket_bytes, self.timeout_s = int(sync_bucket_bytes), float(timeout_s)
        self.supports_regex = all(e.supports_regex for e in self.engines)
        self.events: list[dict] = []
        self.events_path = Path(events_path) if events_path else None
        self.asleep = False
        self._sync = None
        # vLLM engines compute in their own processes: their chunks run concurrently. In-process TorchEngines share
        # this process's threads; run one after the other (also keeps their float reductions those of one engine).
        self._pool = cf.ThreadPoolExecutor(max_workers=len(self.engines), thread_name_prefix="colocated")

    def _record(self, call: str, **info) -> None:
        ev = {"call": call, "t": time.time(), **info}
        self.events.append(ev)
        if self.events_path is not None:
            with open(self.events_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(ev) + "\n")

    # ------------------------------------------------------------------ generation

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig) -> list[Generation]:
        if self.asleep:
            raise RuntimeError("ColocatedEngineGroup.generate while the engines sleep: wake() them first")
        if self._sync is not None:
            self._sync.check_fresh()  # no rollouts from half-updated weights (a sync that failed midway)
        chunks = prompt_chunks(len(prompt_token_ids), len(self.engines))
        self._record("generate", prompts=len(prompt_token_ids), chunks=[list(c) for c in chunks])

        def run(engine, lo, hi):
            return chunk_generations(engine.generate(prompt_token_ids[lo:hi], chunk_sampling(sampling, lo)), lo)

        if self.vllm and len(chunks) > 1:
            futures = [self._pool.submit(run, e, lo, hi) for e, (lo, hi) in zip(self.engines, chunks)]
            parts = [f.result() for f in futures]
        else:
            parts = [run(e, lo, hi) for e, (lo, hi) in zip(self.engines, chunks)]
        return [g for part in parts for g in part]

    # ------------------------------------------------------------------ weights

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], metas=None) -> None:
        """vLLM: streamed buckets, by IPC handle to the worker on this GPU and by broadcast to the others (one
        group for all engines, so each bucket is packed once). TorchEngines: the tensors themselves."""
        if self.asleep:
            raise RuntimeError("ColocatedEngineGroup.update_weights while the engines sleep: wake() them first")
        t0 = time.time()
        if not self.vllm:
            from megatron_tulu.checkpoint.mapping import as_tensor

            items = [(k, as_tensor(v)) for k, v in named_tensors]
            for e in self.engines:
                e.update_weights(items)
            self._record("update_weights", tensors=len(items), seconds=time.time() - t0)
            return
        if self._sync is None:
            self._sync = self._connect_sync()
        stats = self._sync.sync(named_tensors, metas=metas)
        self._record("update_weights", tensors=stats.tensors, buckets=stats.buckets, seconds=stats.seconds,
                     ipc_workers=len(self._sync.members["ipc"]), broadcast_workers=len(self._sync.members["broadcast"]))

    def _connect_sync(self):
        from megatron_tulu import platform
        from megatron_tulu.rollout.weight_sync import WeightSyncGroup

        sync = WeightSyncGroup(self.engines, bucket_bytes=self.sync_bucket_bytes, timeout_s=min(self.timeout_s, 600.0),
                               backend=platform.backend(), ipc=True)
        sync.connect()
        return sync

    # ------------------------------------------------------------------ lifecycle

    def sleep(self) -> None:
        """Every engine frees its GPU memory for the trainer's step (a no-op on CPU and at sleep level 0)."""
        self._record("sleep")
        for e in self.engines:
            e.sleep()
        self.asleep = True

    def wake(self) -> None:
        """Every engine takes its GPU memory back (weights and KV cache) before the weight sync refills it."""
        self._record("wake")
        for e in self.engines:
            e.wake()
        self.asleep = False

    def shutdown(self) -> None:
        if not self.engines:
            return
        if self._sync is not None:  # close() never raises: an engine may be dead already
            self._sync.close()
            self._sync = None
        for e in self.engines:
            try:
                e.shutdown()
            except Exception as err:  # noqa: BLE001 - shut the others down regardless
                log.warning("engine shutdown failed: %s", err)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engines = []


@contextlib.contextmanager
def _environment(values: dict):
    """``os.environ`` updated by ``values`` inside the block, as before after it."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_colocated_engines(kind: str, model_dir, num_engines: int, engine_tp: int, engine_kwargs: dict,
                            timeout_s: float, sync_bucket_bytes: int,
                            events_path: str | Path | None = None) -> ColocatedEngineGroup:
    """Start ``num_engines`` engines of ``engine_tp`` each, their front-ends in this process (trainer rank 0, or a
    node's first rank: its node's share) or, for vLLM where ``$MT_VLLM_PYTHON`` names another interpreter (the
    image), each in a child process of it (:mod:`~megatron_tulu.rollout.engine_process`); on GPU engine g's workers
    on the GPUs of the node's trainer ranks ``[g*engine_tp, (g+1)*engine_tp)``. Called through
    ``rollout.make_engine(placement="colocated")``."""
    from megatron_tulu import platform
    from megatron_tulu.rollout.engine_process import engine_python
    from megatron_tulu.rollout.factory import build_front_end

    gpu = platform.has_gpu()
    child = kind == "vllm" and engine_python() is not None  # a front-end process of its own, its GPUs set at start
    if (gpu and kind == "vllm" and not child and num_engines > 1
            and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"):
        raise ValueError("rlvr.engine_placement=colocated with several vLLM engines on GPU needs vLLM's engine-core "
                         "processes (unset VLLM_ENABLE_V1_MULTIPROCESSING=0): an in-process engine cannot be moved to "
                         "its own GPUs once CUDA is initialised here")
    engines = []
    try:
        for g in range(num_engines):
            gpus = {"CUDA_VISIBLE_DEVICES": ",".join(engine_gpus(g, engine_tp))} if gpu else {}
            with _environment(gpus):  # the engine's processes (or its front-end's child process) inherit it
                engines.append(build_front_end(kind, model_dir, dict(engine_kwargs), timeout_s))
    except BaseException:
        for e in engines:
            e.shutdown()
        raise
    return ColocatedEngineGroup(engines, sync_bucket_bytes=sync_bucket_bytes, timeout_s=timeout_s,
                                events_path=events_path)
