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

import math
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


class HFTensor:
    """One HF tensor described by the TP-shard pieces it is made of, not yet copied anywhere.

    ``pieces`` are ``(view shape, index, source)`` triples: ``dst.view(view_shape)[index]`` receives ``source``,
    and together they cover ``dst`` exactly once. :meth:`write_into` therefore copies every byte once, straight
    from the shards into a destination such as a weight-sync bucket; :meth:`materialize` does the same into a
    fresh tensor. A concatenate-then-copy path would copy the QKV weights three times and the rest twice.
    """

    __slots__ = ("name", "shape", "dtype", "pieces")

    def __init__(self, name: str, shape: tuple[int, ...], pieces: list[tuple[tuple[int, ...], tuple, torch.Tensor]]):
        self.name, self.shape, self.pieces = name, tuple(shape), pieces
        self.dtype = pieces[0][2].dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.pieces[0][2].element_size()

    def write_into(self, dst: torch.Tensor) -> torch.Tensor:
        """Copy the pieces into ``dst`` (contiguous, this shape and dtype, any device); returns ``dst``."""
        if tuple(dst.shape) != self.shape or dst.dtype != self.dtype or not dst.is_contiguous():
            raise ValueError(f"{self.name}: destination {tuple(dst.shape)} {dst.dtype} (contiguous="
                             f"{dst.is_contiguous()}) does not take {self.shape} {self.dtype}")
        for view_shape, index, src in self.pieces:
            dst.view(view_shape)[index].copy_(src)
        return dst

    def materialize(self) -> torch.Tensor:
        src = self.pieces[0][2]
        return self.write_into(torch.empty(self.shape, dtype=src.dtype, device=src.device))


def mcore_to_hf_pieces(mcore_name: str, shards: list[torch.Tensor], preset: LlamaPreset) -> list[HFTensor]:
    """The HF tensors of megatron parameter ``mcore_name`` (GLOBAL layer index) as pieces of its TP shards (in
    TP-rank order), vocab padding left out; nothing is copied until :meth:`HFTensor.write_into`."""
    hf = hf_names_for(mcore_name, preset)
    tp = len(shards)
    if mcore_name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        if mcore_name == "output_layer.weight" and preset.tie_embeddings:
            return []
        v, (rows, d) = preset.vocab_size, shards[0].shape
        pieces = []
        for r, s in enumerate(shards):  # the last shards end in vocab padding, which HF does not have
            lo, hi = r * rows, min(v, (r + 1) * rows)
            if lo < hi:
                pieces.append(((v, d), (slice(lo, hi),), s[: hi - lo]))
        return [HFTensor(hf[0], (v, d), pieces)]
    if mcore_name == "decoder.final_layernorm.weight" or mcore_name.endswith("layernorm.weight"):
        return [HFTensor(hf[0], shards[0].shape, [(shards[0].shape, (slice(None),), shards[0])])]
    rest = _LAYER_RE.match(mcore_name).group(2)
    if rest == "self_attention.linear_qkv.weight":
        # megatron: per KV group [q heads of the group; k; v], groups split contiguously over TP ranks
        g, hd, d = preset.num_query_groups, preset.head_dim, preset.hidden_size
        per, gt = preset.num_attention_heads // g, preset.num_query_groups // tp
        out = []
        for name, lo, width in ((hf[0], 0, per * hd), (hf[1], per * hd, hd), (hf[2], (per + 1) * hd, hd)):
            pieces = [((g, width, d), (slice(r * gt, (r + 1) * gt),), s.view(gt, (per + 2) * hd, d)[:, lo:lo + width])
                      for r, s in enumerate(shards)]
            out.append(HFTensor(name, (g * width, d), pieces))
        return out
    if rest in ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight"):
        rows, cols = shards[0].shape
        return [HFTensor(hf[0], (rows, tp * cols), [((rows, tp * cols), (slice(None), slice(r * cols, (r + 1) * cols)), s)
                                                    for r, s in enumerate(shards)])]
    if rest == "mlp.linear_fc1.weight":
        f, d = shards[0].shape[0] // 2, shards[0].shape[1]  # each rank: [gate shard; up shard]
        return [HFTensor(name, (tp * f, d), [((tp * f, d), (slice(r * f, (r + 1) * f),), s[half * f:(half + 1) * f])
                                             for r, s in enumerate(shards)])
                for half, name in enumerate(hf[:2])]
    raise KeyError(f"no HF mapping for megatron parameter {mcore_name!r}")


def as_tensor(t):
    """``t`` itself, or a fresh tensor when it is an :class:`HFTensor` (for consumers that need real tensors)."""
    return t.materialize() if isinstance(t, HFTensor) else t


def mcore_to_hf(mcore_name: str, shards: list[torch.Tensor], preset: LlamaPreset) -> list[tuple[str, torch.Tensor]]:
    """Merge the TP shards (in TP-rank order) of megatron parameter ``mcore_name`` (GLOBAL layer index)
    back into HF tensors (fresh, contiguous). Vocab padding is removed."""
    return [(t.name, t.materialize()) for t in mcore_to_hf_pieces(mcore_name, shards, preset)]


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
