"""Rollout engines as Ray actors in one placement group (one bundle per engine GPU; CPU bundles on CPU).

Why only the engines go to Ray: the trainer ranks are a megatron process group (TP/PP/DP collectives, NCCL on
GPU) that ``torchrun``/``srun`` already launch with ranks from the environment (``parallel.env_from_slurm``),
and SLURM handles their requeue on preemption; hosting them as Ray actors would add a second scheduler and a
second failure model for no gain. Engines are different: they are independent servers with their own
(vLLM-internal) TP groups, are started after the trainer is up, may live on dedicated nodes, and their number
is a deployment choice; a placement group gives exactly that ("engine i owns bundles [i*tp, (i+1)*tp)",
``PACK`` so a TP group stays on one node where it fits and spans nodes where it must, as TP=16 on 8-GPU
nodes). Under SLURM (``slurm/_ray.sh``) only the engine slots offer resources to Ray, so the group lands there;
trainer rank 0 joins the cluster as the driver through the (zero-resource) raylet on its node.

:class:`RayEngineGroup` has the :class:`~megatron_tulu.rollout.base.RolloutEngine` interface, so the driver
uses it in place of an in-process engine: ``generate`` splits the prompts into contiguous chunks, one per
engine, and offsets each chunk's seed by its first prompt index, so the samples are the same as one engine's
(both engines seed prompt ``i`` with ``seed + i``). Every Ray call waits at most ``timeout_s`` and raises
:class:`EngineRPCTimeout` naming the call. ``update_weights``: vLLM engines receive the weights over the
bucketed broadcast of :class:`~megatron_tulu.rollout.weight_sync.WeightSyncGroup` (this process is rank 0,
every vLLM worker of every engine a peer; NCCL on GPU, gloo on CPU). The workers always load bucket by bucket,
so an engine holds a few buckets beside its model, not a second copy of it (the trainer side streams too when
the metadata is given). A sync that fails midway leaves the engines half-updated: the group is then stale and
``generate`` raises ``WeightSyncStale`` until the next ``update_weights`` (a new group, the full set) succeeded.
TorchEngine actors (tests, machines without vLLM) get the tensors through Ray's object store.

``python_executable`` (default: ``$MT_VLLM_PYTHON`` for vLLM engines): the interpreter of the engine actors. The
container keeps vLLM, which pins its own torch, in ``/opt/vllm``; the actors run there while the trainers keep
the image's torch and Transformer Engine.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path

import torch

from megatron_tulu.rollout.base import (
    SHUTDOWN_TIMEOUT_S, EngineRPCTimeout, Generation, RolloutEngine, SamplingConfig, chunk_generations, chunk_sampling,
    prompt_chunks,
)
from megatron_tulu.rollout.factory import EngineHost

log = logging.getLogger(__name__)
_REPO_ROOT = str(Path(__file__).resolve().parents[2])  # engine actors import megatron_tulu from this checkout


class _RemoteSyncPeer:
    """One engine actor as a :class:`~megatron_tulu.rollout.weight_sync.WeightSyncGroup` peer: its worker
    count and its workers' extension methods, called through the actor."""

    def __init__(self, group: RayEngineGroup, actor, num_workers: int):
        self.group, self.actor, self.num_workers = group, actor, num_workers

    def rpc_async(self, method: str, *args, timeout=None):  # noqa: ARG002 - bounded by WeightSyncGroup's waits
        return self.actor.rpc.remote(method, tuple(args)).future()

    def reset_prefix_cache(self) -> None:
        self.group._get(self.actor.call.remote("reset_prefix_cache"), "reset_prefix_cache")


