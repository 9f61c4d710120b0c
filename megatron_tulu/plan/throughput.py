"""FLOPs, communication volume and step-time estimates.

Compute time is ``model FLOPs / (GPUs x peak x MFU)``. The MFU is an assumption (default 0.40, inside the
41-48 % Megatron-LM reports for BF16 at scale) that :func:`load_calibration` replaces with the median MFU of
measured runs (``benchmarks/train_throughput.py --json-out`` writes that file). Communication that megatron
does not overlap (TP collectives, PP sends) is added in full; DP/CP traffic is added times
``(1 - overlap)``. Bus bandwidths come from :mod:`megatron_tulu.plan.hardware`.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from megatron_tulu.models.presets import LlamaPreset
from megatron_tulu.plan.hardware import GPUSpec
from megatron_tulu.plan.memory import params_per_gpu, stage_layers

DEFAULT_MFU = 0.40


def flops_per_token(preset: LlamaPreset, seq: int, causal: bool = True) -> float:
    """Training FLOPs per token (forward + backward): 6N for the matmuls plus attention scores.

    Attention (QK^T and PV) costs 4*L*s*h FLOPs per token forward, 12*L*s*h for fwd+bwd; a causal mask
    halves it (flash attention skips the masked blocks). N includes the output layer (the logits matmul)
    but the input embedding is a lookup, so it is left out.
    """
    n = preset.param_count() - preset.vocab_size * preset.hidden_size * (0 if preset.tie_embeddings else 1)
    attn = 12 * preset.num_layers * seq * preset.hidden_size * (0.5 if causal else 1.0)
    return 6.0 * n + attn


def model_flops_utilization(preset: LlamaPreset, seq: int, tokens_per_s_per_gpu: float, peak_tflops: float) -> float:
    """MFU of a training step: model FLOPs/s per GPU (:func:`flops_per_token`, recompute not counted) over the
    dense BF16 peak. ``tokens_per_s_per_gpu`` counts every token processed (padding included)."""
    return flops_per_token(preset, seq) * tokens_per_s_per_gpu / (peak_tflops * 1e12)


def load_calibration(path: str | Path, gpu: str | None = None, precision: str = "bf16") -> float:
    """Median measured MFU from a JSON results file: a list of records (or ``{"results": [...]}``) with an
    ``mfu`` field, optionally ``gpu`` and ``precision`` to filter on. Records that say ``not_measured`` (FP8
    without TE, a row that ran out of memory: ``benchmarks/train_throughput.py`` writes both) are skipped.
    Raises naming the file if none match."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"calibration file {path}: cannot read JSON ({e})") from None
    records = data.get("results", []) if isinstance(data, dict) else data
    mfus = []
    for i, r in enumerate(records):
        if isinstance(r, dict) and "not_measured" in r and "mfu" not in r:
            continue
        if not isinstance(r, dict) or "mfu" not in r:
            raise ValueError(f"calibration file {path}: record {i} has no 'mfu' field")
        if gpu and r.get("gpu") not in (None, gpu):
            continue
        if r.get("precision", precision) != precision:
            continue
        mfus.append(float(r["mfu"]))
    if not mfus:
        raise ValueError(f"calibration file {path}: no record for gpu={gpu!r} precision={precision!r}")
    return statistics.median(mfus)


def ring_allreduce_bytes(size_bytes: float, n: int) -> float:
    """Bytes each rank sends in a ring all-reduce of ``size_bytes`` over ``n`` ranks."""
    return 0.0 if n <= 1 else 2.0 * (n - 1) / n * size_bytes


def comm_volume(
    preset: LlamaPreset, *, seq: int, micro_batch: int, num_microbatches: int, tp: int, pp: int, cp: int, dp: int,
    recompute: str, grad_dtype_bytes: int = 4,
) -> dict:
    """Bytes each trainer GPU sends per optimizer step, by kind (tp, pp, cp, dp).

    TP (megatron, with or without SP): 2 all-reduce-equivalents per layer forward and 2 backward of the
    bf16 activations [s/cp, b, h]; full recompute repeats the forward ones. PP: one activation send per
    micro-batch forward and one gradient send backward. CP: ring attention passes K and V around the ring
    in forward and their gradients back. DP: reduce-scatter of the grads and all-gather of the bf16 params
    over the data-parallel x context group (distributed optimizer).
    """
    s = seq // cp
    act = 2.0 * s * micro_batch * preset.hidden_size
    layers = stage_layers(preset.num_layers, pp)
    tp_colls = 4 + (2 if recompute == "full" else 0)
    tp_bytes = layers * num_microbatches * tp_colls * ring_allreduce_bytes(act, tp)
    pp_bytes = 0.0 if pp == 1 else 2.0 * num_microbatches * act / tp
    kv = 2.0 * 2 * s * micro_batch * preset.num_query_groups * preset.head_dim / tp
    cp_bytes = 0.0 if cp == 1 else layers * num_microbatches * 3 * (cp - 1) * kv
    n = params_per_gpu(preset, tp, pp)
    shard = dp * cp
    dp_bytes = 0.0 if shard == 1 else (shard - 1) / shard * n * (grad_dtype_bytes + 2)
    return {"tp": tp_bytes, "pp": pp_bytes, "cp": cp_bytes, "dp": dp_bytes}


