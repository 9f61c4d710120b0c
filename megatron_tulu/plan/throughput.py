"""FLOPs, communication volume and step-time estimates.

Compute time is ``model FLOPs / (GPUs x peak x MFU)``. The MFU is an assumption
(:data:`megatron_tulu.plan.hardware.EFFICIENCY`) that :func:`load_calibration` replaces with the median MFU of
measured runs (``benchmarks/train_throughput.py --json-out`` writes that file). Communication that megatron
does not overlap (TP collectives, PP sends) is added in full; DP/CP traffic is added times
``(1 - overlap)``. Bus bandwidths come from :mod:`megatron_tulu.plan.hardware`.

Generation (:func:`generation_time`) is a decode-time model: every decode step streams the engine GPU's weight
shard and the live KV cache from HBM (or, at large batches, is bound by the GEMM FLOPs), the batch is what the KV
budget holds, and the engine runs until its longest response ends (:class:`LengthDist` gives the lengths).
Weight sync is bytes over NVLink/InfiniBand (:func:`weight_sync_time`) or, for an engine on the trainer's own GPUs,
a CUDA IPC copy plus the host traffic of sleeping and waking (:func:`colocated_sync_time`).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import random
from dataclasses import dataclass
from functools import cached_property, lru_cache

from megatron_tulu.models.presets import LlamaPreset
from megatron_tulu.plan.hardware import EFFICIENCY, Efficiencies, GPUSpec
from megatron_tulu.plan.memory import kv_cache_bytes_per_token, params_per_gpu, stage_layers

DEFAULT_MFU = EFFICIENCY.train_mfu


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
    recompute: str, grad_dtype_bytes: int = 4, recomputed: float | None = None,
) -> dict:
    """Bytes each trainer GPU sends per optimizer step, by kind (tp, pp, cp, dp).

    TP (megatron, with or without SP): 2 all-reduce-equivalents per layer forward and 2 backward of the
    bf16 activations [s/cp, b, h]; full recompute repeats the forward ones (on the ``recomputed`` fraction of
    the layers, :func:`~megatron_tulu.plan.memory.recomputed_fraction`; default all of them). PP: one activation send per
    micro-batch forward and one gradient send backward. CP: ring attention passes K and V around the ring
    in forward and their gradients back. DP: reduce-scatter of the grads and all-gather of the bf16 params
    over the data-parallel x context group (distributed optimizer).
    """
    s = seq // cp
    act = 2.0 * s * micro_batch * preset.hidden_size
    layers = stage_layers(preset.num_layers, pp)
    if recomputed is None:
        recomputed = 1.0 if recompute == "full" else 0.0
    tp_colls = 4 + 2 * recomputed
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
    vpp: int = 1, forward_only_flops: float = 0.0, recomputed: float | None = None, tp_comm_overlap: bool = False,
) -> dict:
    """Seconds per optimizer step, split into compute, pipeline bubble and exposed communication.

    ``flops_total`` is model FLOPs for the whole step over all GPUs. Full recompute costs one more forward
    (x 4/3) of the trained passes, on the ``recomputed`` fraction of the layers (default: all);
    ``forward_only_flops`` (log-prob / reference forwards, no backward, so nothing to recompute) are added
    without it. FP8 doubles the peak but the MFU assumption still applies to the BF16-measured efficiency.
    TP collectives are exposed unless ``tp_comm_overlap`` (TE userbuffers overlapping them with the GEMMs),
    which hides them like DP/CP traffic, by ``overlap``.
    """
    peak = (gpu.fp8_tflops if fp8 and gpu.fp8_tflops else gpu.bf16_tflops) * 1e12
    if recomputed is None:
        recomputed = 1.0 if recompute == "full" else 0.0
    extra = 1.0 + recomputed / 3.0
    compute = (flops_total * extra + forward_only_flops) / (gpus * peak * mfu)
    bubble = compute * (pp - 1) / (num_microbatches * vpp)
    intra, inter = gpu.intra_node_busbw_gbps * 1e9, gpu.inter_node_busbw_gbps * 1e9
    # TP stays inside a node by construction; PP/CP/DP cross nodes once the groups below them fill one.
    t_tp = comm["tp"] / intra * ((1 - overlap) if tp_comm_overlap else 1.0)
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


@dataclass(frozen=True)
class LengthDist:
    """Response lengths of a step's rollouts: ``fixed`` (every one ``hi``), ``uniform`` on [lo, hi], or ``exp``:
    an exponential truncated at ``hi`` whose mean (after truncation) is ``mean`` (long-tailed, as reasoning
    rollouts are). Parsed from ``fixed:N``, ``uniform:LO:HI``, ``exp:MEAN:MAX`` or ``MEAN:MAX`` (= exp)."""

    kind: str
    lo: float
    hi: float
    mean_target: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "LengthDist":
        parts = text.split(":")
        try:
            if parts[0] in ("fixed", "uniform", "exp"):
                kind, nums = parts[0], [float(x) for x in parts[1:]]
            else:
                kind, nums = "exp", [float(x) for x in parts]
            if kind == "fixed" and len(nums) == 1:
                d = cls("fixed", nums[0], nums[0])
            elif kind == "uniform" and len(nums) == 2:
                d = cls("uniform", nums[0], nums[1])
            elif kind == "exp" and len(nums) == 2:
                d = cls("exp", 0.0, nums[1], nums[0])
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"response length distribution {text!r}: use fixed:N, uniform:LO:HI, exp:MEAN:MAX or "
                             "MEAN:MAX") from None
        if not (0 <= d.lo <= d.hi and d.hi >= 1) or (d.kind == "exp" and not 0 < d.mean_target < d.hi / 2):
            raise ValueError(f"response length distribution {text!r}: need 0 <= LO <= HI, HI >= 1 and, for exp, "
                             "0 < MEAN < MAX/2")
        return d

    @cached_property
    def _rate(self) -> float:
        """exp: the rate whose truncated mean is ``mean_target`` (bisection; the mean falls as the rate grows)."""
        lo, hi = 1e-9, 50.0 / self.mean_target
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self._exp_mean(mid) > self.mean_target else (lo, mid)
        return (lo + hi) / 2

    def _exp_mean(self, lam: float) -> float:
        m = self.hi
        return 1 / lam - m * math.exp(-lam * m) / (1 - math.exp(-lam * m))

    def quantile(self, u: float) -> float:
        if self.kind == "fixed":
            return self.hi
        if self.kind == "uniform":
            return self.lo + u * (self.hi - self.lo)
        lam = self._rate
        return -math.log(1 - u * (1 - math.exp(-lam * self.hi))) / lam

    def sample(self, n: int) -> list[int]:
        """``n`` lengths at the quantiles (i + 1/2)/n (deterministic; their max is near the expected max of n draws)."""
        return list(_sample_cached(self, n))

    @property
    def mean(self) -> float:
        return {"fixed": self.hi, "uniform": (self.lo + self.hi) / 2}.get(self.kind, self.mean_target)

    @cached_property
    def mean_sq(self) -> float:
        """E[r^2] (numerically for exp)."""
        if self.kind == "fixed":
            return self.hi**2
        if self.kind == "uniform":
            return (self.lo**2 + self.lo * self.hi + self.hi**2) / 3
        xs = self.sample(4000)
        return sum(x * x for x in xs) / len(xs)


@lru_cache(maxsize=64)
def _sample_cached(dist: LengthDist, n: int) -> tuple[int, ...]:
    return tuple(max(1, round(dist.quantile((i + 0.5) / n))) for i in range(n))


def packed_seq_stats(prompt_len: float, dist: LengthDist) -> tuple[float, float]:
    """(mean tokens per sequence, token-weighted mean sequence length E[s^2]/E[s]) for s = prompt + response.
    The second is the length that makes per-token attention FLOPs of packed rows (each token attends within its
    own sequence) come out right."""
    mean = prompt_len + dist.mean
    mean_sq = prompt_len**2 + 2 * prompt_len * dist.mean + dist.mean_sq
    return mean, mean_sq / mean


def decode_step_time(preset: LlamaPreset, gpu: GPUSpec, *, engine_tp: int, live_seqs: int, context_tokens: float,
                     gpus_per_node: int = 8, eff: Efficiencies = EFFICIENCY) -> float:
    """Seconds of one decode step on an engine of ``engine_tp`` GPUs with ``live_seqs`` sequences holding
    ``context_tokens`` tokens of KV in all. Roofline: HBM bytes (weight shard + live KV) / (bandwidth x
    efficiency) or GEMM + attention FLOPs / (peak x efficiency), whichever is larger, plus 2 TP all-reduces per
    layer (latency-bound) and a fixed per-step overhead."""
    weights = 2.0 * preset.param_count() / engine_tp
    kv = kv_cache_bytes_per_token(preset, engine_tp) * context_tokens
    t_mem = (weights + kv) / (gpu.hbm_gbps * 1e9 * eff.hbm_efficiency)
    n_matmul = preset.param_count() - preset.vocab_size * preset.hidden_size * (0 if preset.tie_embeddings else 1)
    attn = 4.0 * preset.num_layers * preset.num_attention_heads * preset.head_dim * context_tokens
    t_flop = (2.0 * n_matmul * live_seqs + attn) / engine_tp / (gpu.bf16_tflops * 1e12 * eff.decode_compute_efficiency)
    lat = gpu.collective_latency_s * (2 if engine_tp > gpus_per_node else 1)
    t_tp = 2 * preset.num_layers * lat if engine_tp > 1 else 0.0
    return max(t_mem, t_flop) + t_tp + eff.decode_step_overhead_s


def _decode_schedule(lengths: tuple[int, ...], concurrency: int, chunk: int = 16) -> list[tuple[int, int, float]]:
    """Continuous batching of ``lengths`` (in admission order) through ``concurrency`` slots, in chunks of at most
    ``chunk`` decode steps: a list of (steps, live sequences, generated tokens summed over them at mid-chunk)."""
    queue, active, out = list(reversed(lengths)), [], []
    while queue or active:
        while queue and len(active) < concurrency:
            active.append([0, queue.pop()])
        adv = min(chunk, min(t - g for g, t in active))
        out.append((adv, len(active), sum(g for g, _ in active) + len(active) * adv / 2))
        for a in active:
            a[0] += adv
        active = [a for a in active if a[0] < a[1]]
    return out


@lru_cache(maxsize=256)
def _schedule_cached(lengths: tuple[int, ...], concurrency: int) -> tuple:
    return tuple(_decode_schedule(lengths, concurrency))


def generation_time(
    preset: LlamaPreset, gpu: GPUSpec, *, engine_tp: int, num_engines: int, num_sequences: int, prompt_len: int,
    response_len: int, max_concurrent_seqs: int, gpus_per_node: int, response_dist: LengthDist | None = None,
    kv_tokens: int = 0, eff: Efficiencies = EFFICIENCY, max_num_seqs: int = 0,
) -> dict:
    """Seconds for ``num_engines`` engines to generate ``num_sequences`` responses (decode-time model).

    Each engine takes ``ceil(num_sequences / num_engines)`` prompts. Its batch is what the KV budget holds at
    prompt + mean response (``kv_tokens``; else ``max_concurrent_seqs``, the count at full length), capped by
    vLLM's ``max_num_seqs``; further sequences join as others finish (continuous batching). Response lengths come
    from ``response_dist`` (default: all ``response_len``), so the engine decodes until its longest one ends, the
    batch thinning as the short ones finish. Prefill is the prompts' forward FLOPs at ``prefill_mfu``.
    """
    dist = response_dist or LengthDist("fixed", response_len, response_len)
    cap = max_num_seqs or eff.max_num_seqs
    per_engine = math.ceil(num_sequences / num_engines)
    fit = kv_tokens // max(1, round(prompt_len + dist.mean)) if kv_tokens else max_concurrent_seqs
    conc = max(1, min(fit, cap, per_engine))
    lengths = dist.sample(per_engine)
    random.Random(0).shuffle(lengths)  # FCFS admission of a representative mix of short and long
    decode, steps = 0.0, 0
    for adv, live, gen_sum in _schedule_cached(tuple(lengths), conc):
        ctx = live * prompt_len + gen_sum
        decode += adv * decode_step_time(preset, gpu, engine_tp=engine_tp, live_seqs=live, context_tokens=ctx,
                                         gpus_per_node=gpus_per_node, eff=eff)
        steps += adv
    n_matmul = preset.param_count() - preset.vocab_size * preset.hidden_size * (0 if preset.tie_embeddings else 1)
    prefill_flops = per_engine * prompt_len * (2.0 * n_matmul + 2.0 * preset.num_layers * prompt_len * preset.hidden_size)
    prefill = prefill_flops / (engine_tp * gpu.bf16_tflops * 1e12 * eff.prefill_mfu)
    return {"per_engine": per_engine, "concurrency": conc, "rounds": math.ceil(per_engine / conc),
            "decode_steps": steps, "max_response": max(lengths), "mean_response": dist.mean,
            "decode_step_s": decode / max(steps, 1), "decode_s": decode, "prefill_s": prefill,
            "total_s": decode + prefill}


def colocated_sync_time(preset: LlamaPreset, gpu: GPUSpec, *, engine_tp: int, trainer_tp: int, trainer_pp: int,
                        offload_bytes_per_gpu: float = 0.0, sleep_level: int = 1, nodes: int = 1,
                        eff: Efficiencies = EFFICIENCY) -> dict:
    """Seconds per step of switching a colocated GPU between training and generation.

    The engine's weights come from the trainer on the same GPUs by CUDA IPC: gather full tensors over the
    trainer's TP x PP group on NVLink when its sharding differs from the engine's, then one device copy (read +
    write of the engine shard at HBM speed). Sleep level 1 also moves the engine's weights to host and back each
    step (level 2 drops them: the sync refills them). ``offload_bytes_per_gpu`` of trainer state (grads,
    optimizer) leaves for the host before generation and comes back after it. Over ``nodes`` > 1 trainer rank 0
    also forwards every gathered tensor to the other nodes' first ranks (``rollout.colocated_nodes``): the full bytes
    once over the inter-node bus.
    """
    total = 2.0 * preset.param_count()
    shard = total / engine_tp
    mp = trainer_tp * trainer_pp
    gather = 0.0 if mp == engine_tp and trainer_pp == 1 else total * (mp - 1) / mp / (gpu.intra_node_busbw_gbps * 1e9)
    ipc = 2.0 * shard / (gpu.hbm_gbps * 1e9 * eff.hbm_efficiency)
    host = gpu.host_link_gbps * 1e9
    sleep = 2.0 * shard / host if sleep_level == 1 else 0.0
    offload = 2.0 * offload_bytes_per_gpu / host
    forward = total / (gpu.inter_node_busbw_gbps * 1e9) if nodes > 1 else 0.0
    return {"bytes": total, "gather_s": gather, "ipc_copy_s": ipc, "engine_sleep_wake_s": sleep,
            "trainer_offload_s": offload, "node_forward_s": forward, "total_s": gather + ipc + sleep + offload + forward}
