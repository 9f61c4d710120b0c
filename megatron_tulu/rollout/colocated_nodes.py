"""Colocated engines on a trainer of several nodes (``rlvr.engine_placement=colocated``, ``cluster.nodes`` > 1).

A process can start engine processes on its own node only, so each node's first trainer rank (``LOCAL_RANK`` 0, its
*node leader*) starts that node's engines as one :class:`~megatron_tulu.rollout.colocated.ColocatedEngineGroup`
(on the node's GPUs, exactly as on one node), and :class:`NodeColocatedEngines` joins the leaders:

- ``generate`` (global rank 0, the first leader): the prompts go to the leaders (an object broadcast over a gloo
  group of the leaders), each generates its contiguous share (:func:`~megatron_tulu.rollout.base.prompt_chunks`
  over the nodes, seeds and prompt indices offset by the share's start, so the samples are one engine's), and the
  shares come back to rank 0 (an object gather). The other leaders answer with :meth:`serve` wherever rank 0
  generates (the rollout, dynamic-sampling refills, the post-sync probe).
- ``update_weights``: rank 0 walks the trainer's gathered tensors as on one node and, tensor by tensor, also
  broadcasts each to the other leaders (a second group of the leaders, the trainer's backend: NCCL on GPU); each
  leader streams what it receives into its node's group (:meth:`receive_weights`), so every node's engines load by
  IPC handle and node-local broadcast. A leader takes each tensor right after its own part of that tensor's gather
  (``iter_hf_tensors(names_elsewhere=True)``), in one thread: every rank issues its collectives in the same order,
  so none can wait on another that waits on it. The metadata every leader computes itself
  (``checkpoint.model_io.hf_tensor_metas``); the tensors cross the nodes once per sync.
- ``sleep`` / ``wake`` / ``shutdown``: each leader on its own node's engines.

Each node's engines start from the weights rank 0 exports to ``run_dir/engine_init``: the run directory must be on a
filesystem every node sees (as the checkpoints must).

Every collective is bounded: the generation group by ``rlvr.engine_timeout_s`` (a share may take that long), the
weights group by at most 600 s, as the node-local sync. A leader whose share fails reports it in the gather, so rank
0 raises naming the node instead of the others waiting out the timeout; every tensor is checked against its metadata
before it is forwarded (a wrong one raises on rank 0, never a size-mismatched broadcast). Both groups exchange one
element when they are formed, so a network misconfiguration shows before any engine starts.

Cost: rank 0 forwards whole tensors, so a tensor of its own stage that the sync would take as gathered pieces is
first copied into one buffer (at most one such tensor at a time: the largest is the embedding, 1 GiB for 8B);
each leader allocates one tensor's buffer at a time.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

from megatron_tulu.rollout.base import (
    Generation, RolloutEngine, SamplingConfig, chunk_generations, chunk_sampling, prompt_chunks,
)


WEIGHTS_TIMEOUT_S = 600.0
"""Bound on one forwarded tensor's broadcast (the node-local weight sync uses the same)."""


