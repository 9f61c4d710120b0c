"""Shared helpers for the foundation tests: tiny random HF Llamas and the per-rank bodies that
``megatron_tulu.testing.run_distributed`` runs (module-level so spawned processes can import them).

Each per-rank body batches many checks into ONE launch (a launch costs ~10 s on 2 cores): with 4 processes,
layouts smaller than 4 ranks run with data parallelism filling the rest (every DP replica computes the same
thing, so the result equals the plain layout).
"""

from __future__ import annotations

from pathlib import Path

import torch

LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def make_hf_llama(
    out_dir: str | Path, *, vocab: int = 301, hidden: int = 64, inter: int = 96, layers: int = 2, heads: int = 8,
    kv_heads: int = 2, tie: bool = False, rope_scaling: bool = True, seed: int = 0, rope_theta: float = 500000.0,
) -> Path:
    """Save a random fp32 ``LlamaForCausalLM`` (config.json + safetensors) to ``out_dir``.

    Every tensor, norms included, is drawn at random so that a swapped or mis-sliced weight shows up.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=16384, rms_norm_eps=1e-5,
        rope_theta=rope_theta, rope_scaling=dict(LLAMA3_ROPE) if rope_scaling else None,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
            else:  # RMSNorm weights: around 1 but not all ones
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def make_hf_from_preset(out_dir: str | Path, preset, seed: int = 0) -> Path:
    """Random HF checkpoint with exactly the shape of a ``LlamaPreset`` (e.g. ``get_preset("tiny")``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_tulu.checkpoint.hf_io import hf_config_from_preset

    cfg = {k: v for k, v in hf_config_from_preset(preset).items() if k not in ("architectures", "torch_dtype")}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.05)
            else:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def read_hf_tensors(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    from megatron_tulu.checkpoint.hf_io import HFReader

    return dict(HFReader(hf_dir).items())


# ----------------------------------------------------------------------------------------------- per-rank bodies


def rank_conversion_checks(jobs, export_jobs, mismatch_ckpt):
    """Per-rank body of the conversion test (4 processes).

    Args:
        jobs: list of ``(hf_dir, tp, pp, rank_files_dir_or_None, input_ids)``; full logits per job on rank 0.
        export_jobs: list of ``(hf_dir, export_out_dir, tp, pp)``: load at that layout (DP fills the rest),
            return ``iter_hf_tensors`` on rank 0 and write ``export_hf`` to ``export_out_dir``.
        mismatch_ckpt: rank files converted for tp=1 pp=1, loaded here at tp=2 pp=2: the error text is returned.
    """
    import torch.distributed as dist

    from megatron_tulu.checkpoint.hf_io import HFReader, preset_from_hf_config
    from megatron_tulu.checkpoint.model_io import (
        export_hf, hf_tensor_metas, iter_hf_tensors, load_hf_into_model, load_rank_file,
    )
    from megatron_tulu.checkpoint.verify import megatron_logits
    from megatron_tulu.models.build import ModelOptions, build_model
    from megatron_tulu.parallel import ParallelDims, init_distributed

    out = {"logits": [], "iter": [], "mismatch_error": None}
    for hf_dir, tp, pp, source, ids in jobs:
        out["logits"].append(megatron_logits(hf_dir, tp, pp, ids, source))
    for hf_dir, export_dir, tp, pp in export_jobs:
        dims = init_distributed(ParallelDims(tp=tp, pp=pp, world=dist.get_world_size()))
        preset = preset_from_hf_config(HFReader(hf_dir).config)
        model = build_model(preset, dims.tp, dims.pp, ModelOptions(impl="local", dtype="fp32"))
        load_hf_into_model(model, hf_dir, preset)
        got = {name: t.clone() for name, t in iter_hf_tensors(model, preset)}
        out["iter"].append(got if dist.get_rank() == 0 else None)
        out.setdefault("metas", []).append(hf_tensor_metas(preset, dims.pp, torch.float32))
        export_hf(model, preset, export_dir)
    dims = init_distributed(ParallelDims(tp=2, pp=2, world=4))
    hf_dir = jobs[0][0]
    preset = preset_from_hf_config(HFReader(hf_dir).config)
    model = build_model(preset, 2, 2, ModelOptions(impl="local", dtype="fp32"))
    try:
        load_rank_file(model, mismatch_ckpt)
    except ValueError as e:
        out["mismatch_error"] = str(e)
    return out if dist.get_rank() == 0 else None


def _hf_grads_of_rank(model, preset):
    """This rank's parameter grads merged over TP and named by HF names (filled on TP rank 0, DP rank 0)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_tulu.checkpoint import mapping
    from megatron_tulu.checkpoint.model_io import named_local_params

    tp, cp = ps.get_tensor_model_parallel_world_size(), ps.get_context_parallel_world_size()
    keep = (ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
            and ps.get_context_parallel_rank() == 0)
    grads = {}
    for _, glob, p in named_local_params(model):
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if cp > 1:  # what DDP does over DP x CP: each CP rank holds cp x its tokens' part (the schedule's loss scale)
            g = g.clone()
            dist.all_reduce(g, group=ps.get_context_parallel_group())
            g /= cp
        if tp > 1:
            shards = [torch.empty_like(g) for _ in range(tp)]
            dist.all_gather(shards, g.contiguous(), group=ps.get_tensor_model_parallel_group())
        else:
            shards = [g]
        if keep:
            for name, t in mapping.mcore_to_hf(glob, shards, preset):
                grads[name] = t.clone()
    return grads


def rank_train_step_equivalence(hf_dir, layouts, input_ids, num_microbatches):
    """Per-rank body: for each ``(tp, pp, cp)`` load the same HF weights, run forward+backward of the summed token
    loss ``-sum(logprobs(targets))`` through ``get_forward_backward_func`` and return, per layout, the loss (last
    pipeline stage, summed over micro-batches) and the grads by HF name, from every rank that holds some."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_tulu.checkpoint.hf_io import HFReader, preset_from_hf_config
    from megatron_tulu.checkpoint.model_io import load_hf_into_model
    from megatron_tulu.models.build import ModelOptions, build_model
    from megatron_tulu.models.context_parallel import schedule_seq_length
    from megatron_tulu.models.logprobs import token_logprobs
    from megatron_tulu.parallel import ParallelDims, init_distributed

    world = dist.get_world_size() if dist.is_initialized() else int(__import__("os").environ["WORLD_SIZE"])
    results = []
    for tp, pp, cp in layouts:
        dims = init_distributed(ParallelDims(tp=tp, pp=pp, cp=cp, world=world))
        preset = preset_from_hf_config(HFReader(hf_dir).config)
        model = build_model(preset, dims.tp, dims.pp, ModelOptions(impl="local", dtype="fp32"))
        load_hf_into_model(model, hf_dir, preset)
        model.train()
        b, s = input_ids.shape
        mbs = b // num_microbatches
        tokens, targets = input_ids[:, :-1].contiguous(), input_ids[:, 1:].contiguous()
        batches = iter(list(zip(tokens.split(mbs), targets.split(mbs))))
        pos = torch.arange(s - 1).unsqueeze(0)

        def step(data_iter, model):
            ids, tgt = next(data_iter)
            logits = model(ids, pos.expand_as(ids), None)

            def loss_fn(logits, tgt=tgt):
                loss = -token_logprobs(logits, tgt, model, true_vocab_size=preset.vocab_size).sum()
                return loss, {"loss_sum": loss.detach().clone()}

            return logits, loss_fn

        losses = get_forward_backward_func()(
            forward_step_func=step, data_iterator=batches, model=[model], num_microbatches=num_microbatches,
            seq_length=schedule_seq_length(model, s - 1), micro_batch_size=mbs, forward_only=False,
        )
        loss = float(sum(d["loss_sum"] for d in losses)) if ps.is_pipeline_last_stage() and losses else None
        results.append({"loss": loss, "grads": _hf_grads_of_rank(model, preset)})
    return results


def rank_vocab_logprobs(full_logits, targets, true_vocab, temperature, tp):
    """Per-rank body: shard ``full_logits [..., V_pad]`` over a TP group of size ``tp``, return this rank's
    (logprobs, entropy, grad of sum(logprobs) wrt the full logits gathered back) from TP group 0 only."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_tulu.models.logprobs import vocab_parallel_logprobs
    from megatron_tulu.parallel import ParallelDims, init_distributed

    init_distributed(ParallelDims(tp=tp, world=dist.get_world_size() if dist.is_initialized() else int(__import__("os").environ["WORLD_SIZE"])))
    r = ps.get_tensor_model_parallel_rank()
    shard = full_logits.chunk(tp, dim=-1)[r].clone().requires_grad_(True)
    lp, ent = vocab_parallel_logprobs(shard, targets, true_vocab_size=true_vocab, temperature=temperature,
                                      with_entropy=True)
    (lp.sum() + 0.5 * ent.sum()).backward()
    parts = [torch.empty_like(shard) for _ in range(tp)]
    dist.all_gather(parts, shard.grad.contiguous(), group=ps.get_tensor_model_parallel_group())
    return {"lp": lp.detach(), "ent": ent.detach(), "grad": torch.cat(parts, dim=-1)}


def rank_many(calls):
    """Run several per-rank bodies in one launch: ``calls`` is a list of ``(function_name, args)`` of this module."""
    return [globals()[name](*args) for name, args in calls]


def rank_platform_checks():
    """Per-rank body: what the CPU shim promises megatron-core (run_distributed already called setup("cpu"))."""
    from megatron.core.tensor_parallel import random as mrandom

    from megatron_tulu import platform

    out = {"setup_again": platform.setup("cpu"), "current_device": torch.cuda.current_device()}
    out["zeros_device"] = torch.zeros(2, device="cuda").device.type
    out["to_cuda_device"] = torch.ones(2).to("cuda").device.type
    out["dot_cuda_device"] = torch.ones(2).cuda().device.type
    out["platform_device"] = str(platform.device())
    out["backend"] = platform.backend()
    torch.cuda.synchronize()
    state = torch.cuda.get_rng_state()
    a = torch.rand(4)
    torch.cuda.set_rng_state(state)
    b = torch.rand(4)
    out["rng_roundtrip"] = bool(torch.equal(a, b))
    torch.cuda.manual_seed(123)
    c = torch.rand(4)
    torch.manual_seed(123)
    d = torch.rand(4)
    out["cuda_seed_is_cpu_seed"] = bool(torch.equal(c, d))
    # megatron's tracker forks an independent stream and restores the default one afterwards
    mrandom.model_parallel_cuda_manual_seed(7, tp_rank=0, ep_rank=0, etp_rank=0)
    before = torch.get_rng_state()
    with mrandom.get_cuda_rng_tracker().fork():
        e = torch.rand(4)
    out["fork_restores_default"] = bool(torch.equal(before, torch.get_rng_state()))
    with mrandom.get_cuda_rng_tracker().fork():
        f = torch.rand(4)
    out["fork_stream_advances"] = not bool(torch.equal(e, f))
    out["type_name"] = torch.ones(1).type()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        g = torch.ones(3, device="cuda") * 2
    torch.cuda.current_stream().wait_stream(side)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    end.record(torch.cuda.default_stream())
    end.synchronize()
    out["streams_ok"] = bool(g.sum() == 6) and start.elapsed_time(end) >= 0.0 and side.query()

    class AllocatesInBackward(torch.autograd.Function):  # as megatron's sequence-parallel comm ops do
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * torch.ones(grad.shape, device=torch.cuda.current_device())

    x = torch.ones(3, requires_grad=True)
    AllocatesInBackward.apply(x).sum().backward()
    out["backward_alloc_ok"] = bool(torch.equal(x.grad, torch.ones(3)))
    try:
        platform.setup("cuda")
        out["switch_error"] = None
    except RuntimeError as err:
        out["switch_error"] = str(err)
    return out


def rank_raise_on_one():
    import os

    if os.environ["RANK"] == "1":
        raise ValueError("boom from rank one")
    return "ok"


def rank_hang_on_one():
    import os
    import time

    if os.environ["RANK"] == "1":
        time.sleep(600)
    return "ok"


def rank_packed_vs_separate(hf_dir, docs, seq_len):
    """Per-rank body (1 process): logits of ``docs`` packed into one row (the SFT path: ``pack_sft`` + ``collate``
    + ``packed_attention_mask``) against each document run alone, and the same packed row with no mask.

    Returns ``(packed_err, unmasked_err, thd_err)``: the largest |logit difference| over every document token,
    the last for the THD path (``models.packed``: the packed row twice in one micro-batch, run as one flattened
    THD sequence with ``cu_seqlens``, both copies compared).
    """
    from megatron_tulu.checkpoint.hf_io import HFReader, preset_from_hf_config
    from megatron_tulu.checkpoint.model_io import load_hf_into_model
    from megatron_tulu.data.packing import pack_sft
    from megatron_tulu.data.sampler import collate
    from megatron_tulu.models.build import ModelOptions, build_model
    from megatron_tulu.models.packed import packed_seq_params
    from megatron_tulu.parallel import ParallelDims, init_distributed
    from megatron_tulu.data.packing import packed_attention_mask

    init_distributed(ParallelDims(world=1))
    preset = preset_from_hf_config(HFReader(hf_dir).config)
    model = build_model(preset, 1, 1, ModelOptions(impl="local", dtype="fp32"))
    load_hf_into_model(model, hf_dir, preset)
    model.eval()
    packed = pack_sft([{"input_ids": d, "labels": d} for d in docs], seq_len, pad_id=0)
    assert len(packed.rows) == 1, "the documents must fit in one row"
    row = packed.rows[0]
    b = collate([row], pad_id=0)
    mask = packed_attention_mask([row["cu_seqlens"]], b["input_ids"].shape[1])
    with torch.no_grad():
        with_mask = model(b["input_ids"], b["position_ids"], mask)[0]
        no_mask = model(b["input_ids"], b["position_ids"], None)[0]
        two = b["input_ids"].repeat(2, 1)
        thd = model(two, b["position_ids"].repeat(2, 1), None,
                    packed_seq_params=packed_seq_params([row["cu_seqlens"]] * 2, two.shape[1]))
        packed_err = unmasked_err = thd_err = 0.0
        for k, d in enumerate(docs):
            start = row["cu_seqlens"][k]
            ids = torch.tensor([d])
            alone = model(ids, torch.arange(len(d)).unsqueeze(0), None)[0]
            sl = slice(start, start + len(d))
            packed_err = max(packed_err, float((with_mask[sl] - alone).abs().max()))
            unmasked_err = max(unmasked_err, float((no_mask[sl] - alone).abs().max()))
            thd_err = max(thd_err, float((thd[:, sl] - alone).abs().max()))
    return packed_err, unmasked_err, thd_err
