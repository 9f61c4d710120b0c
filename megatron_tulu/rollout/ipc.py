"""Same-device weight sync: a bucket handed to an engine worker on the trainer's own device by IPC handle.

NCCL refuses two ranks on one device, so a colocated engine's workers (``rlvr.engine_placement=colocated``) get each
bucket as a handle to the trainer's bucket buffer (``torch.multiprocessing.reductions.reduce_tensor``: CUDA IPC on
GPU; a shared-memory file on CPU, which is how the CPU tests run this same path) over a small gloo group, copy it
into their own buffer and acknowledge; the loading is then the broadcast path's. ``weight_sync.WeightSyncGroup``
uses :class:`IpcChannel` for the workers whose :func:`device_key` is the trainer's.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import threading

import torch

from megatron_tulu.rollout.sync_group import WeightSyncError, collective_with_timeout

IPC_MSG_BYTES = 8192  # one pickled handle (CUDA: ~0.5 KiB; CPU shared-memory file: ~0.3 KiB), length-prefixed
_SHARING_LOCK = threading.Lock()


def device_key() -> str:
    """Which physical device this process computes on: ``cuda:<uuid>`` of the current CUDA device, else
    ``cpu@<host>``. Trainer and engine workers compare keys to find the workers that share the trainer's device
    (CUDA indices differ between processes with different ``CUDA_VISIBLE_DEVICES``; the UUID does not)."""
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_properties(torch.cuda.current_device()).uuid}"
    return f"cpu@{socket.gethostname()}"


@contextlib.contextmanager
def _file_system_sharing():
    """CPU tensors pickle as a shared-memory file name (``file_system``), plain data another process can open;
    the default ``file_descriptor`` strategy needs a live fd hand-over between related processes."""
    import torch.multiprocessing as tmp

    with _SHARING_LOCK:
        old = tmp.get_sharing_strategy()
        tmp.set_sharing_strategy("file_system")
        try:
            yield
        finally:
            tmp.set_sharing_strategy(old)


def share_tensor(t: torch.Tensor) -> bytes:
    """An IPC handle of ``t`` as bytes: ``torch.multiprocessing.reductions.reduce_tensor`` through the
    ``ForkingPickler`` (CUDA: ``cudaIpcGetMemHandle`` of its block plus offset, and an event the opener waits on;
    CPU: ``t``'s storage moved into shared memory once, then its file name). No bytes of ``t`` are copied; the
    receiver (:func:`open_shared`) sees ``t``'s memory, including later writes to it."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401 - registers torch's reductions with the ForkingPickler
    from torch.multiprocessing.reductions import reduce_tensor

    if t.is_cuda:
        return bytes(ForkingPickler.dumps(reduce_tensor(t)))
    with _file_system_sharing():
        return bytes(ForkingPickler.dumps(reduce_tensor(t)))


def start_shm_manager() -> None:
    """Share a tiny CPU tensor once, so torch's ``torch_shm_manager`` (which ``share_tensor`` needs on CPU, and CUDA
    IPC for its reference counts) is running BEFORE a group's sockets exist. It is forked from this process on first
    use and would inherit every socket open then: a group formed before it could no longer be aborted by closing
    its sockets (the manager keeps them open, and the peers wait out their timeouts instead of failing at once)."""
    share_tensor(torch.zeros(1))


def open_shared(blob: bytes) -> torch.Tensor:
    """The tensor behind a :func:`share_tensor` handle, in this process (no copy). A CUDA handle is opened on
    this process's current device: the caller only opens handles of its own physical device (:func:`device_key`),
    whose index may differ from the sender's under another ``CUDA_VISIBLE_DEVICES``."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    fn, args = pickle.loads(blob)
    if fn is rebuild_cuda_tensor:
        args = list(args)
        args[6] = torch.cuda.current_device()  # storage_device
    return fn(*args)


class IpcChannel:
    """Bucket hand-over to the workers on the sender's own device, over a gloo group (rank 0 = trainer).

    Per bucket: rank 0 broadcasts the handle of its packed bucket (:func:`share_tensor`, ``IPC_MSG_BYTES``
    fixed-size message), every worker opens it and copies the bucket into its own buffer, then all ranks sum
    their status (0 = copied): that all-reduce is the acknowledgement after which rank 0 may overwrite the buffer
    with the next bucket. A worker that failed reports 1, and both sides raise.
    """

    def __init__(self, pg, timeout_s: float):
        self.pg, self.timeout_s = pg, float(timeout_s)

    def send(self, buf: torch.Tensor, what: str) -> None:
        blob = share_tensor(buf)
        if len(blob) + 8 > IPC_MSG_BYTES:
            raise WeightSyncError(f"{what}: IPC handle of {len(blob)} bytes does not fit the {IPC_MSG_BYTES}-byte message")
        if buf.is_cuda:  # the packing copies are done before a worker reads (the handle's event orders it too)
            torch.cuda.current_stream(buf.device).synchronize()
        msg = torch.zeros(IPC_MSG_BYTES, dtype=torch.uint8)
        msg[:8] = torch.tensor([len(blob)], dtype=torch.int64).view(torch.uint8)
        msg[8: 8 + len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        collective_with_timeout(self.pg, "broadcast", msg, self.timeout_s, f"{what} (IPC handle)")
        status = torch.zeros(1, dtype=torch.int64)
        collective_with_timeout(self.pg, "allreduce", status, self.timeout_s, f"{what} (IPC acknowledgement)")
        if int(status):
            raise WeightSyncError(f"{what}: {int(status)} same-device worker(s) could not open or copy the IPC bucket")

    def recv_into(self, buf: torch.Tensor, what: str) -> None:
        msg = torch.empty(IPC_MSG_BYTES, dtype=torch.uint8)
        collective_with_timeout(self.pg, "broadcast", msg, self.timeout_s, f"{what} (IPC handle)")
        status, error = torch.zeros(1, dtype=torch.int64), None
        try:
            n = int(msg[:8].view(torch.int64))
            shared = open_shared(bytes(msg[8: 8 + n].numpy()))
            if shared.numel() != buf.numel():
                raise WeightSyncError(f"{what}: IPC bucket has {shared.numel()} bytes, expected {buf.numel()}")
            buf.copy_(shared)
            if buf.is_cuda:
                torch.cuda.current_stream(buf.device).synchronize()
            del shared
        except Exception as e:  # acknowledge anyway (with the failure), so the sender does not wait out its timeout
            status[0], error = 1, e
        collective_with_timeout(self.pg, "allreduce", status, self.timeout_s, f"{what} (IPC acknowledgement)")
        if error is not None:
            raise WeightSyncError(f"{what}: opening the IPC bucket failed: {type(error).__name__}: {error}") from error
