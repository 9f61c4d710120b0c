"""Check a conversion numerically: megatron (TP/PP over gloo) vs transformers on the same batch, in fp32.

    python -m megatron_tulu.checkpoint.verify --hf DIR --tp N --pp M [--seq 16] [--batch 2]

Spawns the ``tp * pp`` processes itself. Prints ``max_abs_diff=<x>`` as its last line; exits 1 above
``--tol`` (default 1e-4).
"""

from __future__ import annotations

import argparse
import sys

import torch


def fixed_batch(vocab: int, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def megatron_logits(hf_dir: str, tp: int, pp: int, input_ids: torch.Tensor, source: str | None = None):
    """Per-rank body: build the model at (tp, pp), load weights (HF dir, or converted rank files in
    ``source``), return full logits ``[B, S, V]`` on global rank 0 (None elsewhere)."""
    import torch.distributed as dist

    from megatron_tulu.checkpoint.hf_io import HFReader, preset_from_hf_config
    from megatron_tulu.checkpoint.model_io import load_hf_into_model, load_rank_file
    from megatron_tulu.models.build import ModelOptions, build_model
    from megatron_tulu.models.forward import forward_only_logits
    from megatron_tulu.models.logprobs import gather_vocab
    from megatron_tulu.parallel import ParallelDims, init_distributed

    dims = init_distributed(ParallelDims(tp=tp, pp=pp, world=tp * pp))
    reader = HFReader(hf_dir)
    preset = preset_from_hf_config(reader.config)
    model = build_model(preset, dims.tp, dims.pp, ModelOptions(impl="local", dtype="fp32"))
    if source:
        load_rank_file(model, source)
    else:
        load_hf_into_model(model, reader, preset)
    model.eval()
    logits = forward_only_logits(model, input_ids)
    full = gather_vocab(logits, preset.vocab_size) if logits is not None else None
    # the last pipeline stage's TP rank 0 holds the result; send it to global rank 0
    last = dist.get_world_size() - tp
    if pp > 1:
        if dist.get_rank() == last:
            dist.send(full.contiguous(), dst=0)
        elif dist.get_rank() == 0:
            full = torch.empty(*input_ids.shape, preset.vocab_size)
            dist.recv(full, src=last)
    return full if dist.get_rank() == 0 else None


def hf_logits(hf_dir: str, input_ids: torch.Tensor) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(input_ids).logits


def verify(hf_dir: str, tp: int, pp: int, batch: int = 2, seq: int = 16, source: str | None = None) -> float:
    from megatron_tulu.checkpoint.hf_io import HFReader
    from megatron_tulu.testing import run_distributed

    vocab = HFReader(hf_dir).config["vocab_size"]
    ids = fixed_batch(vocab, batch, seq)
    ours = run_distributed(megatron_logits, tp * pp, args=(hf_dir, tp, pp, ids, source), timeout_s=600)[0]
    ref = hf_logits(hf_dir, ids)
    return float((ours - ref).abs().max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megatron_tulu.checkpoint.verify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", required=True, help="HF Llama directory (the oracle)")
    ap.add_argument("--ckpt", default=None, help="converted megatron dir to check instead of converting on load")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    diff = verify(args.hf, args.tp, args.pp, args.batch, args.seq, source=args.ckpt)
    print(f"max_abs_diff={diff:.3e}")
    return 0 if diff <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