class RayEngineGroup(RolloutEngine):
    """``num_engines`` engines (each ``engine_tp`` bundles) as Ray actors in one placement group.

    kind: ``torch`` or ``vllm``; model_dir: HF-format directory every engine loads; use_gpus: one GPU per
    bundle (False: one CPU per bundle, for CPU tests); engine_kwargs: passed to the engine's constructor
    (for vLLM include ``tensor_parallel_size=engine_tp``). Needs ``ray.init`` to have been called.
    """

    def __init__(self, kind: str, model_dir, num_engines: int = 1, engine_tp: int = 1, use_gpus: bool = False,
                 engine_kwargs: dict | None = None, timeout_s: float = 600.0, sync_bucket_bytes: int = 64 * 2**20,
                 python_executable: str | None = None):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if num_engines < 1 or engine_tp < 1:
            raise ValueError(f"num_engines and engine_tp must be >= 1, got {num_engines}, {engine_tp}")
        self.kind, self.timeout_s, self.sync_bucket_bytes = kind, float(timeout_s), int(sync_bucket_bytes)
        self.supports_regex = supports_regex(kind, engine_kwargs or {})
        self._sync = None
        if python_executable is None and kind == "vllm":
            python_executable = os.environ.get("MT_VLLM_PYTHON") or None
        env_vars = {"PYTHONPATH": os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH")) if p)}
        res = {"GPU": 1, "CPU": 1} if use_gpus else {"CPU": 1}
        # PACK, not STRICT_PACK: a TP=16 engine must be able to span two 8-GPU nodes
        self.pg = placement_group([dict(res) for _ in range(num_engines * engine_tp)], strategy="PACK")
        self._get(self.pg.ready(), "placement group ready")
        actor = ray.remote(EngineHost)
        self.actors = []
        for i in range(num_engines):
            bundles = list(range(i * engine_tp, (i + 1) * engine_tp))
            # TP=1: the actor is the engine's one worker and holds its GPU. TP>1 on GPU: vLLM's Ray executor
            # starts one worker per bundle of this engine (VLLM_RAY_BUNDLE_INDICES), the actor holds none.
            engine_env = dict(env_vars, VLLM_RAY_BUNDLE_INDICES=",".join(map(str, bundles)))
            runtime_env = {"env_vars": engine_env, **({"py_executable": python_executable} if python_executable else {})}
            opts = dict(num_cpus=1 if engine_tp == 1 or not use_gpus else 0,
                        num_gpus=1 if use_gpus and engine_tp == 1 else 0, runtime_env=runtime_env,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(
                            placement_group=self.pg, placement_group_bundle_index=bundles[0],
                            placement_group_capture_child_tasks=True))
            self.actors.append(actor.options(**opts).remote(kind, str(model_dir), dict(engine_kwargs or {})))
        # constructing an engine loads weights: wait (bounded) so a bad model dir fails here, not at generate
        self._get([a.__ray_ready__.remote() for a in self.actors], "engine start-up")

    def _get(self, refs, what: str):
        import ray

        try:
            return ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError as e:
            raise EngineRPCTimeout(f"rollout engine {what}: no answer within {self.timeout_s:.0f}s") from e

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig) -> list[Generation]:
        if self._sync is not None:
            self._sync.check_fresh()  # no rollouts from half-updated weights (a sync that failed midway)
        chunks = prompt_chunks(len(prompt_token_ids), len(self.actors))
        refs = [actor.generate.remote(prompt_token_ids[lo:hi], chunk_sampling(sampling, lo))
                for actor, (lo, hi) in zip(self.actors, chunks)]
        return [g for (lo, _), gens in zip(chunks, self._get(refs, "generate")) for g in chunk_generations(gens, lo)]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], metas=None) -> None:
        import ray

        if self.kind != "vllm":
            from megatron_tulu.checkpoint.mapping import as_tensor

            ref = ray.put([(k, as_tensor(v).detach().cpu()) for k, v in named_tensors])  # one copy in the object store
            self._get([a.call.remote("update_weights", ref) for a in self.actors], "update_weights")
            return
        if self._sync is None:
            self._sync = self._connect_sync()
        self._sync.sync(named_tensors, metas=metas)  # streamed to the workers; a failure marks the group stale

    def _connect_sync(self):
        """The broadcast group: this process (trainer rank 0) as rank 0 on its node's cluster address."""
        import ray

        from megatron_tulu import platform
        from megatron_tulu.rollout.weight_sync import WeightSyncGroup

        workers = self._get([a.num_workers.remote() for a in self.actors], "num_workers")
        peers = [_RemoteSyncPeer(self, a, n) for a, n in zip(self.actors, workers)]
        sync = WeightSyncGroup(peers, bucket_bytes=self.sync_bucket_bytes, timeout_s=self.timeout_s,
                               host=ray.util.get_node_ip_address(), backend=platform.backend())
        sync.connect()
        return sync

    def _call_all(self, method: str) -> None:
        self._get([a.call.remote(method) for a in self.actors], method)

    def sleep(self) -> None:
        self._call_all("sleep")

    def wake(self) -> None:
        self._call_all("wake")

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        if not getattr(self, "actors", None):
            return
        if self._sync is not None:  # close() never raises: an engine may be dead already
            self._sync.close()
            self._sync = None
        try:  # bounded and never raising: after a timed-out call the actor may still be busy with it, and the
            # error that ended the run, not the shutdown's, is the one to report; the actors are killed regardless
            ray.get([a.call.remote("shutdown") for a in self.actors], timeout=min(self.timeout_s, SHUTDOWN_TIMEOUT_S))
        except Exception as e:  # noqa: BLE001
            log.warning("rollout engine shutdown: %s: %s; the engine actors are killed", type(e).__name__, e)
        finally:
            for a in self.actors:
                ray.kill(a)
            remove_placement_group(self.pg)
            self.actors = []
            if getattr(self, "owns_ray", False):
                ray.shutdown()