def train_step_time(
    flops_total: float, gpus: int, gpu: GPUSpec, mfu: float, comm: dict, *, tp: int, pp: int, cp: int,
    num_microbatches: int, gpus_per_node: int, recompute: str, fp8: bool = False, overlap: float = 0.7,
    vpp: int = 1,
) -> dict:
    """Seconds per optimizer step, split into compute, pipeline bubble and exposed communication.

    ``flops_total`` is model FLOPs for the whole step over all GPUs. Full recompute costs one more forward
    (x 4/3); FP8 doubles the peak but the MFU assumption still applies to the BF16-measured efficiency.
    """
    peak = (gpu.fp8_tflops if fp8 and gpu.fp8_tflops else gpu.bf16_tflops) * 1e12
    extra = 4.0 / 3.0 if recompute == "full" else 1.0
    compute = flops_total * extra / (gpus * peak * mfu)
    bubble = compute * (pp - 1) / (num_microbatches * vpp)
    intra, inter = gpu.intra_node_busbw_gbps * 1e9, gpu.inter_node_busbw_gbps * 1e9
    # TP stays inside a node by construction; PP/CP/DP cross nodes once the groups below them fill one.
    t_tp = comm["tp"] / intra
    t_pp = comm["pp"] / (intra if tp * pp <= gpus_per_node else inter)
    t_cp = comm["cp"] / (intra if tp * cp <= gpus_per_node else inter) * (1 - overlap)
    t_dp = comm["dp"] / (intra if gpus <= gpus_per_node else inter) * (1 - overlap)
    total = compute + bubble + t_tp + t_pp + t_cp + t_dp
    return {"compute_s": compute, "bubble_s": bubble, "tp_s": t_tp, "pp_s": t_pp, "cp_s": t_cp, "dp_s": t_dp,
            "total_s": total}


def weight_sync_time(preset: LlamaPreset, gpu: GPUSpec, trainer_tp: int, trainer_pp: int, cross_node: bool = True) -> dict:
    """Seconds to push bf16 weights from the trainer to the engines.

    Trainer rank 0 gathers full tensors from its TP x PP group, renames them, and broadcasts them in buckets
    to every engine GPU over one NCCL group (a pipelined broadcast moves at bus bandwidth, independent of
    the number of receivers). Engines then keep their own TP shard.
    """
    total = 2.0 * preset.param_count()
    bw = (gpu.inter_node_busbw_gbps if cross_node else gpu.intra_node_busbw_gbps) * 1e9
    mp = trainer_tp * trainer_pp
    gather = total * (mp - 1) / mp / (gpu.intra_node_busbw_gbps * 1e9 if trainer_pp == 1 else bw)
    bcast = total / bw
    return {"bytes": total, "gather_s": gather, "broadcast_s": bcast, "total_s": gather + bcast}


def generation_time(
    preset: LlamaPreset, gpu: GPUSpec, *, engine_tp: int, num_engines: int, num_sequences: int, prompt_len: int,
    response_len: int, max_concurrent_seqs: int, gpus_per_node: int, hbm_efficiency: float = 0.6,
    prefill_mfu: float = 0.4, max_num_seqs: int = 256,
) -> dict:
    """Seconds for the engines to generate ``num_sequences`` responses (memory-bound decode model).

    Each decode step reads the engine GPU's weight shard plus the live KV once from HBM and does 2 TP
    all-reduces per layer (latency-bound at these sizes). Sequences beyond what the KV cache (or vLLM's
    ``max_num_seqs``) holds run in further rounds.
    """
    per_engine = math.ceil(num_sequences / num_engines)
    conc = max(1, min(max_concurrent_seqs, max_num_seqs, per_engine))
    rounds = math.ceil(per_engine / conc)
    w = 2.0 * preset.param_count() / engine_tp
    kv_tok = 2 * preset.num_layers * max(1, preset.num_query_groups // engine_tp) * preset.head_dim * 2
    kv_live = conc * (prompt_len + response_len / 2) * kv_tok
    lat = gpu.collective_latency_s * (2 if engine_tp > gpus_per_node else 1)
    step = (w + kv_live) / (gpu.hbm_gbps * 1e9 * hbm_efficiency) + (2 * preset.num_layers * lat if engine_tp > 1 else 0)
    decode = rounds * response_len * step
    prefill = 2.0 * preset.param_count() * per_engine * prompt_len / (engine_tp * gpu.bf16_tflops * 1e12 * prefill_mfu)
    return {"rounds": rounds, "concurrency": conc, "decode_step_s": step, "decode_s": decode, "prefill_s": prefill,
            "total_s": decode + prefill}
