"""The weight-sync process group: formation outside torch.distributed's global state, the NCCL version handshake,
and broadcasts that time out as :class:`WeightSyncTimeout` instead of hanging or being killed by NCCL's watchdog.

:mod:`megatron_tulu.rollout.weight_sync` builds the bucket protocol on top of it; both the trainer (rank 0) and
every engine worker (``vllm_worker_ext``) form their end here.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import torch

log = logging.getLogger(__name__)


class WeightSyncError(RuntimeError):
    """Base class of weight-sync failures."""


class WeightSyncTimeout(WeightSyncError):
    """A collective or RPC of the sync did not complete in time (a peer never joined, died or stalled)."""


# ---------------------------------------------------------------------------------------------- NCCL versions


def format_nccl_version(v) -> str:
    """``torch.cuda.nccl.version()`` as ``"2.27.3"``: it is a tuple ``(major, minor, patch[, suffix])`` in
    recent torch and the integer ``NCCL_VERSION_CODE`` in old ones (``21903`` = 2.19.3; before 2.9, ``2708``)."""
    if isinstance(v, int):
        major, rest = (v // 10000, v % 10000) if v >= 10000 else (v // 1000, v % 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    parts = list(v)
    suffix = parts.pop() if parts and isinstance(parts[-1], str) else ""
    return ".".join(str(int(p)) for p in parts) + suffix


def local_nccl_version(backend: str) -> str | None:
    """This process's NCCL version (the libnccl its torch loaded) if ``backend`` is nccl and CUDA is
    available, else None. Called by the trainer and, in the handshake, by every engine worker."""
    if backend != "nccl" or not torch.cuda.is_available():
        return None
    return format_nccl_version(torch.cuda.nccl.version())


def check_nccl_versions(versions: dict[str, str | None]) -> None:
    """Raise :class:`WeightSyncError` unless every member (``{"trainer (rank 0)": "2.27.3", ...}``) reports the
    same NCCL version; the message names each version and its members. All None (gloo) passes."""
    by_version: dict[str | None, list[str]] = {}
    for member, v in versions.items():
        by_version.setdefault(v, []).append(member)
    if len(by_version) <= 1:
        return

    def who(members):
        return ", ".join(members[:3]) + (f" and {len(members) - 3} more" if len(members) > 3 else "")
    if None in by_version:
        missing = by_version.pop(None)
        have = "; ".join(f"{who(m)} NCCL {v}" for v, m in by_version.items())
        raise WeightSyncError(f"weight-sync group over NCCL: {who(missing)} report no NCCL (no CUDA device, or a "
                              f"CPU-only torch) while {have}")
    detail = "; ".join(f"{who(m)}: NCCL {v}" for v, m in sorted(by_version.items()))
    raise WeightSyncError(
        f"NCCL version mismatch in the weight-sync group ({detail}). NCCL refuses to form a communicator across "
        "versions: every member must load the same libnccl (the Dockerfile links /opt/vllm's to the trainer's; "
        "outside the container set LD_LIBRARY_PATH / VLLM_NCCL_SO_PATH so both load one file)")


# ---------------------------------------------------------------------------------------------- group


NCCL_TIMEOUT_MARGIN_S = 60.0


def group_timeout_s(backend: str, wait_s: float) -> float:
    """The timeout the backend's process group is created with, for collectives we wait on for ``wait_s``.

    gloo: ``wait_s`` (a gloo op that times out raises in the waiting thread; its ``work.wait`` ends at the
    group's timeout whatever timeout it is given, so the two must be equal). NCCL: ``2 * wait_s + 60``. The
    NCCL watchdog acts on the group's timeout by tearing the process down (``TORCH_NCCL_ASYNC_ERROR_HANDLING``),
    so it must never fire first: :func:`collective_with_timeout` gives up after ``wait_s``, aborts the group
    and raises :class:`WeightSyncTimeout`, long before the watchdog's deadline.
    """
    if backend == "nccl":
        return 2.0 * float(wait_s) + NCCL_TIMEOUT_MARGIN_S
    return float(wait_s)


def init_stateless_group(host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float):
    """A process group outside torch.distributed's global state (rank 0 hosts the TCPStore).

    Raises :class:`WeightSyncTimeout` if not all ``world_size`` ranks join within ``timeout_s``.
    Same construction as vLLM's ``stateless_init_torch_distributed_process_group``, without importing vLLM;
    the backend's own timeout is :func:`group_timeout_s` (longer than ``timeout_s`` on NCCL).
    """
    from torch.distributed import PrefixStore, TCPStore
    from torch.distributed.distributed_c10d import ProcessGroup

    timeout = timedelta(seconds=timeout_s)
    try:
        store = TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout, wait_for_workers=False)
        prefix = PrefixStore(f"weight_sync/{host}:{port}", store)
        pg = ProcessGroup(prefix, rank, world_size)
        if backend == "gloo":
            from torch.distributed.distributed_c10d import ProcessGroupGloo

            impl = ProcessGroupGloo(prefix, rank, world_size, timeout=timeout)
            btype, dev = ProcessGroup.BackendType.GLOO, torch.device("cpu")
        elif backend == "nccl":
            from torch.distributed.distributed_c10d import ProcessGroupNCCL

            opts = ProcessGroupNCCL.Options()
            opts._timeout = timedelta(seconds=group_timeout_s("nccl", timeout_s))  # > our waits: see there
            impl = ProcessGroupNCCL(prefix, rank, world_size, opts)
            btype, dev = ProcessGroup.BackendType.NCCL, torch.device("cuda")
        else:
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        pg._set_default_backend(btype)
        impl._set_sequence_number_for_group()
        pg._register_backend(dev, btype, impl)
    except ValueError:
        raise
    except Exception as e:  # store/gloo rendezvous errors are RuntimeError/DistStoreError subclasses
        raise WeightSyncTimeout(
            f"weight-sync group {host}:{port}: rank {rank} of {world_size} could not form the group within "
            f"{timeout_s:g}s ({type(e).__name__}: {e})"
        ) from e
    return StatelessGroup(pg, store, backend)


class StatelessGroup:
    """A process group plus its TCPStore (kept alive as long as the group: rank 0 owns the server socket)."""

    def __init__(self, pg, store, backend: str = "gloo"):
        self.pg, self.store, self.backend = pg, store, backend
        self.aborted = False

    def broadcast(self, buf: torch.Tensor, root: int):
        self._check_usable()
        return self.pg.broadcast(buf, root)

    def allreduce(self, t: torch.Tensor):
        """Sum ``t`` over the group, in place."""
        self._check_usable()
        return self.pg.allreduce([t])

    def _check_usable(self) -> None:
        if self.aborted:
            raise WeightSyncError("weight-sync group was aborted after a failed or timed-out collective; "
                                  "a new group must be formed")

    def abort(self) -> None:
        """Give up on the group now, without waiting for in-flight collectives. NCCL: ``abort`` (ncclCommAbort:
        a stuck collective is cancelled, the watchdog stands down). gloo: shut down and drop the group, which
        closes its connections, so the peers' pending ops fail at once instead of at their timeouts."""
        if self.aborted:
            return
        self.aborted = True
        pg, self.pg = self.pg, None
        try:
            if self.backend == "nccl":
                pg.abort()
            else:
                pg.shutdown()
        except Exception as e:  # best effort: the group is unusable either way
            log.debug("process group abort: %s", e)
        del pg

    def shutdown(self) -> None:
        if self.pg is None:
            return
        try:
            self.pg.shutdown()
        except Exception as e:  # a peer may be gone already; nothing left to release on our side
            log.debug("process group shutdown: %s", e)


def _wait_polled(work, timeout_s: float) -> bool:
    """Poll ``work.is_completed()`` until done (True) or ``timeout_s`` passed (False). For NCCL, whose
    ``wait(timeout)`` may block past the timeout or leave the watchdog to act."""
    deadline = time.monotonic() + timeout_s
    pause = 1e-4
    while not work.is_completed():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(2 * pause, 1e-3)  # at most ~1 ms late per bucket
    work.wait()  # completed: re-raises the work's error, if any; NCCL: orders the current stream after it
    return True


def collective_with_timeout(group, op: str, t: torch.Tensor, timeout_s: float, what: str) -> None:
    """``broadcast`` (root 0) or ``allreduce`` (sum) of ``t`` on ``group`` (a :class:`StatelessGroup`) that raises
    :class:`WeightSyncTimeout` naming ``what`` and ``op`` instead of hanging or crashing.

    On expiry or error the group is aborted (``group.abort()``) before raising: a stuck NCCL collective would
    otherwise stay in flight until the watchdog kills the process at the group's timeout, and gloo peers would
    each wait out their own timeout. The work object is dropped before the abort: it holds the gloo context, whose
    sockets close only when the last reference goes, and a peer waiting on this rank (gloo relays a broadcast
    through a tree once there are 4 ranks) must see them close. The group is unusable afterwards; the sync group
    forms a new one."""
    work, error = None, None
    try:
        work = group.broadcast(t, 0) if op == "broadcast" else group.allreduce(t)
        if getattr(group, "backend", None) == "nccl":
            if not _wait_polled(work, timeout_s):
                raise TimeoutError("collective still in flight")
        elif work.wait(timedelta(seconds=timeout_s)) is False:
            raise RuntimeError("wait returned False")
    except Exception as e:  # noqa: BLE001 - every failure aborts the group and raises as a timeout of this op
        error = e
    work = None
    if error is not None:
        abort = getattr(group, "abort", None)
        if abort is not None:
            abort()
        raise WeightSyncTimeout(f"{what}: {op} did not complete within {timeout_s:g}s "
                                f"({type(error).__name__}: {error})") from error
