"""Batch scoring CLI: ``python -m megatron_tulu.rewards.score PATH|-``.

Reads JSONL records (``dataset``, ``response``, ``ground_truth`` plus any other fields), writes each valid
record to stdout in input order with ``"correct": true|false`` added (with ``--ifeval-partial-credit``, IFEval rows
get the fraction of their constraints met, a number in [0, 1], and the others 0.0 or 1.0). ``dataset`` is matched
case-insensitively and written back as it was. Every malformed line (bad JSON,
missing/invalid field, unknown dataset) is reported on stderr with its line number; the valid lines are
still scored and written, and the exit status is then 1. A one-line summary (counts, timeouts, time)
goes to stderr. Blank lines are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_tulu.rewards.batch import validate_record, verify_batch
from megatron_tulu.rewards.registry import DEFAULT_TIMEOUT_S


def read_records(lines, source: str) -> tuple[list[dict], list[str]]:
    """(valid records, error messages naming ``source`` and the 1-based line number)."""
    records, errors = [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            errors.append(f"{where}: invalid JSON: {exc}")
            continue
        try:
            validate_record(record, where=where)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        records.append(record)
    return records, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_tulu.rewards.score", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="JSONL file, or - for stdin")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count; 0: in-process)")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="per-item time limit in seconds")
    parser.add_argument("--paper-compat", action="store_true",
                        help="reproduce the 2024 reference quirks (see gsm8k.py and the IFEval verifiers)")
    parser.add_argument("--ifeval-partial-credit", action="store_true",
                        help="IFEval rows score the fraction of their constraints met (default: all or nothing)")
    args = parser.parse_args(argv)

    if args.path == "-":
        records, errors = read_records(sys.stdin, "<stdin>")
    else:
        try:
            with open(args.path, encoding="utf-8") as f:
                records, errors = read_records(f, args.path)
        except OSError as exc:
            print(f"error: cannot read {args.path}: {exc}", file=sys.stderr)
            return 2
    verdicts, metrics = verify_batch(records, workers=args.workers, timeout_s=args.timeout_s,
                                     paper_compat=args.paper_compat, ifeval_partial_credit=args.ifeval_partial_credit)
    out = sys.stdout
    for record, ok in zip(records, verdicts):
        record["correct"] = ok
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    for message in metrics["error_messages"]:
        print(f"verifier error: {message}", file=sys.stderr)
    print(f"scored {metrics['n']} records: {metrics['correct']} correct, {metrics['timeouts']} timeouts, "
          f"{metrics['errors']} verifier errors, {len(errors)} malformed lines, {metrics['seconds']:.2f}s",
          file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
