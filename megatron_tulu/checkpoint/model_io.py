"""Moving weights between a live (TP/PP-sharded) megatron model and HF tensors, through ``mapping``.

- :func:`load_hf_into_model`: every rank reads only the HF tensors its shard needs (streamed, lazily).
- :func:`iter_hf_tensors`: collective generator; gathers TP shards and PP stages and yields full HF-named
  tensors on global rank 0 (other ranks get nothing). Used by export AND by weight sync to the engines. A model
  with the ``scalar`` head (reward model) yields ``score.weight`` ``[1, d]`` (``LlamaForSequenceClassification``,
  num_labels=1) in place of ``lm_head.weight``.
- :func:`load_rank_file` / :func:`save_rank_files`: the offline converter's per-rank format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from megatron_tulu.checkpoint import mapping
from megatron_tulu.checkpoint.hf_io import (
    TOKENIZER_FILES, HFReader, atomic_dir, hf_config_from_preset, write_hf_dir,
)
from megatron_tulu.models.build import model_chunks
from megatron_tulu.models.pipeline_split import PipelineSplit
from megatron_tulu.models.presets import LlamaPreset

FORMAT_FILE = "megatron_tulu_ckpt.json"


def pipeline_split(model) -> PipelineSplit:
    """The layer split ``model`` (a chunk or a rank's chunk list) was built with."""
    return PipelineSplit.from_model_config(model_chunks(model)[0].config)


def _ranks():
    from megatron.core import parallel_state as ps

    return (
        ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size(),
    )


def named_local_params(model) -> Iterator[tuple[str, str, torch.nn.Parameter]]:
    """(chunk-local local-spec name, global name, parameter) for this rank's parameters, chunk by chunk (TE names
    translated). The layer offset of each chunk comes from ``models.pipeline_split``, checked against the layer
    numbers megatron gave the chunk's layers."""
    _, _, pp_rank, _ = _ranks()
    for m in model_chunks(model):
        split = PipelineSplit.from_model_config(m.config)
        layers = split.layers(m.config.num_layers, pp_rank, m.vp_stage or 0)
        built = [layer.layer_number - 1 for layer in m.decoder.layers]
        if built != list(layers):
            raise RuntimeError(f"model chunk (pp_rank={pp_rank}, vp_stage={m.vp_stage}) holds layers {built}, "
                               f"but {split} puts layers {list(layers)} there")
        for name, p in m.named_parameters():
            local = mapping.from_te_name(name)
            yield local, mapping.local_to_global(local, layers.start), p


def load_hf_into_model(model, source: str | Path | HFReader, preset: LlamaPreset, backbone_only: bool = False) -> None:
    """Fill this rank's parameters from an HF checkpoint (shape/key errors name the tensor).

    ``backbone_only``: everything but the LM head (``lm_head.weight`` neither needed nor loaded; a
    ``score.weight`` is allowed), e.g. a reward model's backbone under a value head."""
    reader = source if isinstance(source, HFReader) else HFReader(source)
    names = mapping.all_hf_names(preset)
    if backbone_only:
        names = [n for n in names if n != "lm_head.weight"]
    reader.check_keys(names, allow_extra=("lm_head.weight", "score.weight") if backbone_only else ("lm_head.weight",))
    tp_rank, tp, _, _ = _ranks()
    with torch.no_grad():
        for local, glob, p in named_local_params(model):
            if backbone_only and glob == "output_layer.weight":
                continue
            shard = mapping.hf_to_mcore_shard(glob, reader.get, preset, tp_rank, tp)
            if shard.shape != p.shape:
                raise ValueError(f"{local}: converted shard shape {tuple(shard.shape)} != model {tuple(p.shape)}")
            p.copy_(shard.to(p.dtype))


SCORE = "score.weight"
"""HF name of the scalar head (``LlamaForSequenceClassification.score``, ``[num_labels=1, d]``)."""


def _hf_order(preset: LlamaPreset, split: PipelineSplit | int, head: str = "lm") -> Iterator[tuple[int, str, list[str]]]:
    """``(pipeline rank, global megatron name, hf names)`` in the order :func:`iter_hf_tensors` yields them: model
    chunk by model chunk, so layers come in ascending order whatever the split. ``head="scalar"``: the output
    layer is the score head (its own tensor even when the LM head is tied)."""
    split = PipelineSplit.of(split)
    for pp_rank, vp_stage in split.chunks():
        for _, glob in mapping.rank_param_names(preset, pp_rank, split, vp_stage):
            if glob == "output_layer.weight" and head == "scalar":
                yield pp_rank, glob, [SCORE]
                continue
            if glob == "output_layer.weight" and preset.tie_embeddings:
                continue
            yield pp_rank, glob, mapping.hf_names_for(glob, preset)


def _hf_shape(name: str, preset: LlamaPreset) -> tuple[int, ...]:
    return (1, preset.hidden_size) if name == SCORE else tuple(mapping.expected_hf_shape(name, preset))


def hf_tensor_metas(preset: LlamaPreset, split: PipelineSplit | int, dtype: torch.dtype) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(hf_name, dtype name, shape)`` of every tensor :func:`iter_hf_tensors` yields, in its order, computed
    from the preset alone: the weight sync sends this metadata before the first tensor is gathered, so the
    tensors can stream through size-bounded buckets instead of being collected on rank 0 first."""
    dt = str(dtype).removeprefix("torch.")
    return [(n, dt, tuple(mapping.expected_hf_shape(n, preset))) for _, _, names in _hf_order(preset, split) for n in names]


def iter_hf_tensors(model, preset: LlamaPreset, lazy: bool = False, head: str = "lm",
                    names_elsewhere: bool = False) -> Iterator[tuple[str, torch.Tensor | None]]:
    """Collective over all ranks: yields ``(hf_name, full tensor)`` on global rank 0, in HF order.

    Every rank must iterate it to the end (each step may run TP all-gathers and PP send/recv). Rank 0 holds
    one parameter's full tensors at a time (plus what the consumer keeps). ``lazy``: rank 0's own stage yields
    :class:`~megatron_tulu.checkpoint.mapping.HFTensor` pieces of the gathered shards instead, which the
    weight-sync sender writes straight into its buckets (one copy per byte; ``mapping.as_tensor`` turns one
    into a tensor). Consume each before advancing: the shards behind it are the gather's buffers. ``head``: the
    model's head (``scalar``: the replicated score head is taken from TP rank 0 as it is, no gather).
    ``names_elsewhere``: the other ranks yield ``(hf_name, None)`` for each tensor once their part of its gather is
    done, so they can act in step with rank 0 (a colocated node leader receives each tensor rank 0 forwards).
    """
    from megatron.core import parallel_state as ps

    tp_rank, tp, pp_rank, pp = _ranks()
    dp_rank = ps.get_data_parallel_rank(with_context_parallel=True)
    me = dist.get_rank() if dist.is_initialized() else 0
    params = {glob: p for _, glob, p in named_local_params(model)}
    # Stage s is sent to rank 0 by its (tp 0, dp 0) rank: exactly the members of rank 0's own pipeline group.
    # Only rank 0 needs their global ids; a sender recognises itself by its coordinates (a rank with
    # tp_rank > 0 must never take its own PP group's entry for the sender).
    stage_src = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group()) if pp > 1 and me == 0 else None
    dtype = next(iter(params.values())).dtype if params else torch.float32
    tp_group = ps.get_tensor_model_parallel_group()
    for stage, glob, hf_names in _hf_order(preset, pipeline_split(model), head):
        merged = None
        if stage == pp_rank and dp_rank == 0:
            p = params[glob].detach()
            if hf_names == [SCORE]:  # replicated over TP (models.heads.ScalarHead): every TP rank holds all of it
                merged = [(SCORE, p.clone())] if tp_rank == 0 else None
            else:
                if tp > 1:
                    shards = [torch.empty_like(p) for _ in range(tp)]
                    dist.all_gather(shards, p.contiguous(), group=tp_group)
                else:
                    shards = [p]
                if lazy and me == 0:  # global rank 0 (tp_rank 0) consumes the pieces itself
                    merged = [(t.name, t) for t in mapping.mcore_to_hf_pieces(glob, shards, preset)]
                elif tp_rank == 0:
                    merged = mapping.mcore_to_hf(glob, shards, preset)
        if pp > 1 and stage > 0:
            if stage == pp_rank and tp_rank == 0 and dp_rank == 0:
                for _, t in merged:
                    dist.send(t.contiguous(), dst=0)
            elif me == 0:
                merged = []
                for n in hf_names:
                    buf = torch.empty(_hf_shape(n, preset), dtype=dtype, device=p_device(params))
                    dist.recv(buf, src=stage_src[stage])
                    merged.append((n, buf))
        if me == 0:
            yield from merged
        elif names_elsewhere:
            yield from ((n, None) for n in hf_names)


def p_device(params: dict) -> torch.device:
    return next(iter(params.values())).device if params else torch.device("cpu")


def export_hf(model, preset: LlamaPreset, out: str | Path, tokenizer_dir=None, dtype=None, extra_config=None,
              head: str = "lm") -> None:
    """Collective: write the model as an HF Llama directory (atomically, streamed) from global rank 0.

    ``head="scalar"`` (a reward model): a ``LlamaForSequenceClassification`` with ``num_labels=1`` (``score.weight``,
    no ``lm_head``), what ``transformers`` and the PPO value model's loader (``rlvr.value_init_hf``) read."""
    it = iter_hf_tensors(model, preset, head=head)
    if (dist.get_rank() if dist.is_initialized() else 0) == 0:
        cfg = hf_config_from_preset(preset, dtype=str(dtype or "float32").replace("torch.", ""))
        if head == "scalar":
            cfg.update(architectures=["LlamaForSequenceClassification"], num_labels=1)
        cfg.update(extra_config or {})
        write_hf_dir(out, cfg, it, tokenizer_dir=tokenizer_dir, dtype=dtype)
    else:
        for _ in it:
            pass
    if dist.is_initialized():
        dist.barrier()


def save_rank_files(reader: HFReader, preset: LlamaPreset, out: str | Path, tp: int, pp: int, dtype=None) -> Path:
    """Offline hf->mcore: one ``mp_rank_TT_PPP/model.safetensors`` per (tp, pp) rank, written atomically.

    Holds one rank's shard at a time (never the whole model twice).
    """
    from safetensors.torch import save_file

    from megatron_tulu.models.build import check_divisibility

    check_divisibility(preset, tp, pp)
    reader.check_keys(mapping.all_hf_names(preset))
    out = Path(out)
    with atomic_dir(out) as tmp:
        for pp_rank in range(pp):
            for tp_rank in range(tp):
                state = {}
                for local, glob in mapping.rank_param_names(preset, pp_rank, pp):
                    t = mapping.hf_to_mcore_shard(glob, reader.get, preset, tp_rank, tp)
                    state[local] = t.to(dtype or t.dtype).contiguous()
                d = tmp / f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
                d.mkdir()
                save_file(state, str(d / "model.safetensors"))
                del state
        meta = {"format": "megatron_tulu.rank_files.v1", "tp": tp, "pp": pp, "preset": preset.to_dict()}
        (tmp / FORMAT_FILE).write_text(json.dumps(meta, indent=2))
        # the same list mcore-to-hf copies back, so a round trip keeps tokenizer AND generation_config.json
        for f in TOKENIZER_FILES:
            if (reader.path / f).exists():
                (tmp / f).write_bytes((reader.path / f).read_bytes())
        (tmp / "hf_config.json").write_text(json.dumps(reader.config, indent=2))
    return out


def read_rank_meta(ckpt: str | Path) -> dict:
    f = Path(ckpt) / FORMAT_FILE
    if not f.exists():
        raise FileNotFoundError(f"{f} not found: {ckpt} is not a converted megatron checkpoint")
    return json.loads(f.read_text())


def load_rank_file(model, ckpt: str | Path, backbone_only: bool = False) -> None:
    """Load the converter's per-rank file for this rank; the TP/PP layout must match the checkpoint's.
    ``backbone_only``: the model's head is not the LM head (a scalar head keeps its own init)."""
    from safetensors.torch import load_file

    meta = read_rank_meta(ckpt)
    tp_rank, tp, pp_rank, pp = _ranks()
    split = pipeline_split(model)
    if not split.is_plain:
        raise ValueError(f"{ckpt} holds per-rank files of an even split over pp={meta['pp']}; this run splits the "
                         f"layers as {split}: start from the HF directory (model.init_hf) or a training checkpoint")
    if (meta["tp"], meta["pp"]) != (tp, pp):
        raise ValueError(
            f"{ckpt} was converted for tp={meta['tp']} pp={meta['pp']}, but this run has tp={tp} pp={pp}; "
            f"convert again with --tp {tp} --pp {pp} (or start from the HF directory)"
        )
    f = Path(ckpt) / f"mp_rank_{tp_rank:02d}_{pp_rank:03d}" / "model.safetensors"
    if not f.exists():
        raise FileNotFoundError(f"missing shard {f}")
    state = load_file(str(f))
    with torch.no_grad():
        seen = set()
        for local, glob, p in named_local_params(model):
            if backbone_only and glob == "output_layer.weight":
                seen.update(k for k in state if k.endswith("output_layer.weight"))
                continue
            if local not in state:
                raise KeyError(f"{f}: missing tensor {local!r}")
            if state[local].shape != p.shape:
                raise ValueError(f"{f}: {local!r} has shape {tuple(state[local].shape)}, model expects {tuple(p.shape)}")
            p.copy_(state[local].to(p.dtype))
            seen.add(local)
        extra = sorted(set(state) - seen)
        if extra:
            raise KeyError(f"{f}: unexpected tensors {extra[:5]}")


def rank_files_to_hf(ckpt: str | Path, out: str | Path, dtype=None, shard_bytes: int = 5 * 2**30) -> Path:
    """Offline mcore->hf from the converter's per-rank files; streams tensor by tensor into output shards of
    ``shard_bytes`` (the most it holds besides one full tensor)."""
    from safetensors import safe_open

    from megatron_tulu.models.presets import LlamaPreset as P

    meta = read_rank_meta(ckpt)
    preset = P.from_dict(meta["preset"])
    tp, pp = meta["tp"], meta["pp"]
    ckpt = Path(ckpt)
    handles = {}

    def shard(tp_rank, pp_rank, local):
        key = (tp_rank, pp_rank)
        if key not in handles:
            f = ckpt / f"mp_rank_{tp_rank:02d}_{pp_rank:03d}" / "model.safetensors"
            if not f.exists():
                raise FileNotFoundError(f"missing shard {f}")
            handles[key] = safe_open(str(f), "pt")
        h = handles[key]
        if local not in h.keys():
            raise KeyError(f"{ckpt}/mp_rank_{tp_rank:02d}_{pp_rank:03d}: missing tensor {local!r}")
        return h.get_tensor(local)

    def tensors():
        for pp_rank in range(pp):
            for local, glob in mapping.rank_param_names(preset, pp_rank, pp):
                if glob == "output_layer.weight" and preset.tie_embeddings:
                    continue
                yield from mapping.mcore_to_hf(glob, [shard(r, pp_rank, local) for r in range(tp)], preset)

    hf_cfg_file = ckpt / "hf_config.json"
    cfg = json.loads(hf_cfg_file.read_text()) if hf_cfg_file.exists() else hf_config_from_preset(preset)
    return write_hf_dir(out, cfg, tensors(), shard_bytes=shard_bytes, tokenizer_dir=ckpt, dtype=dtype)
