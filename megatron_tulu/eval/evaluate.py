"""Evaluate a checkpoint on verifiable tasks: generate with a rollout engine, score with the RLVR verifiers.

    python -m megatron_tulu.eval --ckpt HF_DIR --tasks gsm8k,math,ifeval --data DIR [--engine auto|vllm|torch]

``--data DIR`` holds ``eval_<task>.jsonl`` files in the RLVR row format (``messages``, ``ground_truth``,
``dataset``); the tokenizer is taken from ``--tokenizer`` or the checkpoint directory. Greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_tulu.rollout.factory import make_engine


def evaluate(ckpt: str, tasks: list[str], data: str, tokenizer: str | None = None, engine=None,
             max_new_tokens: int = 96, limit: int | None = None) -> dict:
    """Accuracy per task (and counts). ``engine`` may be a live RolloutEngine to reuse."""
    from megatron_tulu.data.chat import tokenize_prompt
    from megatron_tulu.data.loaders import read_rows
    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.rewards.batch import verify_batch
    from megatron_tulu.rollout.base import SamplingConfig

    tok = load_tokenizer(tokenizer or ckpt)
    own = engine is None
    engine = engine or make_engine("auto", ckpt)
    results = {}
    try:
        for task in tasks:
            path = Path(data) / f"eval_{task}.jsonl"
            rows = read_rows(path, "rlvr")[:limit]
            prompts = [tokenize_prompt(r, tok, None) for r in rows]
            gens = engine.generate([p["prompt_ids"] for p in prompts],
                                   SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=[tok.eos_token_id]))
            recs = [{"dataset": p["dataset"], "ground_truth": p["ground_truth"],
                     "response": tok.decode(g.token_ids[0], skip_special_tokens=True)} for p, g in zip(prompts, gens)]
            verdicts, m = verify_batch(recs, workers=0)
            results[task] = {"accuracy": sum(verdicts) / max(len(verdicts), 1), "n": len(verdicts),
                             "timeouts": m.get("timeouts", 0), "example": recs[0]["response"][:200] if recs else ""}
    finally:
        if own:
            engine.shutdown()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megatron_tulu.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="HF-format model directory")
    ap.add_argument("--tasks", default="gsm8k,math,ifeval")
    ap.add_argument("--data", required=True, help="directory with eval_<task>.jsonl")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--engine", default="auto", choices=["auto", "vllm", "torch"])
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the results JSON here too")
    args = ap.parse_args(argv)
    engine = make_engine(args.engine, args.ckpt)
    res = evaluate(args.ckpt, args.tasks.split(","), args.data, args.tokenizer, engine=engine,
                   max_new_tokens=args.max_new_tokens, limit=args.limit)
    engine.shutdown()
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
