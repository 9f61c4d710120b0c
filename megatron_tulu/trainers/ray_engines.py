"""Rollout engines as Ray actors in one placement group (one bundle per engine GPU; CPU bundles on CPU).

Why only the engines go to Ray: the trainer ranks are a megatron process group (TP/PP/DP collectives, NCCL on
GPU) that ``torchrun``/``srun`` already launch with ranks from the environment (``parallel.env_from_slurm``),
and SLURM handles their requeue on preemption; hosting them as Ray actors would add a second scheduler and a
second failure model for no gain. Engines are different: they are independent servers with their own
(vLLM-internal) TP groups, are started after the trainer is up, may live on dedicated nodes, and their number
is a deployment choice; a placement group gives exactly that ("engine i owns bundles [i*tp, (i+1)*tp)",
``STRICT_PACK`` per engine on GPU so a TP group stays on one node where it fits).

:class:`RayEngineGroup` has the :class:`~megatron_tulu.rollout.base.RolloutEngine` interface, so the driver
can use it in place of an in-process engine: ``generate`` splits the prompts into contiguous chunks, one per
engine, and offsets each chunk's seed by its first prompt index, so with TorchEngine the samples are the same
as one engine's (its per-prompt RNG is ``seed + i``). Every Ray call waits at most ``timeout_s`` and raises
:class:`EngineRPCTimeout` naming the engine and the call. ``update_weights`` ships the tensors through Ray's
object store: fine for tests and small models; at scale the weights go over the bucketed broadcast of
``rollout.weight_sync`` (not wired to Ray actors yet).

Status: the driver does not use this class yet (``rlvr.num_engines`` > 1 is rejected); tested on CPU with
TorchEngine actors (tests/trainers/test_rlvr_ray_engines.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from megatron_tulu.rollout.base import Generation, RolloutEngine, SamplingConfig


class EngineRPCTimeout(TimeoutError):
    """A Ray call to a rollout engine actor did not answer within the timeout."""


class _EngineHost:
    """Body of the Ray actor: builds one engine in the actor process and forwards calls to it."""

    def __init__(self, kind: str, model_dir: str, engine_kwargs: dict):
        if kind == "torch":
            from megatron_tulu.rollout.torch_engine import TorchEngine

            self.engine = TorchEngine(model_dir, **engine_kwargs)
        elif kind == "vllm":
            from megatron_tulu.rollout.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(model_dir, **engine_kwargs)
        else:
            raise ValueError(f"engine kind must be torch|vllm, got {kind!r}")

    def generate(self, prompts, sampling):
        return self.engine.generate(prompts, sampling)

    def update_weights(self, named):
        self.engine.update_weights(named)
        return True

    def shutdown(self):
        self.engine.shutdown()
        return True


class RayEngineGroup(RolloutEngine):
    """``num_engines`` engines (each ``engine_tp`` bundles) as Ray actors in one placement group.

    kind: ``torch`` or ``vllm``; model_dir: HF-format directory every engine loads; use_gpus: one GPU per
    bundle (False: one CPU per bundle, for CPU tests); engine_kwargs: passed to the engine's constructor
    (for vLLM include ``tensor_parallel_size=engine_tp``). Needs ``ray.init`` to have been called.
    """

    def __init__(self, kind: str, model_dir, num_engines: int = 1, engine_tp: int = 1, use_gpus: bool = False,
                 engine_kwargs: dict | None = None, timeout_s: float = 600.0):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if num_engines < 1 or engine_tp < 1:
            raise ValueError(f"num_engines and engine_tp must be >= 1, got {num_engines}, {engine_tp}")
        self.timeout_s = float(timeout_s)
        res = {"GPU": 1, "CPU": 1} if use_gpus else {"CPU": 1}
        self.pg = placement_group([dict(res) for _ in range(num_engines * engine_tp)],
                                  strategy="PACK" if num_engines > 1 else "STRICT_PACK")
        self._get(self.pg.ready(), "placement group ready")
        actor = ray.remote(_EngineHost)
        self.actors = []
        for i in range(num_engines):
            # the actor itself takes the first bundle of its engine; vLLM's TP workers take the others
            opts = dict(num_cpus=1, num_gpus=1 if use_gpus else 0,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(
                            placement_group=self.pg, placement_group_bundle_index=i * engine_tp))
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
        n = len(self.actors)
        per = -(-len(prompt_token_ids) // n)
        refs, starts = [], []
        for i, actor in enumerate(self.actors):
            lo, hi = i * per, min((i + 1) * per, len(prompt_token_ids))
            if lo >= hi:
                break
            s = dataclasses.replace(sampling, seed=None if sampling.seed is None else sampling.seed + lo)
            refs.append(actor.generate.remote(prompt_token_ids[lo:hi], s))
            starts.append(lo)
        out = []
        for lo, gens in zip(starts, self._get(refs, "generate")):
            out += [dataclasses.replace(g, prompt_index=lo + g.prompt_index) for g in gens]
        return out

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        import ray

        ref = ray.put([(k, v.detach().cpu()) for k, v in named_tensors])  # one copy in the object store for all
        self._get([a.update_weights.remote(ref) for a in self.actors], "update_weights")

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        if not getattr(self, "actors", None):
            return
        try:
            self._get([a.shutdown.remote() for a in self.actors], "shutdown")
        finally:
            for a in self.actors:
                ray.kill(a)
            remove_placement_group(self.pg)
            self.actors = []
