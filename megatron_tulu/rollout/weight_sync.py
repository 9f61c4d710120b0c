"""Trainer -> rollout-engine weight sync: a stateless process group, bucketed broadcasts, timeouts, probe check.

Layout: trainer rank 0 is rank 0 of a *stateless* process group (it does not touch torch.distributed's
global state, so it coexists with the trainer's megatron groups); engine worker ``i`` of engine ``e`` is
rank ``1 + offset_e + i``. Backend: NCCL on GPU, gloo on CPU, one code path (:func:`init_stateless_group`).

Protocol (both sides derive the bucket plan from the same metadata, so only bytes cross the wire):
  1. ``connect()``: every engine worker reports its NCCL version (RPC ``weight_sync_versions``) and the trainer
     compares them with its own before anyone joins: NCCL refuses a communicator across versions, and it
     would only say so at the first broadcast (NCCL creates communicators lazily). Then every engine worker
     joins via an RPC run in a thread while the trainer joins as rank 0.
  2. metadata ``[(hf_name, dtype, shape), ...]`` and the bucket size go to the workers once (and again only
     if they change); workers validate them against their model and refuse before anything is loaded.
  3. per sync: workers start receiving (RPC in a thread); the trainer packs tensors into byte buckets of at
     most ``bucket_bytes`` (a bigger tensor travels alone) and broadcasts them; workers hand each bucket's
     tensors to vLLM's layerwise ``reload_weights`` (HF names) as it arrives -- always streamed, so a worker
     holds a bounded number of buckets whatever the model size (:meth:`BucketReceiver.receive`); then the
     engine resets its prefix cache.
  4. optional probe check: engine logprobs on a fixed probe batch vs a reference callable.

Streaming has no all-or-nothing: a sync that fails once the workers started loading leaves them
half-updated (vLLM even leaves the unfinished layers on meta tensors). The group then marks itself and its
engines *stale*: engines refuse to generate (:func:`refuse_if_stale`, :class:`WeightSyncStale`) until the
next sync, which forms a fresh group, resends the metadata and the full set of tensors.

Every collective and RPC has a timeout; expiry, or a peer that vanished, raises :class:`WeightSyncTimeout`.
On NCCL the process group's own timeout is longer than that wait (:func:`group_timeout_s`) and the group is
aborted when the wait expires, so the error is ours and not the NCCL watchdog taking the process down.

Same-device workers (``WeightSyncGroup(ipc=True)``, the colocated placement, :mod:`.colocated`): NCCL refuses two
ranks on one GPU, so a worker on the trainer's own device is no rank of the broadcast group. It joins a small gloo
group instead (:class:`IpcChannel`) over which rank 0 sends, per bucket, an IPC handle of the very bucket buffer
it packed (``torch.multiprocessing.reductions.reduce_tensor``: a CUDA IPC handle on GPU, a shared-memory file on
CPU, :func:`share_tensor`), the worker copies the bucket out of it and acknowledges, and the sender reuses the
buffer for the next bucket: bucketed and streamed exactly as the broadcast, the same receiver and loader after the
copy. Workers on other devices stay on the broadcast; one sync may use both (engine TP > 1 across GPUs).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from megatron_tulu.checkpoint.mapping import HFTensor
from megatron_tulu.rollout.sync_group import (  # noqa: F401 - the group half of the sync, re-exported
    NCCL_TIMEOUT_MARGIN_S,
    StatelessGroup,
    WeightSyncError,
    WeightSyncTimeout,
    collective_with_timeout,
    check_nccl_versions,
    format_nccl_version,
    group_timeout_s,
    init_stateless_group,
    local_nccl_version,
)

from megatron_tulu.rollout.ipc import (  # noqa: F401 - the same-device half of the sync, re-exported
    IPC_MSG_BYTES,
    IpcChannel,
    device_key,
    open_shared,
    share_tensor,
    start_shm_manager,
)

log = logging.getLogger(__name__)

ALIGN = 16  # byte alignment of each tensor inside a bucket, so a uint8 slice can be viewed as any dtype


class WeightSyncMismatch(WeightSyncError):
    """After a sync, engine logprobs on the probe batch disagree with the reference beyond the tolerance."""


class WeightSyncValidationError(WeightSyncError, ValueError):
    """The tensors offered do not fit the engine's model (unknown name, wrong shape/dtype); nothing was loaded."""


