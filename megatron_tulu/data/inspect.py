"""See what a stage trains on: ``python -m megatron_tulu.data.inspect FILE --kind sft|preference|rlvr --tokenizer DIR``.

Each row goes through the stage's own reading and tokenization (:func:`loaders.read_rows` and
:func:`loaders.tokenize_rows`, the functions ``build_dataset`` runs), and is printed as the stage sees it:

* the decoded token ids, exactly ``tokenizer.decode(input_ids)`` (colored: loss-carrying tokens highlighted);
* which tokens carry loss (``label != -100``) as half-open token index spans ``[start, end)`` with their text;
* token counts (total, with loss) and whether the row was truncated at ``--max-len`` (the stage's
  ``train.seq_length``);
* for preference rows both sides, chosen then rejected; for RLVR rows the prompt (no token of it carries loss:
  the sampled response does), the ground truth as the verifier receives it, and the verifier the row's
  ``dataset`` selects (:func:`megatron_tulu.rewards.registry.get_verifier`).

A bad row (malformed JSON, wrong schema, a prompt over ``--max-len``, an unknown RLVR dataset) is a one-line
error naming ``file:line``, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TextIO

from megatron_tulu.data import chat
from megatron_tulu.data.loaders import (
    DataFileError,
    DataReport,
    read_rows,
    tokenize_rows,
)

INSPECT_KINDS = ("sft", "preference", "rlvr")
LOSS_STYLE = "\x1b[1;30;42m"  # bold, dark on green: tokens whose label is trained on
PROMPT_STYLE = "\x1b[2m"  # dim: tokens masked to -100
RESET = "\x1b[0m"


def loss_spans(labels: list[int]) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` runs of positions whose label is not ``IGNORE_INDEX``."""
    spans, start = [], None
    for i, lab in enumerate(labels):
        if lab != chat.IGNORE_INDEX and start is None:
            start = i
        elif lab == chat.IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(labels)))
    return spans


def render_tokens(ids: list[int], labels: list[int] | None, tokenizer, color: bool) -> str:
    """The decoded ids; with ``color`` each run of equal loss state is decoded on its own and wrapped in ANSI."""
    if not color:
        return tokenizer.decode(ids)
    if labels is None:
        labels = [chat.IGNORE_INDEX] * len(ids)
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] == chat.IGNORE_INDEX) != (labels[start] == chat.IGNORE_INDEX):
            style = PROMPT_STYLE if labels[start] == chat.IGNORE_INDEX else LOSS_STYLE
            # each line styled on its own, so a pager or a scrolled terminal never bleeds the highlight
            lines = tokenizer.decode(ids[start:i]).split("\n")
            parts.append("\n".join(f"{style}{line}{RESET}" if line else "" for line in lines))
            start = i
    return "".join(parts)


def _side(name: str, ids: list[int], labels: list[int] | None, full_len: int, max_len: int | None, tokenizer,
          color: bool, out: TextIO, note: str = "") -> None:
    spans = loss_spans(labels) if labels is not None else []
    n_loss = sum(b - a for a, b in spans)
    if labels is None:
        trunc = f"no (a prompt over max len {max_len} is an error, never truncated)"
    elif full_len > len(ids):
        trunc = f"yes, {full_len} -> {len(ids)} tokens (max len {max_len})"
    else:
        trunc = f"no (max len {max_len})"
    print(f"[{name}] tokens: {len(ids)} total, {n_loss} with loss; truncated: {trunc}", file=out)
    print(f"--- {name} text: tokenizer.decode(input_ids){', loss tokens highlighted' if color else ''} ---", file=out)
    print(render_tokens(ids, labels, tokenizer, color), file=out)
    if labels is None:
        print(f"--- {name} loss: none{note} ---", file=out)
        return
    print(f"--- {name} loss: {n_loss} tokens with label != -100, in {len(spans)} span(s) [start, end) ---", file=out)
    for a, b in spans:
        print(f"[{a}, {b}) {tokenizer.decode(ids[a:b])!r}", file=out)


def _tokenize(row: dict, kind: str, tokenizer, max_len: int | None, template: str,
              add_bos: bool) -> tuple[dict, dict | None]:
    """The stage's tokenization of ``row`` and, when it was truncated, the untruncated one (for the lengths)."""
    report = DataReport(kind=kind, sources=[])
    tok = tokenize_rows([row], kind, tokenizer, max_len, template, report=report, add_bos=add_bos)[0]
    full = tokenize_rows([row], kind, tokenizer, None, template, add_bos=add_bos)[0] if report.truncated else None
    return tok, full


