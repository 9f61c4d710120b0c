"""GPU and interconnect numbers the planner assumes (vendor datasheets; bus bandwidths are typical NCCL
``busbw`` on DGX-class nodes, not peaks). Override any field with ``dataclasses.replace``."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_tulu.plan.memory import GIB


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator model and the links around it."""

    name: str
    """Key used on the command line, e.g. ``h100-80gb``."""
    memory_bytes: float
    """Memory the CUDA allocator can see (what ``torch.cuda.get_device_properties().total_memory`` says)."""
    bf16_tflops: float
    """Dense BF16 tensor-core peak, TFLOP/s (no sparsity)."""
    fp8_tflops: float
    """Dense FP8 tensor-core peak, TFLOP/s (0 when unsupported)."""
    hbm_gbps: float
    """HBM bandwidth, GB/s (decode is bound by it)."""
    intra_node_busbw_gbps: float
    """NVLink/NVSwitch all-reduce bus bandwidth inside a node, GB/s."""
    inter_node_busbw_gbps: float
    """InfiniBand/RoCE bus bandwidth per GPU across nodes, GB/s (8x400 Gb/s NICs -> ~45)."""
    collective_latency_s: float = 20e-6
    """Fixed cost of one small collective (matters for decode-time TP all-reduces)."""


GPUS: dict[str, GPUSpec] = {
    "h100-80gb": GPUSpec("h100-80gb", 79.1 * GIB, 989.0, 1979.0, 3350.0, 450.0, 45.0),
    "h200": GPUSpec("h200", 139.8 * GIB, 989.0, 1979.0, 4800.0, 450.0, 45.0),
    "a100-80gb": GPUSpec("a100-80gb", 79.2 * GIB, 312.0, 0.0, 2039.0, 230.0, 22.0),
}


def get_gpu(name: str) -> GPUSpec:
    """The spec called ``name``; unknown names raise with the known ones."""
    try:
        return GPUS[name]
    except KeyError:
        raise ValueError(f"unknown --gpu {name!r}; known: {', '.join(GPUS)}") from None


def gpu_from_device_name(device_name: str) -> GPUSpec | None:
    """The spec for a ``torch.cuda.get_device_name()`` string ("NVIDIA H100 80GB HBM3" -> h100-80gb), or None."""
    name = device_name.upper()
    for key, marker in (("h200", "H200"), ("h100-80gb", "H100"), ("a100-80gb", "A100")):
        if marker in name:
            return GPUS[key]
    return None