class WeightSyncStale(WeightSyncError):
    """An engine's weights are half-updated (a streamed sync failed midway): it must not generate until a full
    sync succeeded."""


def refuse_if_stale(engine) -> None:
    """Raise :class:`WeightSyncStale` if a :class:`WeightSyncGroup` marked ``engine`` stale (``engine.weights_stale``,
    set when a sync failed after the engine began loading, cleared by the next successful sync)."""
    _refuse_stale(getattr(engine, "weights_stale", None))


def _refuse_stale(reason: str | None) -> None:
    if reason:
        raise WeightSyncStale(f"{reason}; refusing to generate with them: a full weight sync (update_weights) "
                              "must succeed first")


# ---------------------------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class TensorMeta:
    """What a receiver needs to rebuild one tensor: its HF name, dtype name (e.g. "float32") and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=dtype_from_name(self.dtype)).element_size()

    def to_wire(self) -> list:
        return [self.name, self.dtype, list(self.shape)]

    @classmethod
    def from_wire(cls, x) -> TensorMeta:
        name, dtype, shape = x
        return cls(str(name), str(dtype), tuple(int(s) for s in shape))


def dtype_from_name(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype name {name!r}")
    return dt


def metas_of(items: Sequence[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    return [TensorMeta(n, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in items]


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_buckets(metas: Sequence[TensorMeta], bucket_bytes: int) -> list[list[tuple[int, int]]]:
    """Group tensors, in order, into buckets of at most ``bucket_bytes`` bytes.

    Returns one list per bucket of ``(tensor index, byte offset in the bucket)``; a tensor larger than
    ``bucket_bytes`` gets a bucket of its own. Pure and deterministic: sender and receivers call it on the
    same metadata and get the same plan.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    used = 0
    for i, m in enumerate(metas):
        size = _aligned(m.nbytes)
        if cur and used + size > bucket_bytes:
            buckets.append(cur)
            cur, used = [], 0
        cur.append((i, used))
        used += size
    if cur:
        buckets.append(cur)
    return buckets


def bucket_nbytes(metas: Sequence[TensorMeta], bucket: list[tuple[int, int]]) -> int:
    i, off = bucket[-1]
    return _aligned(off + metas[i].nbytes)


