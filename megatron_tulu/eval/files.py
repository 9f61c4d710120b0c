r"""Eval sets as users hold them: released JSONL/Parquet files, schema detected from the fields.

Known schemas (checked in this order; the first whose required fields a file's rows have wins):

=====================  ==========================================  ==================================================
schema                 required fields                             ground truth -> verifier
=====================  ==========================================  ==================================================
``google/IFEval``      ``key, prompt, instruction_id_list,         ``{"instruction_id_list", "kwargs"}`` with the
                       kwargs``                                    None-valued kwargs entries dropped -> ``ifeval``
``openai/gsm8k``       ``question, answer``                        the number after ``#### `` in ``answer``, commas
                                                                   removed -> ``gsm8k``
``hendrycks/MATH``     ``problem, solution`` (``answer``           ``answer`` when present (MATH-500), else the
(and MATH-500)         optional)                                   content of the LAST ``\boxed{..}``/``\fbox{..}``
                                                                   of ``solution`` (balanced braces) -> ``math``
``rlvr``               ``messages, ground_truth, dataset``         the row's own (the RLVR row format: prompts are
                                                                   the row's messages, not the few-shot builders)
=====================  ==========================================  ==================================================

A file that matches none is refused by :class:`EvalFileError` naming the file and, per schema, the fields it
lacks; a row whose ground truth cannot be extracted is refused naming the file and line. Everything here is pure
(no engine, no tokenizer), so a bad file fails before any engine starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_tulu.eval.prompts import eval_messages


class EvalFileError(ValueError):
    """An eval file that cannot be read as any known schema, or a row without a usable ground truth."""


@dataclass(frozen=True)
class Schema:
    name: str
    """the released data set the schema comes from (for messages and results.json)"""
    dataset: str | None
    """verifier name (``gsm8k``/``math``/``ifeval``); None: taken from each row (``rlvr``)"""
    required: tuple[str, ...]


SCHEMAS: tuple[Schema, ...] = (
    Schema("google/IFEval", "ifeval", ("key", "prompt", "instruction_id_list", "kwargs")),
    Schema("openai/gsm8k", "gsm8k", ("question", "answer")),
    Schema("hendrycks/MATH", "math", ("problem", "solution")),
    Schema("rlvr", None, ("messages", "ground_truth", "dataset")),
)


def detect_schema(fields, where: str = "file") -> Schema:
    """The first schema whose required fields are all in ``fields``; :class:`EvalFileError` naming ``where``
    and the fields each schema lacks otherwise."""
    have = set(fields)
    for schema in SCHEMAS:
        if all(f in have for f in schema.required):
            return schema
    lacks = "; ".join(f"{s.name} needs {', '.join(s.required)} (lacks {', '.join(f for f in s.required if f not in have)})"
                      for s in SCHEMAS)
    raise EvalFileError(f"{where}: matches no known eval schema; its rows have fields "
                        f"{', '.join(sorted(have)) or '(none)'}; {lacks}")


# ------------------------------------------------------------------------------------------- ground truths
_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def gsm8k_ground_truth(answer: str) -> str:
    """``openai/gsm8k``'s answer field -> the final number: the text after ``#### ``, commas removed."""
    m = _GSM8K_ANSWER.search(str(answer))
    if not m:
        raise ValueError("field 'answer' has no '#### <number>' final answer")
    return m.group(1).replace(",", "").strip()


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` or ``\fbox{...}`` in ``text`` (balanced braces), None if none.

    Escaped braces (``\{``, ``\}``) do not open or close a group; ``\boxed 5`` (no braces, as a few MATH
    solutions write it) gives the token after the space.
    """
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text))):
        rest = text[m.end():]
        stripped = rest.lstrip(" ")
        if stripped.startswith("{"):
            content = _braced(text, m.end() + len(rest) - len(stripped))
            if content is not None:
                return content
        elif rest.startswith(" "):
            token = re.match(r" +([^\s$]+)", rest)
            if token:
                return token.group(1)
    return None


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start]``; None when it never closes."""
    depth = 0
    j = start
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2  # an escaped character (\{ \} \\) is content
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:j]
        j += 1
    return None


def math_ground_truth(row: dict) -> str:
    r"""MATH-500 rows carry ``answer``; hendrycks MATH rows only the ``solution`` with its last ``\boxed{}``."""
    answer = row.get("answer")
    if answer is not None and str(answer).strip():
        return str(answer).strip()
    boxed = last_boxed(str(row["solution"]))
    if boxed is None or not boxed.strip():
        raise ValueError(r"no 'answer' field and no \boxed{...} (or \fbox{...}) in field 'solution'")
    return boxed.strip()


def ifeval_ground_truth(row: dict) -> dict:
    """``{"instruction_id_list", "kwargs"}``; each kwargs dict keeps only its non-None entries (the Parquet
    release stores every instruction's kwargs as one struct with all argument names, unused ones None; Google's
    eval passes only the instruction's own arguments)."""
    ids = row["instruction_id_list"]
    kwargs = row["kwargs"]
    if isinstance(ids, str) or not isinstance(ids, (list, tuple)):
        raise ValueError(f"field 'instruction_id_list' must be a list, got {type(ids).__name__}")
    if not isinstance(kwargs, (list, tuple)) or len(kwargs) != len(ids):
        raise ValueError("field 'kwargs' must be a list with one object per instruction id")
    clean = []
    for i, kw in enumerate(kwargs):
        if kw is None:
            kw = {}
        if not isinstance(kw, dict):
            raise ValueError(f"field 'kwargs[{i}]' must be an object, got {type(kw).__name__}")
        clean.append({k: v for k, v in kw.items() if v is not None})
    return {"instruction_id_list": [str(x) for x in ids], "kwargs": clean}


# ------------------------------------------------------------------------------------------------- reading
def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """``(line/row number, row)`` pairs of a ``.jsonl``/``.json`` (one object per line) or ``.parquet`` file, read
    by the training data's reader (``data.loaders.raw_rows``)."""
    from megatron_tulu.data.loaders import raw_rows

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"eval file not found: {p}")
    if p.suffix.lower() not in (".jsonl", ".json", ".parquet"):
        raise EvalFileError(f"{p}: unsupported eval file type {p.suffix.lower()!r} (use .jsonl or .parquet)")
    out = []
    for i, row in raw_rows(p):
        if isinstance(row, Exception):  # the reader yields a malformed line as its error
            raise EvalFileError(f"{p}:{i}: {row}")
        if not isinstance(row, dict):
            raise EvalFileError(f"{p}:{i}: expected a JSON object, got {type(row).__name__}")
        out.append((i, row))
    return out


@dataclass
class Example:
    dataset: str
    """verifier name"""
    messages: list[dict]
    """the prompt chat (rendered with the generation prompt by the caller)"""
    ground_truth: Any
    where: str
    """``file:line`` for messages"""


def example_from_row(row: dict, schema: Schema, where: str) -> Example:
    """One row -> its prompt chat and ground truth; :class:`EvalFileError` naming ``where`` when unusable."""
    missing = [f for f in schema.required if f not in row]
    if missing:
        raise EvalFileError(f"{where}: row lacks {', '.join(missing)} (file detected as {schema.name})")
    try:
        if schema.dataset == "gsm8k":
            return Example("gsm8k", eval_messages("gsm8k", str(row["question"])), gsm8k_ground_truth(row["answer"]), where)
        if schema.dataset == "math":
            return Example("math", eval_messages("math", str(row["problem"])), math_ground_truth(row), where)
        if schema.dataset == "ifeval":
            return Example("ifeval", eval_messages("ifeval", str(row["prompt"])), ifeval_ground_truth(row), where)
        from megatron_tulu.data.chat import prompt_messages, validate_messages

        msgs = validate_messages(prompt_messages(row["messages"]) or row["messages"], require_assistant=False)
        gt = row["ground_truth"]
        if isinstance(gt, list) and len(gt) == 1:  # some released RLVR sets store a list with one answer
            gt = gt[0]
        return Example(str(row["dataset"]).lower(), msgs, gt, where)
    except ValueError as e:  # includes DataFormatError
        raise EvalFileError(f"{where}: {e}") from None


def load_eval_file(path: str | Path, limit: int | None = None) -> tuple[Schema, list[Example]]:
    """Detect ``path``'s schema from its first row and build the first ``limit`` examples (all rows checked
    only up to ``limit``). Raises :class:`EvalFileError` / FileNotFoundError naming the file."""
    records = read_records(path)
    if not records:
        raise EvalFileError(f"{path}: no rows")
    schema = detect_schema(records[0][1].keys(), where=str(path))
    if limit is not None:
        records = records[:limit]
    examples = [example_from_row(row, schema, f"{path}:{line}") for line, row in records]
    return schema, examples


def parse_file_arg(spec: str) -> tuple[str, str]:
    """``TASK=PATH`` -> ``(task, path)``; TASK names the output file so it must be a plain file name."""
    task, sep, path = spec.partition("=")
    task = task.strip()
    if not sep or not task or not path:
        raise ValueError(f"--file {spec!r}: expected TASK=PATH")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", task) or task == "results":
        raise ValueError(f"--file {spec!r}: TASK must be a plain name (letters, digits, _ . -), not 'results'")
    return task, path