class NodeLeaders:
    """The trainer ranks that host a node's engines (``LOCAL_RANK`` 0 of each node, in rank order) and the two
    groups that join them. Made by :meth:`connect` on every trainer rank (group creation is collective)."""

    def __init__(self, ranks: list[int], local_world_size: int, generate_group, weights_group):
        self.ranks, self.local_world_size = ranks, local_world_size
        self.generate_group, self.weights_group = generate_group, weights_group

    @property
    def nodes(self) -> int:
        return len(self.ranks)

    def hosts_engines(self) -> bool:
        return dist.get_rank() in self.ranks

    @classmethod
    def connect(cls, timeout_s: float) -> "NodeLeaders | None":
        """Collective over every trainer rank: the node leaders and their groups, or ``None`` when the trainer is on
        one node (its rank 0 hosts every engine). Raises ``ValueError`` when the nodes hold different numbers of
        ranks (each node's engines must tile its GPUs alike)."""
        from megatron_tulu import platform

        local = (int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, local)
        leaders = [r for r, (local_rank, _) in enumerate(everyone) if local_rank == 0]
        if len(leaders) == 1:
            return None
        sizes = sorted({size for _, size in everyone})
        if len(sizes) != 1 or len(leaders) * sizes[0] != dist.get_world_size():
            raise ValueError(f"rlvr.engine_placement=colocated over {len(leaders)} nodes needs the same number of "
                             f"trainer ranks on every node (LOCAL_WORLD_SIZE seen: {sizes})")
        generate_group = dist.new_group(leaders, backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        weights_group = dist.new_group(leaders, backend=platform.backend(),
                                       timeout=datetime.timedelta(seconds=min(timeout_s, WEIGHTS_TIMEOUT_S)))
        if dist.get_rank() in leaders:  # form both now: a bad interface fails here, not in the first sync
            dist.broadcast(torch.zeros(1), src=leaders[0], group=generate_group)
            dist.broadcast(torch.zeros(1, device=platform.device()), src=leaders[0], group=weights_group)
        return cls(leaders, sizes[0], generate_group, weights_group)


class NodeColocatedEngines(RolloutEngine):
    """This node's engines (``local``, a ``ColocatedEngineGroup``) as a share of every node's; see the module doc.
    On global rank 0 it is the engine the RLVR loop generates and syncs with; on the other leaders the loop calls
    :meth:`serve` and :meth:`receive_weights` at the same points."""

    def __init__(self, local: RolloutEngine, leaders: NodeLeaders):
        self.local, self.leaders = local, leaders
        self.root = leaders.ranks[0]
        self.node = leaders.ranks.index(dist.get_rank())
        self.supports_regex = local.supports_regex

    # ------------------------------------------------------------------ generation

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig) -> list[Generation]:
        if dist.get_rank() != self.root:
            raise RuntimeError("NodeColocatedEngines.generate runs on global rank 0; the other node leaders serve()")
        return self._share((list(map(list, prompt_token_ids)), sampling))

    def serve(self) -> None:
        """A node leader's part of one ``generate`` on rank 0: its share of the prompts, generated here."""
        self._share(None)

    def _share(self, request) -> list[Generation] | None:
        box = [request]
        dist.broadcast_object_list(box, src=self.root, group=self.leaders.generate_group)
        prompts, sampling = box[0]
        shares = prompt_chunks(len(prompts), self.leaders.nodes)  # fewer prompts than nodes: the last get none
        lo, hi = shares[self.node] if self.node < len(shares) else (len(prompts), len(prompts))
        try:  # a failed share is reported in the gather: rank 0 raises at once instead of waiting out the timeout
            mine = (True, chunk_generations(self.local.generate(prompts[lo:hi], chunk_sampling(sampling, lo)), lo)
                    if hi > lo else [])
        except Exception as e:  # noqa: BLE001 - re-raised below, on this leader and on rank 0
            mine = (False, f"{type(e).__name__}: {e}")
        parts = [None] * self.leaders.nodes if dist.get_rank() == self.root else None
        dist.gather_object(mine, parts, dst=self.root, group=self.leaders.generate_group)
        by_node = enumerate(parts) if parts is not None else [(self.node, mine)]
        failed = [f"node {i}: {msg}" for i, (ok, msg) in by_node if not ok]
        if failed:
            raise RuntimeError("colocated generation failed on " + "; ".join(failed))
        return [g for _, part in parts for g in part] if parts is not None else None

    # ------------------------------------------------------------------ weights

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], metas=None) -> None:
        """Rank 0: this node's engines get the stream, and each tensor also goes to the other leaders."""
        from megatron_tulu.checkpoint.mapping import as_tensor
        from megatron_tulu.rollout.weight_sync import TensorMeta, checked_tensor

        if dist.get_rank() != self.root:
            raise RuntimeError("NodeColocatedEngines.update_weights runs on global rank 0; the other node leaders "
                               "receive_weights()")
        if metas is None:
            raise ValueError("NodeColocatedEngines.update_weights needs metas: the other nodes allocate from them")

        def forwarded():
            for i, (meta, (name, tensor)) in enumerate(zip(metas, named_tensors)):
                tensor = as_tensor(tensor).contiguous()  # a lazily gathered tensor becomes one buffer to send
                checked_tensor((name, tensor), TensorMeta(*meta), i)  # the leaders allocate from the metadata
                dist.broadcast(tensor, src=self.root, group=self.leaders.weights_group)
                yield name, tensor

        self.local.update_weights(forwarded(), metas=metas)

    def receive_weights(self, gather_steps: Iterable[tuple[str, None]], metas, device) -> None:
        """A node leader's part of one ``update_weights`` on rank 0. ``gather_steps``: this rank's
        ``iter_hf_tensors(names_elsewhere=True)``; each of its items (this rank's part of a tensor's gather done) is
        followed by receiving that tensor from rank 0, which sends it after the same gather."""

        from megatron_tulu.rollout.weight_sync import dtype_from_name

        def received():
            for (name, _), (meta_name, dtype, shape) in zip(gather_steps, metas):
                if name != meta_name:
                    raise RuntimeError(f"colocated weight sync: gather order {name!r} != metadata order {meta_name!r}")
                buf = torch.empty(tuple(shape), dtype=dtype_from_name(str(dtype).removeprefix("torch.")), device=device)
                dist.broadcast(buf, src=self.root, group=self.leaders.weights_group)
                yield name, buf

        self.local.update_weights(received(), metas=metas)

    # ------------------------------------------------------------------ lifecycle

    def sleep(self) -> None:
        self.local.sleep()

    def wake(self) -> None:
        self.local.wake()

    def shutdown(self) -> None:
        self.local.shutdown()