class BucketSender:
    """Trainer side (rank 0): packs tensors into byte buckets and broadcasts them."""

    def __init__(self, pg, metas: Sequence[TensorMeta], bucket_bytes: int, device: torch.device, timeout_s: float,
                 ipc: IpcChannel | None = None):
        self.pg, self.metas, self.device, self.timeout_s = pg, list(metas), device, timeout_s
        self.ipc = ipc  # same-device workers: each bucket handed over by IPC handle (pg may then be None)
        self.plan = plan_buckets(self.metas, bucket_bytes)

    def pack(self, tensors: Iterable[torch.Tensor | tuple[str, torch.Tensor]]) -> Iterator[tuple[int, torch.Tensor]]:
        """Fill the byte buckets in order from ``tensors`` (see :meth:`send`); yields ``(index, bucket)`` as each
        is full. No communication: :meth:`send` broadcasts what this yields, and the weight-sync benchmark times
        it alone. One buffer serves every bucket (no allocation, and on CPU no fresh pages to fault in, per
        bucket): use each yielded bucket before asking for the next."""
        it = iter(tensors)
        sizes = [bucket_nbytes(self.metas, bucket) for bucket in self.plan]
        whole = torch.empty(max(sizes, default=0), dtype=torch.uint8, device=self.device)
        for b, bucket in enumerate(self.plan):
            buf = whole[: sizes[b]]
            for i, off in bucket:
                meta = self.metas[i]
                t = checked_tensor(next(it, None), meta, i)
                dst = buf[off : off + meta.nbytes]
                if isinstance(t, HFTensor):  # TP-shard pieces: written straight into the bucket, one copy
                    t.write_into(dst.view(dtype_from_name(meta.dtype)).view(meta.shape))
                else:
                    dst.copy_(t.detach().to(self.device).contiguous().reshape(-1).view(torch.uint8))
            yield b, buf

    def send(self, tensors: Iterable[torch.Tensor | tuple[str, torch.Tensor]],
             on_bucket: Callable[[int, int], None] | None = None) -> int:
        """Broadcast ``tensors`` (matching the metadata, in order); returns the bytes sent.

        ``tensors`` may be a lazy iterator (of tensors or ``(name, tensor)`` pairs; a tensor may be an ``HFTensor``
        of TP-shard pieces, see ``model_io.iter_hf_tensors(lazy=True)``): it is consumed one bucket
        at a time, so the sender holds at most one bucket plus the tensor being packed. Each tensor is checked
        against its metadata entry (name, shape, dtype) as it arrives. ``on_bucket(index, nbytes)`` is called
        after each bucket went out (progress logging; tests use it to kill a peer mid-sync).
        """
        total = 0
        for b, buf in self.pack(tensors):
            what = f"bucket {b + 1}/{len(self.plan)}"
            if self.pg is not None:
                collective_with_timeout(self.pg, "broadcast", buf, self.timeout_s, what)
            if self.ipc is not None:  # returns once every same-device worker copied the bucket out: buf is free
                self.ipc.send(buf, what)
            total += buf.numel()
            if on_bucket is not None:
                on_bucket(b, buf.numel())
        return total


def checked_tensor(item, meta: TensorMeta, i: int) -> torch.Tensor:
    """The tensor of ``item`` (a tensor or a ``(name, tensor)`` pair) if it fits metadata entry ``i``."""
    if item is None:
        raise WeightSyncValidationError(f"sync: the tensor stream ended at entry {i} ({meta.name}); metadata lists more")
    name, t = item if isinstance(item, tuple) else (meta.name, item)
    got = (name, str(t.dtype).removeprefix("torch."), tuple(t.shape))
    if got != (meta.name, meta.dtype, tuple(meta.shape)):
        raise WeightSyncValidationError(f"sync: tensor {i} is {got}, metadata says {(meta.name, meta.dtype, meta.shape)}")
    return t


