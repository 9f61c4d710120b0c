"""The one HF <-> megatron-core name/shape table for Llama. Conversion, export and weight sync all use it.

Megatron layout (per TP rank ``r`` of ``tp``; layer indices local to the model chunk, see ``models.pipeline_split``):

=============================================  =====================================================
megatron name                                  from HF
=============================================  =====================================================
embedding.word_embeddings.weight               embed_tokens, vocab padded to V_pad, rows split by TP
decoder.layers.i.input_layernorm.weight        layers.i.input_layernorm (replicated)
decoder.layers.i.self_attention.linear_qkv     q/k/v interleaved per KV group: [g][q_g.., k_g, v_g],
                                               groups split contiguously by TP
decoder.layers.i.self_attention.linear_proj    o_proj, columns split by TP
decoder.layers.i.pre_mlp_layernorm.weight      post_attention_layernorm (replicated)
decoder.layers.i.mlp.linear_fc1.weight         [gate shard r; up shard r] (SwiGLU fused per rank)
decoder.layers.i.mlp.linear_fc2.weight         down_proj, columns split by TP
decoder.final_layernorm.weight                 norm
output_layer.weight                            lm_head (or embed_tokens when tied), padded, split
=============================================  =====================================================

Transformer Engine fuses the two norms into the following linear (``linear_qkv.layer_norm_weight``,
``linear_fc1.layer_norm_weight``); :func:`to_te_name`/:func:`from_te_name` translate.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator

import torch

from megatron_tulu.models.build import padded_vocab_size
from megatron_tulu.models.pipeline_split import PipelineSplit
from megatron_tulu.models.presets import LlamaPreset

_TE_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}

_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def to_te_name(name: str) -> str:
    for local, te in _TE_NAMES.items():
        if name.endswith(local):
            return name[: -len(local)] + te
    return name


def from_te_name(name: str) -> str:
    for local, te in _TE_NAMES.items():
        if name.endswith(te):
            return name[: -len(te)] + local
    return name


def layer_param_names(i: int) -> list[str]:
    """Megatron (local-spec) parameter names of layer ``i``."""
    p = f"decoder.layers.{i}."
    return [
        p + "input_layernorm.weight",
        p + "self_attention.linear_qkv.weight",
        p + "self_attention.linear_proj.weight",
        p + "pre_mlp_layernorm.weight",
        p + "mlp.linear_fc1.weight",
        p + "mlp.linear_fc2.weight",
    ]


def hf_names_for(mcore_name: str, preset: LlamaPreset) -> list[str]:
    """HF tensor names a megatron parameter (with GLOBAL layer index) is made of."""
    if mcore_name == "embedding.word_embeddings.weight":
        return ["model.embed_tokens.weight"]
    if mcore_name == "decoder.final_layernorm.weight":
        return ["model.norm.weight"]
    if mcore_name == "output_layer.weight":
        return ["model.embed_tokens.weight"] if preset.tie_embeddings else ["lm_head.weight"]
    m = _LAYER_RE.match(mcore_name)
    if not m:
        raise KeyError(f"no HF mapping for megatron parameter {mcore_name!r}")
    i, rest = m.group(1), m.group(2)
    p = f"model.layers.{i}."
    table = {
        "input_layernorm.weight": [p + "input_layernorm.weight"],
        "self_attention.linear_qkv.weight": [p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"],
        "self_attention.linear_proj.weight": [p + "self_attn.o_proj.weight"],
        "pre_mlp_layernorm.weight": [p + "post_attention_layernorm.weight"],
        "mlp.linear_fc1.weight": [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
        "mlp.linear_fc2.weight": [p + "mlp.down_proj.weight"],
    }
    if rest not in table:
        raise KeyError(f"no HF mapping for megatron parameter {mcore_name!r}")
    return table[rest]


def all_hf_names(preset: LlamaPreset) -> list[str]:
    names = ["model.embed_tokens.weight"]
    for i in range(preset.num_layers):
        for n in layer_param_names(i):
            names += hf_names_for(n, preset)
    names.append("model.norm.weight")
    if not preset.tie_embeddings:
        names.append("lm_head.weight")
    return names


def expected_hf_shape(hf_name: str, preset: LlamaPreset) -> tuple[int, ...]:
    d, f, hd = preset.hidden_size, preset.ffn_hidden_size, preset.head_dim
    q, kv = preset.num_attention_heads * hd, preset.num_query_groups * hd
    suffix = hf_name.split(".", 3)[-1] if hf_name.startswith("model.layers.") else hf_name
    table = {
        "model.embed_tokens.weight": (preset.vocab_size, d),
        "lm_head.weight": (preset.vocab_size, d),
        "model.norm.weight": (d,),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (q, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    return table[suffix]


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])], dim=0)


def hf_to_mcore_shard(
    mcore_name: str, get_hf: Callable[[str], torch.Tensor], preset: LlamaPreset, tp_rank: int, tp: int
) -> torch.Tensor:
    """This TP rank's shard of megatron parameter ``mcore_name`` (GLOBAL layer index) built from HF tensors.

    ``get_hf(name)`` returns a full HF tensor; its shape is checked against the preset (error names the key).
    """
    def get(name):
        t = get_hf(name)
        want = expected_hf_shape(name, preset)
        if tuple(t.shape) != want:
            raise ValueError(f"HF tensor {name!r} has shape {tuple(t.shape)}, expected {want} for preset {preset.name!r}")
        return t

    def rows(t):
        return t.chunk(tp, dim=0)[tp_rank]

    def cols(t):
        return t.chunk(tp, dim=1)[tp_rank]

    hf = hf_names_for(mcore_name, preset)
    if mcore_name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        return rows(_pad_rows(get(hf[0]), padded_vocab_size(preset.vocab_size, tp))).contiguous()
    rest = _LAYER_RE.match(mcore_name).group(2) if mcore_name.startswith("decoder.layers.") else mcore_name
    if rest.endswith("layernorm.weight"):
        return get(hf[0]).clone()
    if rest == "self_attention.linear_qkv.weight":
        q, k, v = (get(n) for n in hf)
        g, hd, d = preset.num_query_groups, preset.head_dim, preset.hidden_size
        per = preset.num_attention_heads // g
        qkv = torch.cat([q.view(g, per * hd, d), k.view(g, hd, d), v.view(g, hd, d)], dim=1)
        return qkv.chunk(tp, dim=0)[tp_rank].reshape(-1, d).contiguous()
    if rest in ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight"):
        return cols(get(hf[0])).contiguous()
    if rest == "mlp.linear_fc1.weight":
        gate, up = (get(n) for n in hf)
        return torch.cat([rows(gate), rows(up)], dim=0).contiguous()
    raise KeyError(f"no HF mapping for megatron parameter {mcore_name!r}")


def mcore_to_hf(mcore_name: str, shards: list[torch.Tensor], preset: LlamaPreset) -> list[tuple[str, torch.Tensor]]:
    """Merge the TP shards (in TP-rank order) of megatron parameter ``mcore_name`` (GLOBAL layer index)
    back into HF tensors. Vocab padding is removed."""
    hf = hf_names_for(mcore_name, preset)
    tp = len(shards)
    if mcore_name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        if mcore_name == "output_layer.weight" and preset.tie_embeddings:
            return []
        return [(hf[0], torch.cat(shards, dim=0)[: preset.vocab_size])]
    if mcore_name == "decoder.final_layernorm.weight" or mcore_name.endswith("layernorm.weight"):
        return [(hf[0], shards[0])]
    rest = _LAYER_RE.match(mcore_name).group(2)
    if rest == "self_attention.linear_qkv.weight":
        g, hd, d = preset.num_query_groups, preset.head_dim, preset.hidden_size
        per = preset.num_attention_heads // g
        qkv = torch.cat([s.view(g // tp, (per + 2) * hd, d) for s in shards], dim=0)
        q, k, v = qkv.split([per * hd, hd, hd], dim=1)
        return [(hf[0], q.reshape(-1, d).contiguous()), (hf[1], k.reshape(-1, d).contiguous()), (hf[2], v.reshape(-1, d).contiguous())]
    if rest in ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight"):
        return [(hf[0], torch.cat(shards, dim=1))]
    if rest == "mlp.linear_fc1.weight":
        halves = [s.chunk(2, dim=0) for s in shards]
        return [(hf[0], torch.cat([h[0] for h in halves], dim=0)), (hf[1], torch.cat([h[1] for h in halves], dim=0))]
    raise KeyError(f"no HF mapping for megatron parameter {mcore_name!r}")


def stage_layers(preset: LlamaPreset, pp_rank: int, split: PipelineSplit | int, vp_stage: int = 0) -> range:
    """Global layer indices held by model chunk ``(pp_rank, vp_stage)`` (a plain ``pp`` int: one chunk per rank)."""
    return PipelineSplit.of(split).layers(preset.num_layers, pp_rank, vp_stage)


def rank_param_names(preset: LlamaPreset, pp_rank: int, split: PipelineSplit | int,
                     vp_stage: int = 0) -> Iterator[tuple[str, str]]:
    """(chunk-local megatron name, global megatron name) for every parameter of model chunk ``(pp_rank, vp_stage)``."""
    split = PipelineSplit.of(split)
    layers = stage_layers(preset, pp_rank, split, vp_stage)
    if split.has_embedding(pp_rank, vp_stage):
        yield "embedding.word_embeddings.weight", "embedding.word_embeddings.weight"
    for local, glob in enumerate(layers):
        for ln, gn in zip(layer_param_names(local), layer_param_names(glob)):
            yield ln, gn
    if split.has_head(pp_rank, vp_stage):
        yield "decoder.final_layernorm.weight", "decoder.final_layernorm.weight"
        if not preset.tie_embeddings or split.pp > 1:
            yield "output_layer.weight", "output_layer.weight"


def local_to_global(name: str, layer_offset: int) -> str:
    m = _LAYER_RE.match(name)
    if not m:
        return name
    return f"decoder.layers.{int(m.group(1)) + layer_offset}.{m.group(2)}"