def supports_regex(kind: str, engine_kwargs: dict) -> bool:
    """Whether engines built from ``kind`` and ``engine_kwargs`` honour ``SamplingConfig.regex``: as ``VLLMEngine``
    decides it from the same arguments (a prefgen judge's structured output depends on it)."""
    return kind == "vllm" and bool(engine_kwargs.get("structured_outputs"))


def connect_ray(num_cpus: int) -> bool:
    """Join the Ray cluster at ``$RAY_ADDRESS``, else start a local one offering ``num_cpus`` CPUs (GPUs: those
    visible); nothing when this process is connected already. Returns whether this call connected (the caller then
    disconnects: ``ray.shutdown()``). Call it from a thread that lives as long as the connection (the main thread):
    the processes of a local Ray die with the thread that started them (ray 2.60; the driver then waits 60 s for its
    GCS and exits the process). In the main thread ``ray.init`` installs its own SIGTERM handler (``sys.exit``):
    the process's handler (a trainer's checkpoint-and-exit-75, a prefgen worker's exit 75) is put back."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or None
    local = {} if address else {"num_cpus": num_cpus, "include_dashboard": False}
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(address=address, logging_level="WARNING", **local)
    if main and sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)
    return True


def start_ray_engines(kind: str, model_dir, num_engines: int, engine_tp: int, engine_kwargs: dict,
                      timeout_s: float, sync_bucket_bytes: int) -> RayEngineGroup:
    """Join the Ray cluster at ``$RAY_ADDRESS`` (the slurm/ scripts start it; else start a local one) and place
    ``num_engines`` engines of ``engine_tp`` GPUs (CPU: one CPU each) as actors. Called through
    ``rollout.make_engine(placement="ray")`` by trainer rank 0."""
    import ray

    from megatron_tulu import platform

    started = connect_ray(num_engines * engine_tp)
    kwargs = dict(engine_kwargs)
    if kind == "vllm" and engine_tp > 1 and platform.has_gpu():
        kwargs.setdefault("distributed_executor_backend", "ray")
    try:
        group = RayEngineGroup(kind, model_dir, num_engines=num_engines, engine_tp=engine_tp,
                               use_gpus=platform.has_gpu(), engine_kwargs=kwargs, timeout_s=timeout_s,
                               sync_bucket_bytes=sync_bucket_bytes)
    except BaseException:
        if started:
            ray.shutdown()
        raise
    group.owns_ray = started  # disconnect (a local Ray: stop it) with the engines
    return group
