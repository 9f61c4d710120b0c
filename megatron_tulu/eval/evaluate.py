"""Evaluate a checkpoint on verifiable tasks: generate with a rollout engine, score with the RLVR verifiers.

Two input modes (greedy decoding in both; the tokenizer is ``--tokenizer`` or the checkpoint directory's)::

    python -m megatron_tulu.eval --ckpt HF_DIR --tasks gsm8k,math,ifeval --data DIR [--engine auto|vllm|torch]
    python -m megatron_tulu.eval --ckpt HF_DIR --file TASK=PATH [--file TASK=PATH ...] --out DIR
        [--limit N] [--engine auto|vllm|torch] [--max-new-tokens N] [--ifeval-partial-credit]

``--data DIR`` holds ``eval_<task>.jsonl`` files in the RLVR row format (``messages``, ``ground_truth``,
``dataset``), prompted with the rows' own messages; ``--out FILE`` also writes the results JSON there.

``--file TASK=PATH`` reads an eval set as released (JSONL or Parquet), schema detected per file from its fields:
openai/gsm8k (``question``, ``answer``), hendrycks MATH / MATH-500 (``problem``, ``solution``[, ``answer``]),
google/IFEval (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``), or RLVR rows; a file matching none is
refused, naming it and the fields it lacks, before any engine starts. TASK names the output and need not be the
data set's name. Prompts are Tülu 3's (:mod:`megatron_tulu.eval.prompts`): GSM8K 8-shot chain-of-thought, MATH
4-shot Minerva, IFEval 0-shot, as one user turn through the Tülu chat template. ``--max-new-tokens`` defaults to
1024 for gsm8k and math and 2048 for ifeval (room for chain-of-thought). ``--out DIR`` gets ``results.json``
({TASK: accuracy, n, correct, timeouts, ...}) and ``<TASK>.jsonl`` (per example: prompt (rendered text), response,
ground_truth, correct). ``--ifeval-partial-credit`` passes ``ifeval_partial_credit=True`` to the verifiers
(``rewards.batch.verify_batch``): an IFEval verdict may then be a fraction, ``accuracy`` is the mean score and
``correct`` counts full marks (each JSONL line also has ``score``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_tulu.rollout.factory import make_engine


DEFAULT_MAX_NEW_TOKENS = {"gsm8k": 1024, "math": 1024, "ifeval": 2048}
"""``--file`` mode's generation budget per verifier when ``--max-new-tokens`` is not given: chain-of-thought
needs room (OLMES gives Tülu 3's MATH 1024 and IFEval 2048 tokens)."""
DATA_MODE_MAX_NEW_TOKENS = 96
"""``--data`` mode's default (the demo's short synthetic answers)."""
ENGINE_TIMEOUT_S = 6 * 3600.0
"""Bound on one generation call of an evaluation (one task's examples at one budget, which on a large set and a big
model takes hours), where the engine answers calls with a bound: a vLLM engine in a ``$MT_VLLM_PYTHON`` child
process (the image, ``rollout.engine_process``)."""


def evaluate(ckpt: str, tasks: list[str], data: str, tokenizer: str | None = None, engine=None,
             max_new_tokens: int = DATA_MODE_MAX_NEW_TOKENS, limit: int | None = None, engine_kind: str = "auto",
             engine_timeout_s: float = ENGINE_TIMEOUT_S) -> dict:
    """Accuracy per task (and counts) on ``data/eval_<task>.jsonl``. Every task's file is read and its rows checked
    before the engine starts (a missing file is ``FileNotFoundError``, a bad row ``DataFileError`` naming file and
    line). ``engine``: a live RolloutEngine to reuse (not shut down here); otherwise one is started with
    ``make_engine(engine_kind, ckpt)`` and shut down however the evaluation ends."""
    from megatron_tulu.data.chat import tokenize_prompt
    from megatron_tulu.data.loaders import read_rows
    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.rewards.batch import verify_batch
    from megatron_tulu.rollout.base import SamplingConfig

    # every file read first: read_rows checks each row (and its ground truth against the verifier) by file and line
    rows = {task: read_rows(Path(data) / f"eval_{task}.jsonl", "rlvr")[:limit] for task in tasks}
    tok = load_tokenizer(tokenizer or ckpt)
    prompts = {task: [tokenize_prompt(r, tok, None) for r in task_rows] for task, task_rows in rows.items()}
    own = engine is None
    engine = engine or make_engine(engine_kind, ckpt, timeout_s=engine_timeout_s)
    results = {}
    try:
        for task, task_prompts in prompts.items():
            gens = engine.generate([p["prompt_ids"] for p in task_prompts],
                                   SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens,
                                                  stop_token_ids=[tok.eos_token_id]))
            recs = [{"dataset": p["dataset"], "ground_truth": p["ground_truth"],
                     "response": tok.decode(g.token_ids[0], skip_special_tokens=True)}
                    for p, g in zip(task_prompts, gens)]
            verdicts, m = verify_batch(recs, workers=0)
            results[task] = {"accuracy": sum(verdicts) / max(len(verdicts), 1), "n": len(verdicts),
                             "timeouts": m.get("timeouts", 0), "example": recs[0]["response"][:200] if recs else ""}
    finally:
        if own:
            engine.shutdown()
    return results


