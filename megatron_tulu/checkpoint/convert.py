"""HF <-> megatron checkpoint conversion CLI.

    python -m megatron_tulu.checkpoint.convert hf-to-mcore --hf DIR --out DIR --tp N --pp M [--dtype bf16]
    python -m megatron_tulu.checkpoint.convert mcore-to-hf --ckpt DIR --out DIR [--dtype bf16]

Output directories are written under a temporary name and renamed at the end (never partial).
"""

from __future__ import annotations

import argparse
import sys

import torch

from megatron_tulu.checkpoint.hf_io import HFReader, preset_from_hf_config
from megatron_tulu.checkpoint.model_io import rank_files_to_hf, save_rank_files

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16, "keep": None}


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
    b = sub.add_parser("mcore-to-hf", help="converted megatron dir -> HF Llama dir")
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
            out = rank_files_to_hf(args.ckpt, args.out, dtype=DTYPES[args.dtype])
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
