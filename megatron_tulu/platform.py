"""The only module that knows whether there is a GPU.

megatron-core assumes CUDA everywhere (``torch.cuda.current_device()``, ``device="cuda"``, CUDA RNG state,
``torch.cuda.synchronize``). On a machine without a GPU, :func:`setup` installs a small shim so that
megatron-core runs unchanged on CPU over gloo: CUDA device requests are mapped to CPU, the CUDA RNG
functions act on the CPU generator, streams and events become one in-order CPU stream, and synchronisation
is a no-op. On a GPU the shim does nothing.

Nothing else in the project may special-case the CPU: ask :func:`device`, :func:`backend` or
:func:`has_gpu` here instead.
"""

from __future__ import annotations

import os
import warnings

import torch

_STATE: dict = {"device": None, "mode": None}


def has_gpu() -> bool:
    """True when a real CUDA device is usable (and the shim is not forcing CPU)."""
    if _STATE["device"] is not None:
        return _STATE["device"] == "cuda"
    return torch.cuda.is_available() and os.environ.get("MEGATRON_TULU_DEVICE", "") != "cpu"


def visible_gpus(environ: dict | None = None) -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries: the variable's list when set (empty: none), else
    ``0..n-1`` by torch's count, which asks NVML and starts no CUDA context (the variable can still be narrowed)."""
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def device() -> torch.device:
    """The device model tensors live on: ``cuda:<local rank>`` on GPU, ``cpu`` otherwise."""
    if has_gpu():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def backend() -> str:
    """The torch.distributed backend for trainer collectives: nccl on GPU, gloo on CPU."""
    return "nccl" if has_gpu() else "gloo"


def quiet_megatron_import() -> None:
    """Silence import-time noise from megatron-core that says nothing about our runs."""
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    for pattern in (
        ".*Transformer Engine and Apex are not installed.*",
        ".*Apex is not installed.*",
        ".*full scope is deprecated.*",
        ".*CUDA_DEVICE_MAX_CONNECTIONS.*",
        ".*torch.distributed._sharded_tensor.*",
        ".*TypedStorage is deprecated.*",
        ".*Failed to import.*transformer_engine.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, int) and not isinstance(dev, bool):
        return True
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return False


class _CudaToCpu(torch.overrides.TorchFunctionMode):
    """Rewrites ``device="cuda"`` (and integer devices) to CPU in factory calls, ``.to`` and ``.cuda``, and drops
    ``pin_memory=True`` (a staging buffer for host-to-GPU copies; there is no pinned allocator without a GPU)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        name = getattr(func, "__name__", "")
        if name == "cuda":
            return args[0]
        if name == "to" and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


_ORIG_TYPE = torch.Tensor.type


def _cuda_type(self, dtype=None, non_blocking=False, **kwargs):
    # megatron's distributed optimizer and grad clipping assert "torch.cuda.FloatTensor"-style names.
    if dtype is None and not kwargs:
        name = _ORIG_TYPE(self)
        return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
    return _ORIG_TYPE(self, dtype, non_blocking, **kwargs)


class _CpuStream:
    """Stands in for ``torch.cuda.Stream``: CPU work is issued in program order, so every wait is already met."""

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None):
        event = event or _CpuEvent()
        event.record(self)
        return event

    def query(self) -> bool:
        return True

    def __enter__(self):  # ``with torch.cuda.stream(s):`` and ``with s:``
        return self

    def __exit__(self, *exc) -> None:
        return None


class _CpuEvent:
    """Stands in for ``torch.cuda.Event``; ``elapsed_time`` is wall time in ms, like CUDA's timing events."""

    def __init__(self, *args, **kwargs):
        self._t = None

    def record(self, stream=None) -> None:
        import time

        self._t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "_CpuEvent") -> float:
        if self._t is None or end._t is None:
            raise RuntimeError("elapsed_time needs both events recorded")
        return (end._t - self._t) * 1000.0


_CPU_STREAM = _CpuStream()


def _seed_cpu(seed: int) -> None:
    # torch.manual_seed would call the (patched) CUDA seeding again and recurse.
    torch.default_generator.manual_seed(int(seed))


def _install_cpu_shim() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.device_count = lambda: 1
    cuda.synchronize = lambda *a, **k: None
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.random.set_rng_state = cuda.set_rng_state
    cuda.manual_seed = _seed_cpu
    cuda.manual_seed_all = _seed_cpu
    cuda.random.manual_seed = _seed_cpu
    cuda.random.manual_seed_all = _seed_cpu
    cuda.set_device = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.reset_peak_memory_stats = lambda *a, **k: None
    torch.Tensor.type = _cuda_type
    # streams and events: megatron overlaps communication on side streams; on CPU they are all one stream
    cuda.Stream = _CpuStream
    cuda.Event = _CpuEvent
    cuda.current_stream = lambda *a, **k: _CPU_STREAM
    cuda.default_stream = lambda *a, **k: _CPU_STREAM
    cuda.stream = lambda stream=None: stream if stream is not None else _CPU_STREAM

    from megatron.core.tensor_parallel import random as mrandom

    # The RNG tracker forks CUDA generator states; on CPU those are the default generator's.
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)

    mode = _CudaToCpu()
    mode.__enter__()  # stays active for the life of the process
    _STATE["mode"] = mode

    # Torch-function modes are thread-local and the autograd engine does not carry them into backward, where
    # megatron's custom Functions allocate too (e.g. the reduce-scatter buffers of sequence parallelism on
    # ``torch.cuda.current_device()``): run every custom backward under the same rewrite.
    from torch.autograd.function import BackwardCFunction

    orig_apply = BackwardCFunction.apply

    def apply_on_cpu(self, *args):
        if any(isinstance(m, _CudaToCpu) for m in torch.overrides._get_current_function_mode_stack()):
            return orig_apply(self, *args)
        with _CudaToCpu():
            return orig_apply(self, *args)

    BackwardCFunction.apply = apply_on_cpu


def setup(device: str = "auto") -> str:
    """Prepare torch + megatron-core for this machine and return the device type in use.

    Args:
        device: ``"auto"`` (GPU when available), ``"cuda"`` or ``"cpu"``. Asking for ``"cuda"`` on a machine
            without one raises. Idempotent: a second call with the same answer does nothing.
    """
    want = device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() and os.environ.get("MEGATRON_TULU_DEVICE") != "cpu" else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA GPU on this machine")
    if want not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    if _STATE["device"] == want:
        return want
    if _STATE["device"] is not None:
        raise RuntimeError(f"platform.setup already ran with device={_STATE['device']!r}; cannot switch to {want!r}")
    quiet_megatron_import()
    if want == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
    else:
        # Triton kernels (kernels/) run in interpreter mode on CPU tensors; must be set before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        _install_cpu_shim()
    _STATE["device"] = want
    return want


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and megatron's model-parallel RNG tracker (same call on CPU and GPU)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if has_gpu():
        torch.cuda.manual_seed_all(seed)


def peak_memory_bytes() -> int:
    """Peak memory of this process: CUDA allocator peak on GPU, resident-set high-water mark on CPU."""
    if has_gpu():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
