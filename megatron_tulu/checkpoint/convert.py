"""HF <-> megatron checkpoint conversion CLI.

    python -m megatron_tulu.checkpoint.convert hf-to-mcore --hf DIR --out DIR --tp N --pp M [--dtype bf16]
    python -m megatron_tulu.checkpoint.convert mcore-to-hf --ckpt DIR --out DIR [--dtype bf16]

``mcore-to-hf --ckpt`` takes a converted dir (per-rank files) or a training checkpoint: a ``step_*`` dir, a
``checkpoints`` root or a run dir (then the newest complete checkpoint), at whatever TP/PP it was saved; the
model shape and tokenizer are read from the checkpoint. That is how a run is exported to HF on demand. A checkpoint
whose output layer is a one-row score head (the reward model's, or RLVR's value model's) becomes a
``LlamaForSequenceClassification`` (``score.weight``, ``num_labels`` 1), as the RM trainer's own export; any other
a ``LlamaForCausalLM``.

Output directories are written under a temporary name and renamed at the end (never partial).
"""

from __future__ import annotations

import argparse
import sys

import torch

from megatron_tulu.checkpoint.hf_io import HFReader, preset_from_hf_config
from megatron_tulu.checkpoint.model_io import rank_files_to_hf, save_rank_files

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16, "keep": None}


def checkpoint_head(path) -> str:
    """The head of a training checkpoint's model (``models.llama.HEADS``): ``scalar`` when its ``output_layer.weight``
    has one row (a reward or value model's score head: ``[1, hidden]``), else ``lm``. Read from the checkpoint's
    tensor metadata (global shapes), so it holds for every checkpoint a trainer wrote, whatever its TP/PP."""
    from megatron.core import dist_checkpointing

    w = dist_checkpointing.load_tensors_metadata(str(path)).get("output_layer.weight")
    return "scalar" if w is not None and w.global_shape[0] == 1 else "lm"


def training_checkpoint_to_hf(ckpt, out, dtype=None):
    """Export a training checkpoint (dist_checkpointing, any TP/PP) to an HF dir in this one process.

    Loads the weights resharded to TP=PP=1 (megatron's reshardable format), then streams them out through the
    same export the trainers use at the end of a run, with the checkpoint's head (:func:`checkpoint_head`): a
    reward model becomes a ``LlamaForSequenceClassification``. Starts a one-process megatron runtime here.
    """
    from megatron_tulu.checkpoint.model_io import export_hf
    from megatron_tulu.models.build import ModelOptions, build_model
    from megatron_tulu.models.presets import LlamaPreset
    from megatron_tulu.parallel import ParallelDims, init_distributed
    from megatron_tulu.checkpoint import distributed as checkpointing

    path, state = checkpointing.resolve(ckpt)
    if "preset" not in state:
        raise ValueError(f"{path}/trainer_state.json has no model preset (saved by an older version); export it "
                         "with the trainer instead (checkpoint.export_hf=true)")
    preset = LlamaPreset.from_dict(state["preset"])
    head = checkpoint_head(path)
    init_distributed(ParallelDims(world=1))
    model = build_model(preset, 1, 1, ModelOptions(impl="local", dtype="fp32", head=head))
    checkpointing.load_model_weights(path, [model])
    export_hf(model, preset, out, tokenizer_dir=state.get("tokenizer_dir"), dtype=dtype,
              extra_config=state.get("hf_extra_config") or {}, head=head)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megatron_tulu.checkpoint.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF Llama dir -> per-rank megatron shards for a TP/PP layout")
    a.add_argument("--hf", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--tp", type=int, default=1)
    a.add_argument("--pp", type=int, default=1)
    a.add_argument("--dtype", choices=list(DTYPES), default="keep")
    b = sub.add_parser("mcore-to-hf", help="converted megatron dir or training checkpoint -> HF Llama dir "
                       "(a reward-model checkpoint: LlamaForSequenceClassification)")
    b.add_argument("--ckpt", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--dtype", choices=list(DTYPES), default="keep")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "hf-to-mcore":
            reader = HFReader(args.hf)
            preset = preset_from_hf_config(reader.config, name=str(args.hf))
            out = save_rank_files(reader, preset, args.out, args.tp, args.pp, dtype=DTYPES[args.dtype])
        else:
            from megatron_tulu.checkpoint.distributed import is_training_checkpoint

            if is_training_checkpoint(args.ckpt):
                out = training_checkpoint_to_hf(args.ckpt, args.out, dtype=DTYPES[args.dtype])
            else:
                out = rank_files_to_hf(args.ckpt, args.out, dtype=DTYPES[args.dtype])
    except (ValueError, KeyError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
