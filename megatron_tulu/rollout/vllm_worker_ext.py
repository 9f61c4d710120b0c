"""vLLM worker extension: the engine-worker half of the weight sync (see :mod:`megatron_tulu.rollout.weight_sync`).

vLLM mixes this class into each of its workers when the engine is built with
``worker_extension_cls="megatron_tulu.rollout.vllm_worker_ext.WeightSyncWorkerExtension"``; its methods are
then callable with ``LLM.collective_rpc(name, args=...)``. Only control messages travel by RPC (msgpack turns
tensors into lists); tensor bytes travel by broadcast on the stateless group, or, for a worker on the trainer's own
device (colocated engines), are copied out of the trainer's bucket through an IPC handle
(``ipc.IpcChannel``); after that copy both paths load alike.

Why validation happens here and up front: a failed ``reload_weights`` leaves the model on meta tensors and
the next generate kills the engine, so names, shapes and dtypes are checked against the checkpoint this
engine was started from (its safetensors headers: the HF names and full, unsharded shapes) before any byte
is received.

Weights are loaded through vLLM's worker-level ``Worker.reload_weights`` (``self.reload_weights``: it enters
the vLLM config context, then calls the model runner's layerwise ``reload_weights(weights_iterator=...,
is_checkpoint_format=True)``), never the model runner's directly; the vLLM versions that have it are pinned
in :mod:`megatron_tulu.rollout.vllm_compat` and checked when the engine starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megatron_tulu.rollout.weight_sync import (
    BucketReceiver,
    TensorMeta,
    device_key,
    init_stateless_group,
    local_nccl_version,
)

# HF names vLLM's loaders skip on purpose; harmless to send
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def checkpoint_tensor_table(model_dir: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{hf_name: (dtype, shape)}`` from the safetensors headers of an HF-format dir (no tensor data read)."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    table = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                sl = sf.get_slice(k)
                table[k] = (str(sl.get_dtype()).lower(), tuple(int(s) for s in sl.get_shape()))
    return table


def validate_metas(
    metas: list[TensorMeta],
    table: dict[str, tuple[str, tuple[int, ...]]],
    model_dtype: str,
    tie_word_embeddings: bool,
) -> list[str]:
    """Problems (empty if none) with sending ``metas`` to a model whose checkpoint is ``table``.

    Rules: every name known (``lm_head.weight`` also allowed when embeddings are tied), shapes equal the
    checkpoint's, dtype is floating and equal to the model's dtype or the checkpoint's, no duplicates, and
    the full set is sent (vLLM reloads layer by layer; a partially sent fused layer would load garbage).
    """
    problems, seen = [], set()
    ckpt_dtype_names = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
    for m in metas:
        if m.name in seen:
            problems.append(f"{m.name}: sent twice")
        seen.add(m.name)
        if m.name.endswith(_IGNORED_SUFFIXES):
            continue
        entry = table.get(m.name)
        if entry is None and m.name == "lm_head.weight" and tie_word_embeddings:
            entry = table.get("model.embed_tokens.weight")
        if entry is None:
            problems.append(f"{m.name}: unknown parameter name (not in the engine's checkpoint)")
            continue
        ck_dtype, shape = entry
        ck_dtype = ckpt_dtype_names.get(ck_dtype, ck_dtype)
        if tuple(m.shape) != tuple(shape):
            problems.append(f"{m.name}: shape {tuple(m.shape)} != expected {tuple(shape)}")
        if m.dtype not in ("float32", "bfloat16", "float16") or m.dtype not in (model_dtype, ck_dtype):
            problems.append(f"{m.name}: dtype {m.dtype} (model {model_dtype}, checkpoint {ck_dtype})")
    missing = sorted(n for n in table if n not in seen and not n.endswith(_IGNORED_SUFFIXES))
    if missing:
        problems.append(f"missing {len(missing)} tensors (the full set must be sent), e.g. {missing[:3]}")
    return problems


class WeightSyncWorkerExtension:
    """Methods added to every vLLM worker (``self`` is the worker: ``self.model_runner``, ``self.rank``).

    State is kept per group ``key`` ("host:port") so several trainer groups can feed one engine.
    Methods that can fail return ``"error: <ExceptionType>: <message>"`` instead of raising: an exception
    escaping a ``collective_rpc`` kills vLLM's engine core, and a failed join must not.
    """

    def _ws_state(self, key: str) -> dict:
        groups = getattr(self, "_ws_groups", None)
        if groups is None or key not in groups:
            raise RuntimeError(f"weight-sync group {key!r} unknown on worker rank {self.rank} (call weight_sync_init)")
        return groups[key]

    def weight_sync_versions(self, backend: str) -> dict:
        """This worker's rank, NCCL version (None unless ``backend`` is nccl with CUDA), torch version and device
        (``ipc.device_key``: who shares the trainer's device), for the trainer's handshake before the group
        forms (``WeightSyncGroup.check_nccl_versions``)."""
        # plain str: vLLM's msgpack refuses torch's TorchVersion (and the engine core's output thread dies of it)
        return {"rank": int(self.rank), "nccl": local_nccl_version(backend), "torch": str(torch.__version__),
                "device": device_key()}

    def weight_sync_init(self, key: str, host: str, timeout_s: float, plan: dict):
        """Join the trainer's group that this worker's entry of ``plan`` names: ``{str(worker rank): [transport, port,
        rank, world, backend]}``, transport ``broadcast``, or ``ipc`` (rank 0 hands each bucket over by IPC handle,
        ``ipc.IpcChannel``: colocated engines). Returns the rank or an error."""
        entry = plan.get(str(int(self.rank)))
        if entry is None:
            return f"error: WeightSyncError: worker rank {self.rank} is missing from the sync plan"
        transport, port, rank, world_size, backend = entry[0], int(entry[1]), int(entry[2]), int(entry[3]), str(entry[4])
        try:
            group = init_stateless_group(host, port, rank, world_size, backend, float(timeout_s))
        except Exception as e:
            return f"error: {type(e).__name__}: {e}"
        if not hasattr(self, "_ws_groups"):
            self._ws_groups = {}
        self._ws_groups[key] = {"group": group, "backend": backend, "timeout_s": float(timeout_s), "metas": None,
                                "ipc": transport == "ipc"}
        return rank

    def weight_sync_set_metadata(self, key: str, wire: list, bucket_bytes: int) -> list[str]:
        """Receive and validate the tensor list; returns problems (empty = accepted). Nothing is loaded."""
        try:
            st = self._ws_state(key)
        except RuntimeError as e:
            return [str(e)]
        metas = [TensorMeta.from_wire(x) for x in wire]
        if not hasattr(self, "_ws_table"):
            self._ws_table = checkpoint_tensor_table(self.model_runner.model_config.model)
        mc = self.model_runner.model_config
        model_dtype = str(mc.dtype).removeprefix("torch.")
        tied = bool(getattr(mc.hf_config, "tie_word_embeddings", False))
        problems = validate_metas(metas, self._ws_table, model_dtype, tied)
        st["metas"] = None if problems else metas
        st["bucket_bytes"] = int(bucket_bytes)
        return [f"rank {self.rank}: {p}" for p in problems]

    def weight_sync_receive(self, key: str) -> int | str:
        """Receive the buckets and reload the weights as they arrive; returns the number of tensors loaded.

        Always streamed: vLLM's layerwise reload consumes the receiver's iterator bucket by bucket, so this
        worker holds a few buckets, not a copy of the model, in a GPU that vLLM has already filled to
        ``gpu_memory_utilization``. The price: a transfer that breaks midway leaves the weights half-updated
        (unfinished layers on meta tensors). Then this returns an error, forgets the metadata (the trainer must
        resend it with the full set) and the trainer marks the engine stale so it does not generate until a full
        sync succeeded.
        """
        try:
            st = self._ws_state(key)
            if st["metas"] is None:
                raise RuntimeError("weight_sync_receive before accepted metadata (weight_sync_set_metadata)")
            ipc = st.get("ipc", False)
            on_device = st["backend"] == "nccl" or (ipc and torch.cuda.is_available())
            device = self.device if on_device else torch.device("cpu")  # IPC: copied out on this worker's GPU
            receiver = BucketReceiver(st["group"], st["metas"], st["bucket_bytes"], device, st["timeout_s"], ipc=ipc)
        except Exception as e:  # nothing loaded: the old weights stay in place
            return f"error: {type(e).__name__}: {e}"
        n = len(st["metas"])
        try:
            # worker-level API (vllm Worker.reload_weights): sets the vLLM config context around the runner's
            self.reload_weights(weights_iterator=receiver.receive(), is_checkpoint_format=True)
        except Exception as e:  # an exception escaping a collective_rpc would kill the engine core
            st["metas"] = None
            return f"error: {type(e).__name__}: {e} (weights half-updated: resync fully before generating)"
        return n

    def weight_sync_close(self, key: str) -> None:
        st = getattr(self, "_ws_groups", {}).pop(key, None)
        if st is not None:
            st["group"].shutdown()

    def weight_sync_debug_info(self) -> str:
        """JSON with this worker's pid and rank (tests use it to kill a worker)."""
        import os

        return json.dumps({"pid": os.getpid(), "rank": int(self.rank)})
