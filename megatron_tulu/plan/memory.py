"""Per-GPU memory formulas for a megatron-core trainer and a vLLM engine.

Everything here is a pure function of a :class:`~megatron_tulu.models.presets.LlamaPreset` and the layout
sizes; results are bytes. The references:

* Model state with megatron's distributed optimizer (``docs/source/api-guide/dist_optimizer.md``):
  bf16 params (2 B) + fp32 grad buffer (4 B, not sharded) + fp32 main params and two fp32 Adam moments
  (12 B) sharded over the data-parallel group *including* context parallel -> ``6 + 12/d`` bytes/param
  (``4 + 12/d`` with bf16 grad reduction).
* Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  eqs. 1-6. :func:`layer_activation_bytes` rebuilds their per-layer count tensor by tensor so that the same
  code gives 34sbh + 5as^2b for their GPT layer (checked in tests) and the right count for a Llama layer
  (SwiGLU, GQA, RMSNorm, no dropout, flash attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_tulu.models.pipeline_split import PipelineSplit
from megatron_tulu.models.presets import LlamaPreset

GIB = 1024**3
RECOMPUTE_MODES = ("none", "selective", "full")


@dataclass(frozen=True)
class LayerShape:
    """The shape knobs of one transformer layer that decide what autograd stores."""

    hidden: int
    """Model width h."""
    ffn: int
    """MLP inner width (each of gate/up for a gated MLP)."""
    heads: int
    """Query heads a."""
    kv_heads: int
    """Key/value heads (GQA groups)."""
    gated_mlp: bool = True
    """SwiGLU (Llama) stores gate and up outputs; GeLU (GPT) stores one."""
    dropout: bool = False
    """GPT-style dropout after attention probs, attention out and MLP out (1-byte masks)."""
    flash_attention: bool = True
    """Fused attention keeps no s x s score matrix (only output + logsumexp)."""

    @classmethod
    def from_preset(cls, p: LlamaPreset, flash_attention: bool = True) -> "LayerShape":
        return cls(p.hidden_size, p.ffn_hidden_size, p.num_attention_heads, p.num_query_groups,
                   gated_mlp=True, dropout=False, flash_attention=flash_attention)


def layer_activation_bytes(
    shape: LayerShape, seq: int, micro_batch: int, tp: int = 1, sp: bool = True, recompute: str = "none"
) -> float:
    """Bytes one transformer layer keeps for backward, for one micro-batch, on one GPU (16-bit activations).

    ``seq`` is the per-GPU sequence (already divided by context parallel). ``sp`` is megatron's sequence
    parallelism: it shards the norm/dropout region over TP too (without it those tensors are replicated).
    ``recompute``: ``none``; ``selective`` (Korthikanti: recompute core attention, dropping the s x s terms);
    ``full`` (keep only the layer input; the layer is recomputed in backward).
    """
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")
    s, b, h, a, f = seq, micro_batch, shape.hidden, shape.heads, shape.ffn
    sbh = s * b * h
    if recompute == "full":
        return 2 * sbh / (tp if sp else 1)
    kv_frac = shape.kv_heads / a
    # Tensors in the "sequence-parallel region" (replicated over TP unless sp): norm inputs and the
    # inputs of the first linear of each block, plus dropout masks after each block.
    replicated = 2 * sbh + 2 * sbh  # attention-norm input, MLP-norm input
    replicated += 2 * sbh + 2 * sbh  # QKV-linear input, FC1 input (norm outputs)
    if shape.dropout:
        replicated += sbh + sbh  # two 1-byte masks after attention and after MLP
    # Tensors already split over TP (heads / FFN columns).
    split = 2 * sbh * (1 + 2 * kv_frac)  # Q, K, V for QK^T and softmax@V
    split += 2 * sbh  # attention output = input of the output projection
    if shape.gated_mlp:
        split += 2 * (2 * s * b * f) + 2 * s * b * f  # gate+up outputs (SwiGLU input) and SwiGLU output
    else:
        split += 2 * s * b * f + 2 * s * b * f  # GeLU input and GeLU output (FC2 input)
    # Core attention: s x s scores unless fused (flash) or recomputed (selective).
    if not shape.flash_attention and recompute == "none":
        split += 2 * a * s * s * b  # softmax output
        if shape.dropout:
            split += a * s * s * b + 2 * a * s * s * b  # dropout mask + dropout output
    elif shape.flash_attention:
        split += 4 * a * s * b  # fp32 logsumexp per head and position
    return replicated / (tp if sp else 1) + split / tp


def recomputed_fraction(recompute: str, layers_per_chunk: int, recompute_layers: int = 0) -> float:
    """Fraction of decoder layers whose activations are recomputed in backward: 0 for ``none`` / ``selective``
    (selective recomputes only core attention, whose FLOPs the planner does not count); for ``full``, all layers,
    or with ``recompute_layers`` = N > 0 the first N of each pipeline chunk's ``layers_per_chunk`` (megatron's
    ``block`` method, ``model.recompute_layers``)."""
    if recompute != "full":
        return 0.0
    return 1.0 if recompute_layers <= 0 else min(recompute_layers, layers_per_chunk) / layers_per_chunk


def logits_bytes(preset: LlamaPreset, seq: int, micro_batch: int, tp: int, fused_logprob: bool = False) -> float:
    """Output-layer activations on the last pipeline stage: bf16 logits plus the fp32 copy the
    vocab-parallel cross entropy keeps, or nothing of size s*V when a fused linear+logprob kernel is used."""
    tokens = seq * micro_batch
    final_norm = 2 * tokens * preset.hidden_size / tp
    if fused_logprob:
        return final_norm + 8 * tokens  # per-token logsumexp/target logit in fp32
    return final_norm + tokens * preset.vocab_size * (2 + 4) / tp


def layer_params(preset: LlamaPreset) -> int:
    """Parameters of one decoder layer (attention + SwiGLU MLP + two RMSNorms)."""
    d, f = preset.hidden_size, preset.ffn_hidden_size
    kv = preset.num_query_groups * preset.head_dim
    return 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d


def stage_layers(num_layers: int, pp: int, vpp: int = 1) -> int:
    """Decoder layers on the fullest pipeline stage (ceil when ``num_layers`` does not divide)."""
    return math.ceil(num_layers / (pp * vpp)) * vpp


def params_per_gpu(preset: LlamaPreset, tp: int = 1, pp: int = 1, split: PipelineSplit | None = None,
                   value_head: bool = False) -> int:
    """Parameters held by the fullest GPU of a TP x PP model-parallel group.

    TP splits every linear and the vocabulary (norm weights are replicated); PP puts the input embedding
    on the first stage and the output layer + final norm on the last. With pp == 1 both are on the GPU.
    ``split``: the exact layers per rank (e.g. a value model's uneven split), else the ceil share of every rank;
    ``value_head``: a scalar head (PPO value model) instead of the vocab-sized output layer.
    """
    d, v = preset.hidden_size, preset.vocab_size
    per_layer = (layer_params(preset) - 2 * d) / tp + 2 * d
    embed = v * d / tp
    head = (d if value_head else 0 if preset.tie_embeddings else v * d / tp) + d
    if split is not None:
        counts = split.rank_layer_counts(preset.num_layers)
        return int(max(n * per_layer + (embed if r == 0 else 0) + (head if r == len(counts) - 1 else 0)
                       for r, n in enumerate(counts)))
    layers = stage_layers(preset.num_layers, pp) * per_layer
    if pp == 1:
        return int(layers + embed + head)
    return int(layers + max(embed, head))


def state_bytes_per_param(dp_shard: int, grad_dtype_bytes: int = 4, distributed_optimizer: bool = True) -> float:
    """Bytes per parameter of model state for mixed-precision Adam (bf16 params, fp32 main copy + moments).

    ``dp_shard`` is the group the distributed optimizer shards over (megatron: data-parallel x context).
    """
    optim = 12.0 / dp_shard if distributed_optimizer else 12.0
    return 2.0 + grad_dtype_bytes + optim


@dataclass
class TrainerMemory:
    """Per-GPU memory of one trainer layout, bytes."""

    weights: float
    grads: float
    optimizer: float
    activations: dict
    """recompute mode -> activation bytes (the fullest stage, all in-flight micro-batches)."""
    frozen: float = 0.0
    """Reference/reward model weights (bf16, no grads) sharded like the policy."""
    value_model: float = 0.0
    """PPO value model: its own weights + grads + optimizer state."""

    def total(self, recompute: str) -> float:
        return self.weights + self.grads + self.optimizer + self.frozen + self.value_model + self.activations[recompute]

    def state(self) -> float:
        """Weights + grads + optimizer state (what the CPU measurement checks)."""
        return self.weights + self.grads + self.optimizer


def model_state(preset: LlamaPreset, tp: int, pp: int, dp_shard: int, grad_dtype_bytes: int = 4,
                **placement) -> tuple[float, float, float]:
    """(weights, grads, optimizer) bytes per GPU under megatron's distributed optimizer (``placement``: the
    ``split`` / ``value_head`` of :func:`params_per_gpu`)."""
    n = params_per_gpu(preset, tp, pp, **placement)
    return 2.0 * n, float(grad_dtype_bytes) * n, 12.0 * n / dp_shard


def activation_bytes(
    preset: LlamaPreset, *, seq: int, micro_batch: int, tp: int, pp: int, cp: int, num_microbatches: int,
    recompute: str, vpp: int = 1, sp: bool | None = None, fused_logprob: bool = False, flash_attention: bool = True,
    recompute_layers: int = 0,
) -> float:
    """Peak activation bytes on the fullest pipeline stage (Korthikanti et al. sec. 4.2.3).

    With 1F1B the first stage holds ``min(pp, m)`` micro-batches of its L/pp layers; interleaving (vpp)
    multiplies that by ``1 + (pp-1)/(pp*vpp)``. Full recompute keeps only layer inputs, plus one layer's
    full activations while it is recomputed; with ``recompute_layers`` (block method) only that many layers
    of each chunk do, the others keep everything. The last stage also holds the logits (once per micro-batch
    in flight, where pp == 1 means exactly one).
    """
    if sp is None:
        sp = tp > 1
    shape = LayerShape.from_preset(preset, flash_attention=flash_attention)
    s_local = seq // cp
    layers = stage_layers(preset.num_layers, pp, vpp)
    kept = layer_activation_bytes(shape, s_local, micro_batch, tp, sp, "none")
    per_layer = layer_activation_bytes(shape, s_local, micro_batch, tp, sp, recompute)
    if recompute == "full" and recompute_layers:  # block: the rest of each chunk's layers keep their activations
        frac = recomputed_fraction(recompute, layers // vpp, recompute_layers)
        per_layer = frac * per_layer + (1 - frac) * kept
    in_flight = min(pp, num_microbatches)
    interleave = 1 + (pp - 1) / (pp * vpp) if vpp > 1 else 1.0
    recompute_peak = kept if recompute == "full" else 0.0
    embed_out = 2 * s_local * micro_batch * preset.hidden_size / (tp if sp else 1)
    logits = logits_bytes(preset, s_local, micro_batch, tp, fused_logprob)
    if pp == 1:
        return per_layer * layers + recompute_peak + embed_out + logits
    # First stage: pp micro-batches in flight; last stage: one micro-batch plus its logits.
    first = (per_layer * layers + embed_out) * in_flight * interleave + recompute_peak
    last = per_layer * layers * interleave + logits + recompute_peak
    return max(first, last)


def kv_cache_bytes_per_token(preset: LlamaPreset, engine_tp: int, dtype_bytes: int = 2) -> float:
    """KV-cache bytes per token on one engine GPU. vLLM replicates KV heads when TP > kv heads."""
    kv_per_gpu = max(1, preset.num_query_groups // engine_tp)
    return 2 * preset.num_layers * kv_per_gpu * preset.head_dim * dtype_bytes


@dataclass
class EngineMemory:
    """Per-GPU memory of one vLLM engine GPU, bytes."""

    weights: float
    kv_cache: float
    """What is left for the KV cache under ``gpu_memory_utilization`` (negative: weights do not fit)."""
    kv_tokens: int
    """Tokens of KV the cache holds (per engine: every GPU holds the same tokens)."""
    max_concurrent_seqs: int
    """Full-length sequences (prompt + response) that fit in the cache at once."""


def engine_memory(
    preset: LlamaPreset, engine_tp: int, gpu_bytes: float, seq: int, gpu_memory_utilization: float = 0.9,
    runtime_overhead_bytes: float = 3 * GIB, weight_dtype_bytes: int = 2,
) -> EngineMemory:
    """vLLM weights (sharded over engine TP) + whatever KV cache fits in ``gpu_memory_utilization``.

    ``runtime_overhead_bytes`` covers CUDA graphs, the sampler and activation workspace (vLLM profiles this
    at start-up; a few GiB at these widths).
    """
    weights = preset.param_count() * weight_dtype_bytes / engine_tp
    kv = gpu_bytes * gpu_memory_utilization - weights - runtime_overhead_bytes
    per_tok = kv_cache_bytes_per_token(preset, engine_tp)
    tokens = int(max(kv, 0) // per_tok)
    return EngineMemory(weights=weights, kv_cache=kv, kv_tokens=tokens, max_concurrent_seqs=tokens // max(seq, 1))