class BucketReceiver:
    """Engine-worker side: receives the buckets and yields ``(hf_name, tensor)`` as each bucket arrives."""

    def __init__(self, pg, metas: Sequence[TensorMeta], bucket_bytes: int, device: torch.device, timeout_s: float,
                 ipc: bool = False):
        self.pg, self.metas, self.device, self.timeout_s = pg, list(metas), device, timeout_s
        # ipc: pg is this worker's IpcChannel group; each bucket is copied out of the sender's shared buffer
        self.channel = IpcChannel(pg, timeout_s) if ipc else None
        self.plan = plan_buckets(self.metas, bucket_bytes)

    def _fill(self, buf: torch.Tensor, what: str) -> None:
        if self.channel is not None:
            self.channel.recv_into(buf, what)
        else:
            collective_with_timeout(self.pg, "broadcast", buf, self.timeout_s, what)

    def receive(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Lazily receive bucket by bucket, in memory bounded by the bucket size, not the model size.

        Meant for a consumer that loads as it goes (``WeightSyncWorkerExtension.weight_sync_receive`` always
        streams), which may keep what it is given for a while: vLLM's layerwise reload holds a fused module's
        parts (q/k/v of ``qkv_proj``, gate/up of ``gate_up_proj``) until the module's last part arrived,
        possibly a bucket later. A view would pin its whole bucket for that long (measured with vLLM 0.32: 3
        buckets alive at once), so the tensors of a multi-tensor bucket are yielded as copies and one buffer
        serves all those buckets (then: one bucket plus the parts vLLM holds, 1.7 buckets in the same
        measurement); a tensor bigger than a bucket travels alone, in a fresh buffer yielded as is.
        ``tests/gpu_readiness/test_weight_sync_streaming.py`` measures the peak.
        """
        sizes = [bucket_nbytes(self.metas, bucket) for bucket in self.plan]
        shared_size = max((s for s, bucket in zip(sizes, self.plan) if len(bucket) > 1), default=0)
        shared = None
        for b, bucket in enumerate(self.plan):
            alone = len(bucket) == 1
            if alone:
                buf = torch.empty(sizes[b], dtype=torch.uint8, device=self.device)
            else:
                if shared is None:
                    shared = torch.empty(shared_size, dtype=torch.uint8, device=self.device)
                buf = shared[: sizes[b]]
            self._fill(buf, f"bucket {b + 1}/{len(self.plan)}")
            for i, off in bucket:
                m = self.metas[i]
                t = buf[off : off + m.nbytes].view(dtype_from_name(m.dtype)).view(m.shape)
                yield m.name, (t if alone else t.clone())
            del buf, t  # a lone tensor's buffer: the consumer's reference, if it kept one, is the only one left


# ---------------------------------------------------------------------------------------------- orchestration


@dataclass
class SyncStats:
    """Timings of one sync (for the RLVR metrics: time in sync)."""

    bytes: int
    buckets: int
    tensors: int
    seconds: float
    """Wall time from the first byte packed to the engines' prefix caches reset."""
    metadata_sent: bool

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 2**20 / max(self.seconds, 1e-9)


def _raise_worker_errors(per_engine: list, what: str) -> None:
    """Worker methods report failures as "error: Type: message" strings (raising would kill vLLM's core)."""
    errors = [r for workers in per_engine for r in (workers or []) if isinstance(r, str) and r.startswith("error:")]
    if errors:
        cls = WeightSyncTimeout if any("WeightSyncTimeout" in e for e in errors) else WeightSyncError
        raise cls(f"{what}: {len(errors)} engine worker(s) failed: " + " | ".join(errors[:4]))


def _wait(futures: list[cf.Future], timeout_s: float, what: str) -> list:
    done, pending = cf.wait(futures, timeout=timeout_s)
    if pending:
        raise WeightSyncTimeout(f"{what}: {len(pending)} of {len(futures)} engine RPCs did not finish within {timeout_s:g}s")
    out = []
    for f in futures:
        e = f.exception()
        if e is not None:
            if isinstance(e, WeightSyncError):
                raise e
            raise WeightSyncError(f"{what}: engine RPC failed: {type(e).__name__}: {e}") from e
        out.append(f.result())
    _raise_worker_errors(out, what)
    return out


def own_sync_group(engine, bucket_bytes: int) -> "WeightSyncGroup":
    """A connected group of this process (rank 0) and one engine's workers, for an engine's own
    ``update_weights`` (``VLLMEngine``, ``EngineProcess``): gloo with CPU buffers even on GPU, because rank 0 may
    share a GPU with the workers, which NCCL forbids."""
    group = WeightSyncGroup([engine], bucket_bytes=bucket_bytes, backend="gloo", device=torch.device("cpu"))
    group.connect()
    return group


class WeightSyncGroup:
    """Pushes trainer weights (HF names, full tensors) to one or more vLLM engines by broadcast.

    ``engines`` are objects with ``num_workers`` and ``rpc_async(method, *args, timeout=...) -> Future``
    (:class:`~megatron_tulu.rollout.vllm_engine.VLLMEngine`). Call :meth:`connect` once, then :meth:`sync`
    after every optimizer step, and :meth:`close` at the end.

    Stale engines: when a sync fails after the workers began loading (always streamed: their weights are then
    half-updated), the group sets ``stale`` and each engine's ``weights_stale`` attribute to the reason; an
    engine's ``generate`` refuses while it is set (:func:`refuse_if_stale`; ``RayEngineGroup`` checks
    :meth:`check_fresh`). The next :meth:`sync` tears the broken group down, forms a new one (with the version
    handshake), resends the metadata and the full set of tensors, and clears both marks once it succeeded.

    ``ipc=True`` (colocated engines): workers whose :func:`device_key` equals this process's get the buckets through
    an :class:`IpcChannel` (a gloo group of rank 0 and them) instead of the broadcast, which NCCL cannot do to a
    rank on its own device; the others stay on the broadcast group. ``members`` then says who got which.
    """

    def __init__(
        self,
        engines: Sequence,
        bucket_bytes: int = 256 * 2**20,
        timeout_s: float = 300.0,
        host: str = "127.0.0.1",
        port: int | None = None,
        backend: str | None = None,
        device: torch.device | None = None,
        load_timeout_s: float = 600.0,
        ipc: bool = False,
    ):
        from megatron_tulu import platform
        from megatron_tulu.parallel import free_port

        self.engines = list(engines)
        self.bucket_bytes = int(bucket_bytes)
        self.timeout_s = float(timeout_s)
        self.load_timeout_s = float(load_timeout_s)  # after the last byte: the workers' reload_weights
        self.host = host
        self._fixed_port = port  # None: a fresh free port for every group formed (a resync forms a new one)
        self.port = port or free_port()
        self.backend = backend or platform.backend()
        self.device = device or (platform.device() if self.backend == "nccl" else torch.device("cpu"))
        self.world_size = 1 + sum(e.num_workers for e in self.engines)
        self.key = f"{self.host}:{self.port}"  # names this group's state in the workers (several may coexist)
        self.pg = None
        self.ipc = bool(ipc)
        self.ipc_pg = None  # the IpcChannel group (rank 0 + same-device workers), when there are any
        self.members: dict[str, list[tuple[int, int]]] = {"broadcast": [], "ipc": []}
        """(engine index, worker rank) per transport, set by :meth:`connect`."""
        self._devices: list[list[str | None]] = []  # per engine, per worker rank: its device_key (handshake)
        self._metas: list[TensorMeta] | None = None
        self.stale: str | None = None
        """Why the engines' weights are half-updated (a sync failed midway), or None."""

    def _rpc_all(self, method: str, *args) -> list[cf.Future]:
        # no vLLM-side RPC timeout: its expiry is fatal to the engine core. The workers bound their own
        # waits (every collective has timeout_s) and this side bounds its wait on the futures (_wait).
        return [e.rpc_async(method, *args, timeout=None) for e in self.engines]

    def check_nccl_versions(self) -> dict[str, str | None]:
        """The handshake: every engine worker's NCCL version against this process's, before anyone joins;
        raises :class:`WeightSyncError` naming the versions on a mismatch. Returns ``{member: version}``."""
        futures = self._rpc_all("weight_sync_versions", self.backend)
        per_engine = _wait(futures, self.timeout_s + 5, "version handshake")
        versions = {"trainer (rank 0)": local_nccl_version(self.backend)}
        offset = 1
        self._devices = []
        for k, (e, workers) in enumerate(zip(self.engines, per_engine)):
            devices = [None] * e.num_workers
            for w in workers:
                member = f"engine {k} worker {w['rank']} (rank {offset + int(w['rank'])}, torch {w['torch']})"
                versions[member] = w["nccl"]
                if 0 <= int(w["rank"]) < e.num_workers:
                    devices[int(w["rank"])] = w.get("device")
            self._devices.append(devices)
            offset += e.num_workers
        check_nccl_versions(versions)
        return versions

    def connect(self) -> None:
        """Form the groups: version handshake, then every engine worker joins the group its entry of a per-worker plan
        ``{rank: [transport, port, group rank, group size, backend]}`` names (one RPC per engine) while this process
        joins each group as rank 0. Without ``ipc`` every worker is on the broadcast group, engine by engine in worker
        order; with it the workers on this process's device are on the IPC group instead."""
        from megatron_tulu.parallel import free_port

        self.check_nccl_versions()
        mine = None
        if self.ipc:
            mine = device_key()
            start_shm_manager()  # before any socket of the groups below exists (see there)
        members = {"broadcast": [], "ipc": []}
        for k, devices in enumerate(self._devices):
            for w, dev in enumerate(devices):
                members["ipc" if mine is not None and dev == mine else "broadcast"].append((k, w))
        self.members = members
        if members["ipc"]:
            self.ipc_port = free_port()
        # world_size counts rank 0 and every worker: those not on the IPC group are the broadcast group's
        sizes = {"broadcast": self.world_size - len(members["ipc"]), "ipc": 1 + len(members["ipc"])}
        ports = {"broadcast": self.port, "ipc": getattr(self, "ipc_port", None)}
        backends = {"broadcast": self.backend, "ipc": "gloo"}
        futures = []
        for k, e in enumerate(self.engines):
            plan = {}
            for t, m in members.items():
                for r, (kk, w) in enumerate(m):
                    if kk == k:
                        plan[str(w)] = [t, ports[t], 1 + r, sizes[t], backends[t]]
            futures.append(e.rpc_async("weight_sync_init", self.key, self.host, self.timeout_s, plan,
                                       timeout=None))  # see _rpc_all
        joins = [(sizes[t], ports[t], backends[t], attr) for t, attr in (("broadcast", "pg"), ("ipc", "ipc_pg"))
                 if members[t]]
        self._join(joins, futures)
        if self.ipc:
            log.info("weight sync: %d worker(s) by broadcast (%s), %d on this device by IPC handle",
                     len(members["broadcast"]), self.backend, len(members["ipc"]))

    def _join(self, joins: list[tuple[int, int, str, str]], futures: list[cf.Future]) -> None:
        """Join each ``(world size, port, backend, attribute)`` group as rank 0 while the workers' RPCs join."""
        try:
            for world, port, backend, attr in joins:
                setattr(self, attr, init_stateless_group(self.host, port, 0, world, backend, self.timeout_s))
        except WeightSyncError:
            cf.wait(futures, timeout=2 * self.timeout_s + 10)  # the workers give up after their own timeout
            raise
        _wait(futures, self.timeout_s + 5, "connect")

    def check_fresh(self) -> None:
        """Raise :class:`WeightSyncStale` while the engines hold half-updated weights."""
        _refuse_stale(self.stale)

    def _mark_stale(self, err: BaseException, futures: list[cf.Future]) -> None:
        self.stale = (f"a weight sync failed after the engines began loading ({type(err).__name__}: {err}); "
                      "their weights are half-updated")
        self._metas = None  # the next sync resends the metadata with the full set of tensors
        for e in self.engines:
            e.weights_stale = self.stale
        for pg in (self.pg, self.ipc_pg):
            if pg is not None:
                pg.abort()  # the workers' pending receives fail now rather than at their timeout
        cf.wait(futures, timeout=self.timeout_s + 5)  # let their receive RPCs end before the next sync
        log.error("weight sync: %s; the next sync forms a new group and resends everything", self.stale)

    def _reform(self) -> None:
        """After a failed sync: drop the broken group on both sides and form a new one."""
        from megatron_tulu.parallel import free_port

        try:
            _wait(self._rpc_all("weight_sync_close", self.key), self.timeout_s + 5, "close (before a full resync)")
        except WeightSyncError as e:
            log.warning("weight-sync close before the resync: %s", e)
        self._shutdown_groups()
        self.port = self._fixed_port or free_port()
        self.key = f"{self.host}:{self.port}"
        self.connect()

    def sync(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        on_bucket: Callable[[int, int], None] | None = None,
        metas: Sequence[TensorMeta] | None = None,
    ) -> SyncStats:
        """Broadcast ``(hf_name, tensor)`` pairs to all engines and load them; returns timings.

        ``metas``: the metadata of ``named_tensors`` in order, known up front (``model_io.hf_tensor_metas``);
        then ``named_tensors`` is consumed lazily, bucket by bucket, and this process never holds more than a
        bucket of it (the trainer's gather streams straight into the broadcast). Without ``metas`` the pairs are
        collected first to read it. The workers always load bucket by bucket, so their memory does not grow
        with the model; if this sync fails once they started, the engines are marked stale (see the class doc)
        and the next call resyncs everything. ``on_bucket(index, nbytes)``: progress callback.
        """
        if self.stale:
            self._reform()
        if self.pg is None and self.ipc_pg is None:
            raise WeightSyncError("WeightSyncGroup.sync called before connect()")
        t0 = time.perf_counter()
        if metas is None:
            items = [(n, t) for n, t in named_tensors]
            metas = metas_of(items)
        else:
            items, metas = named_tensors, [m if isinstance(m, TensorMeta) else TensorMeta.from_wire(m) for m in metas]
        if not metas:
            raise WeightSyncValidationError("sync: no tensors given")
        sent_meta = metas != self._metas
        if sent_meta:
            wire = [m.to_wire() for m in metas]
            futures = [e.rpc_async("weight_sync_set_metadata", self.key, wire, self.bucket_bytes, timeout=None) for e in self.engines]
            per_engine = _wait(futures, self.timeout_s + 5, "metadata")  # [engine][worker] -> list of problems
            problems = [p for workers in per_engine for r in workers for p in (r or [])]
            if problems:
                self._metas = None
                raise WeightSyncValidationError("sync refused before loading: " + "; ".join(sorted(set(problems))[:10]))
            self._metas = metas
        ipc = IpcChannel(self.ipc_pg, self.timeout_s) if self.ipc_pg is not None else None
        sender = BucketSender(self.pg, metas, self.bucket_bytes, self.device, self.timeout_s, ipc=ipc)
        futures = self._rpc_all("weight_sync_receive", self.key)
        try:
            nbytes = sender.send(items, on_bucket)
            _wait(futures, self.timeout_s + self.load_timeout_s, "receive/load")
        except BaseException as e:  # the workers began loading: whatever failed, their weights are half-updated
            self._mark_stale(e, futures)
            raise
        for e in self.engines:
            e.reset_prefix_cache()
        self.stale = None
        for e in self.engines:
            e.weights_stale = None
        return SyncStats(nbytes, len(sender.plan), len(metas), time.perf_counter() - t0, sent_meta)

    def _shutdown_groups(self) -> None:
        for attr in ("pg", "ipc_pg"):
            pg = getattr(self, attr)
            if pg is not None:
                pg.shutdown()
                setattr(self, attr, None)

    def close(self) -> None:
        """Tell the workers to drop their groups and shut this side's down. Never raises (engines shutting down call
        it, and an engine may be dead already): a failure is logged and the groups are shut down regardless."""
        if self.pg is None and self.ipc_pg is None:
            return
        try:
            _wait(self._rpc_all("weight_sync_close", self.key), self.timeout_s + 5, "close")
        except Exception as e:  # noqa: BLE001 - see above
            log.warning("closing the weight-sync group failed: %s", e)
        self._shutdown_groups()


def check_probe_logprobs(
    engine,
    reference: Callable[[list[list[int]], list[list[int]]], list[list[float]]],
    probe_prompts: list[list[int]],
    max_new_tokens: int = 8,
    atol: float = 1e-3,
) -> float:
    """Post-sync check: engine greedy logprobs on ``probe_prompts`` vs ``reference(prompts, responses)``.

    ``reference`` returns, per prompt, the logprob of each response token under the trainer's weights
    (``log_softmax(logits)``, the greedy convention). Returns the max |difference|; raises
    :class:`WeightSyncMismatch` if it exceeds ``atol`` (the usual symptom of a broken sync or layout).
    """
    from megatron_tulu.rollout.base import SamplingConfig

    gens = engine.generate(probe_prompts, SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens))
    responses = [g.token_ids[0] for g in gens]
    ref = reference(probe_prompts, responses)
    worst = 0.0
    for i, (g, r) in enumerate(zip(gens, ref)):
        if len(r) != len(g.logprobs[0]):
            raise WeightSyncMismatch(f"probe {i}: reference gave {len(r)} logprobs for {len(g.logprobs[0])} tokens")
        for a, b in zip(g.logprobs[0], r):
            worst = max(worst, abs(float(a) - float(b)))
    if not worst <= atol:
        raise WeightSyncMismatch(f"engine vs reference logprobs differ by {worst:.3g} > atol {atol:g} on the probe batch")
    return worst