def _verifier_name(dataset: str, get_verifier: Callable[[str], Callable]) -> str:
    fn = get_verifier(dataset)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def inspect_row(row: dict, kind: str, tokenizer, max_len: int | None, template: str, color: bool,
                out: TextIO | None = None, add_bos: bool = False) -> None:
    """Print one validated row (from :func:`read_rows`) as its stage sees it; errors are :class:`DataFileError`."""
    out = out or sys.stdout
    where = f"{row.get('_source', '<row>')}:{row.get('_line', 0)}"
    tok, full = _tokenize(row, kind, tokenizer, max_len, template, add_bos)
    print(f"=== {where} ({kind}, template {template}{', add_bos' if add_bos else ''}) ===", file=out)
    if kind == "sft":
        n_full = len(full["input_ids"]) if full else len(tok["input_ids"])
        _side("sft", tok["input_ids"], tok["labels"], n_full, max_len, tokenizer, color, out)
    elif kind == "preference":
        for side in ("chosen", "rejected"):
            ids = tok[f"{side}_input_ids"]
            n_full = len(full[f"{side}_input_ids"]) if full else len(ids)
            _side(side, ids, tok[f"{side}_labels"], n_full, max_len, tokenizer, color, out)
    elif kind == "rlvr":
        from megatron_tulu.rewards.registry import get_verifier

        try:
            verifier = _verifier_name(tok["dataset"], get_verifier)
        except ValueError as e:  # unknown dataset: the stage would fail on it too
            raise DataFileError(row.get("_source", "<row>"), row.get("_line", 0), str(e)) from None
        ids = tok["prompt_ids"]
        _side("prompt", ids, None, len(ids), max_len, tokenizer, color, out,
              note=" (RLVR trains on the sampled response, not on the prompt)")
        print(f"dataset: {tok['dataset']!r} -> verifier {verifier}", file=out)
        gt = tok["ground_truth"]
        print(f"ground truth: {gt!r}", file=out)
        try:
            parsed = json.loads(gt)
        except (TypeError, ValueError):
            parsed = None
        if isinstance(parsed, (dict, list)):
            print(f"ground truth (parsed JSON): {json.dumps(parsed, ensure_ascii=False)}", file=out)
    else:
        raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(INSPECT_KINDS)})")
    print(file=out)


def inspect_file(path: str, kind: str, tokenizer, rows: int = 3, max_len: int | None = 4096, template: str = "tulu",
                 color: bool = False, out: TextIO | None = None, add_bos: bool = False) -> int:
    """Print the first ``rows`` rows of ``path``; returns how many were printed."""
    out = out or sys.stdout
    data = read_rows(path, kind)  # validates every row: a bad row anywhere in the file names its file:line
    for row in data[:rows]:
        inspect_row(row, kind, tokenizer, max_len, template, color, out, add_bos)
    print(f"{min(rows, len(data))} of {len(data)} rows of {path} shown", file=out)
    return min(rows, len(data))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_tulu.data.inspect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="a .jsonl or .parquet data file")
    p.add_argument("--kind", required=True, choices=INSPECT_KINDS, help="the stage that reads it")
    p.add_argument("--tokenizer", required=True, help="HF tokenizer directory (the stage's data.tokenizer)")
    p.add_argument("--template", default="tulu", choices=["tulu", "tokenizer"], help="the stage's data.template")
    p.add_argument("--add-bos", action="store_true", help="the stage's data.add_bos (prepend the tokenizer's BOS)")
    p.add_argument("--rows", type=int, default=3, help="how many rows to show (default 3)")
    p.add_argument("--max-len", type=int, default=4096, help="the stage's train.seq_length (default 4096)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-color", dest="color", action="store_false", default=None, help="no ANSI highlighting")
    g.add_argument("--color", dest="color", action="store_true", help="highlight even when stdout is not a terminal")
    a = p.parse_args(argv)
    color = a.color if a.color is not None else (sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    try:
        from megatron_tulu.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(a.tokenizer)
        inspect_file(a.file, a.kind, tokenizer, a.rows, a.max_len, a.template, color, add_bos=a.add_bos)
    except (DataFileError, chat.DataFormatError, OSError, ValueError) as e:
        print(f"inspect: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
