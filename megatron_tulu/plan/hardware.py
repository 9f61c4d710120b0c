"""GPU and interconnect numbers, and the efficiencies, the planner assumes. Each constant lives here once.

Hardware (:class:`GPUSpec`): vendor datasheet peaks; bus bandwidths are typical NCCL ``busbw`` on DGX-class nodes,
not link peaks; host links are what a pinned ``cudaMemcpy`` reaches. Efficiencies (:data:`EFFICIENCY`): what
fraction of a peak each kind of work reaches. They were fixed, with the reasons given beside each, before the
planner was compared with published measurements (``benchmarks/planner_calibration.md``) and are not tuned per
row. Override any field with ``dataclasses.replace``."""

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
    host_link_gbps: float = 25.0
    """Host <-> GPU copy bandwidth per GPU, GB/s, pinned memory (PCIe Gen5 x16: 64 GB/s raw, ~50 measured
    one-way on an idle link; DGX nodes share each switch between 2 GPUs and the NICs: 25 assumed). Used for
    offloading trainer state and sleeping/waking a colocated engine."""


@dataclass(frozen=True)
class Efficiencies:
    """Fractions of a peak that each kind of work reaches (fixed; see the module docstring)."""

    train_mfu: float = 0.40
    """Model FLOPs (recompute not counted) over the tensor-core peak in megatron training: inside the 38-47 %
    Megatron-LM/Megatron-Bridge report for dense Llama at scale, at the low end for short or packed rows."""
    hbm_efficiency: float = 0.80
    """Decode: fraction of the HBM peak that weight/KV streaming reaches (large GEMVs and paged attention run at
    80-90 % of peak on H100; the lower end since small KV blocks are read too)."""
    decode_compute_efficiency: float = 0.50
    """Decode GEMMs at a few hundred rows (the batch) over the BF16 peak, when decode turns compute-bound."""
    prefill_mfu: float = 0.50
    """Prefill (one forward over the prompts) over the BF16 peak: long GEMMs, no backward."""
    decode_step_overhead_s: float = 1e-3
    """Per decode step outside the GPU kernels' roofline: scheduler, sampler, CUDA-graph launch (vLLM V1)."""
    engine_runtime_overhead_gib: float = 3.0
    """vLLM's non-KV, non-weight memory per GPU (CUDA graphs, activations, sampler): a few GiB at these widths."""
    max_num_seqs: int = 256
    """vLLM's cap on sequences decoded at once per engine (its ``max_num_seqs`` default)."""


EFFICIENCY = Efficiencies()
"""The one set of efficiencies every estimate uses unless a caller passes another."""


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