def check_partial_credit_supported() -> None:
    """TypeError when ``rewards.batch.verify_batch`` has no ``ifeval_partial_credit`` keyword yet."""
    import inspect

    from megatron_tulu.rewards.batch import verify_batch

    if "ifeval_partial_credit" not in inspect.signature(verify_batch).parameters:
        raise TypeError("--ifeval-partial-credit: megatron_tulu.rewards.batch.verify_batch() does not accept "
                        "ifeval_partial_credit= in this checkout (the rewards package has no IFEval partial credit)")


def evaluate_files(ckpt: str, files: list[tuple[str, str]], out: str | Path, tokenizer: str | None = None,
                   engine=None, engine_kind: str = "auto", max_new_tokens: int | None = None,
                   limit: int | None = None, ifeval_partial_credit: bool = False, template: str = "tulu",
                   workers: int | None = None, engine_timeout_s: float = ENGINE_TIMEOUT_S) -> dict:
    """Evaluate ``ckpt`` on released eval files ``[(task, path), ...]``; writes ``out/results.json`` and
    ``out/<task>.jsonl``; returns the results dict ({task: metrics}).

    Every file is read, its schema detected and every ground truth extracted before the engine starts (a bad file
    raises :class:`~megatron_tulu.eval.files.EvalFileError` naming it). ``engine``: a live RolloutEngine to reuse
    (not shut down here); otherwise one is started with ``make_engine(engine_kind, ckpt)`` and shut down before
    scoring. ``max_new_tokens``: one budget for every task, else :data:`DEFAULT_MAX_NEW_TOKENS` per verifier.
    """
    from megatron_tulu.data.chat import encode_text, render
    from megatron_tulu.data.tokenizer import load_tokenizer
    from megatron_tulu.eval.files import EvalFileError, load_eval_file
    from megatron_tulu.rewards.batch import validate_record, verify_batch
    from megatron_tulu.rollout.base import SamplingConfig

    tasks = [t for t, _ in files]
    dupes = sorted({t for t in tasks if tasks.count(t) > 1})
    if dupes:
        raise ValueError(f"--file: task name(s) {', '.join(dupes)} given more than once (each names an output file)")
    if ifeval_partial_credit:
        check_partial_credit_supported()
    loaded = {task: load_eval_file(path, limit) for task, path in files}  # every refusal before any engine starts
    for task, (_, examples) in loaded.items():
        for ex in examples:
            try:  # the verifier's own checks (known dataset, well-formed ground truth), before generating
                validate_record({"dataset": ex.dataset, "ground_truth": ex.ground_truth, "response": ""}, ex.where)
            except ValueError as e:
                raise EvalFileError(str(e)) from None

    def budget(ex) -> int:
        return max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(ex.dataset, DATA_MODE_MAX_NEW_TOKENS)

    tok = load_tokenizer(tokenizer or ckpt)
    texts = {task: [render(ex.messages, tok, template, add_generation_prompt=True) for ex in examples]
             for task, (_, examples) in loaded.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    own = engine is None
    engine = engine or make_engine(engine_kind, ckpt, timeout_s=engine_timeout_s)
    responses = {}
    try:
        for task, (_, examples) in loaded.items():
            got = [""] * len(examples)
            for b in sorted({budget(ex) for ex in examples}):  # one generate() per budget (RLVR files mix sets)
                idx = [i for i, ex in enumerate(examples) if budget(ex) == b]
                gens = engine.generate([encode_text(texts[task][i], tok) for i in idx],
                                       SamplingConfig(temperature=0.0, max_new_tokens=b,
                                                      stop_token_ids=[tok.eos_token_id]))
                for i, g in zip(idx, gens):
                    got[i] = tok.decode(g.token_ids[0], skip_special_tokens=True)
            responses[task] = got
    finally:
        if own:
            engine.shutdown()

    extra = {"ifeval_partial_credit": True} if ifeval_partial_credit else {}
    results = {}
    for (task, path), (schema, examples) in zip(files, loaded.values()):
        recs = [{"dataset": ex.dataset, "ground_truth": ex.ground_truth, "response": r}
                for ex, r in zip(examples, responses[task])]
        verdicts, m = verify_batch(recs, workers=workers, **extra)
        scores = [float(v) for v in verdicts]
        correct = [s >= 1.0 for s in scores]
        results[task] = {
            "accuracy": sum(scores) / len(scores), "n": len(scores), "correct": sum(correct),
            "timeouts": int(m.get("timeouts", 0)), "errors": int(m.get("errors", 0)),
            "schema": schema.name, "datasets": sorted({ex.dataset for ex in examples}), "file": str(path),
            "max_new_tokens": max(budget(ex) for ex in examples), "ifeval_partial_credit": ifeval_partial_credit,
        }
        with open(out / f"{task}.jsonl", "w", encoding="utf-8") as f:
            for i, (ex, text, rec, ok, score) in enumerate(zip(examples, texts[task], recs, correct, scores)):
                f.write(json.dumps({"index": i, "source": ex.where, "dataset": ex.dataset, "prompt": text,
                                    "response": rec["response"], "ground_truth": ex.ground_truth,
                                    "correct": ok, "score": score}, ensure_ascii=False) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megatron_tulu.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="HF-format model directory")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="directory with eval_<task>.jsonl RLVR rows (with --tasks)")
    src.add_argument("--file", action="append", metavar="TASK=PATH",
                     help="a released eval file (JSONL or Parquet; gsm8k, MATH/MATH-500, IFEval or RLVR rows); "
                          "repeatable; TASK names the output <TASK>.jsonl")
    ap.add_argument("--tasks", default=None, help="--data mode: comma-separated tasks (default gsm8k,math,ifeval)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint directory)")
    ap.add_argument("--engine", default="auto", choices=["auto", "vllm", "torch"])
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help=f"generation budget (default: --data {DATA_MODE_MAX_NEW_TOKENS}; --file "
                         + ", ".join(f"{k} {v}" for k, v in DEFAULT_MAX_NEW_TOKENS.items()) + ")")
    ap.add_argument("--limit", type=int, default=None, help="first N examples of each task")
    ap.add_argument("--engine-timeout-s", type=float, default=ENGINE_TIMEOUT_S,
                    help="bound on one generation call (one task at one budget) of an engine that answers calls: a "
                         "vLLM engine in a $MT_VLLM_PYTHON child process, as in the image (default %(default)gs)")
    ap.add_argument("--ifeval-partial-credit", action="store_true",
                    help="--file mode: score IFEval with partial credit (ifeval_partial_credit=True)")
    ap.add_argument("--out", default=None,
                    help="--file mode: output directory (required); --data mode: also write the results JSON here")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        ap.error("--max-new-tokens must be >= 1")
    if args.file is not None:
        from megatron_tulu.eval.files import parse_file_arg

        if args.tasks is not None:
            ap.error("--tasks goes with --data; with --file, TASK=PATH names each task")
        if not args.out:
            ap.error("--file needs --out DIR")
        try:
            files = [parse_file_arg(spec) for spec in args.file]
        except ValueError as e:
            ap.error(str(e))
        try:
            res = evaluate_files(args.ckpt, files, args.out, args.tokenizer, engine_kind=args.engine,
                                 max_new_tokens=args.max_new_tokens, limit=args.limit,
                                 ifeval_partial_credit=args.ifeval_partial_credit,
                                 engine_timeout_s=args.engine_timeout_s)
        except (ValueError, FileNotFoundError, TypeError) as e:  # bad input (EvalFileError names file and line),
            # a task named twice, an engine that cannot start here ($MT_VLLM_PYTHON, no vLLM) or refuses a prompt
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(res, indent=2))
        return 0
    if args.ifeval_partial_credit:
        ap.error("--ifeval-partial-credit goes with --file")
    try:
        res = evaluate(args.ckpt, (args.tasks or "gsm8k,math,ifeval").split(","), args.data, args.tokenizer,
                       max_new_tokens=args.max_new_tokens or DATA_MODE_MAX_NEW_TOKENS, limit=args.limit,
                       engine_kind=args.engine, engine_timeout_s=args.engine_timeout_s)
    except (ValueError, FileNotFoundError) as e:  # bad input (file and line), an engine that cannot start here or
        # that refuses a prompt (vLLM: longer than its max_model_len)
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
