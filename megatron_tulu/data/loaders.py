"""Reading, validating, mixing and tokenizing local datasets, with an on-disk Arrow cache.

Rows come from local JSONL (parsed line by line so an error names the file and line) or Parquet (read through
Hugging Face ``datasets``; "line" is the 1-based row number). A bad row raises :class:`DataFileError` naming
file and line, or, with ``skip_invalid=True``, is counted per reason, logged, and reported — never silently
dropped.

A mixture (like open-instruct's ``dataset_mixer``) takes a count or a fraction of each source after a
fixed-seed shuffle, then shuffles the union with the same seed. The tokenized result is saved with
``Dataset.save_to_disk`` under ``cache_dir/<key>`` where key = hash(file contents + mixture + tokenizer +
template + max_len + kind), so a second run loads it instead of tokenizing again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from megatron_tulu.data import chat

log = logging.getLogger(__name__)

KINDS = ("sft", "preference", "rlvr", "text")
CACHE_FORMAT_VERSION = "2"  # bump when the tokenized layout or masking rule changes


class DataFileError(ValueError):
    """A bad row in a data file; ``str()`` names the file and line."""

    def __init__(self, path: str, line: int, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


@dataclass
class DatasetSource:
    """One entry of a mixture."""

    path: str = ""
    """Local .jsonl/.json (one JSON object per line) or .parquet file."""
    count: int | None = None
    """Number of rows to take (after a seeded shuffle); above the file's size rows are repeated. Exclusive with fraction."""
    fraction: float | None = None
    """Share of the file's rows to take (1.0 = all; >1 repeats rows). Exclusive with count; neither means all."""
    name: str | None = None
    """Label used in reports; defaults to the file name (with ``source``: the source value)."""
    source: str | None = None
    """Take only the rows whose ``source`` column equals this (a released mixture such as allenai/tulu-3-sft-mixture
    is one dataset with a ``source`` column); count/fraction then apply to those rows."""


@dataclass
class MixtureConfig:
    """A list of sources mixed into one training set (open-instruct ``dataset_mixer`` semantics)."""

    datasets: list[DatasetSource] = field(default_factory=list)
    """The sources; each takes a count or a fraction of its rows."""
    seed: int = 42
    """Seed of the per-source selection shuffle and of the final shuffle."""
    skip_invalid: bool = False
    """Count, log and skip bad rows instead of failing on the first one."""


@dataclass
class SourceReport:
    name: str
    path: str
    rows_available: int
    rows_taken: int
    skipped: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    """Rows taken per value of the rows' ``source`` column (released mixtures carry one; empty when absent)."""


@dataclass
class DataReport:
    """What a build took from each source and what tokenization did; saved next to the cache."""

    kind: str
    sources: list[SourceReport]
    rows: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    max_tokens: int = 0
    """Longest tokenized row (RLVR: prompt; preference: the longer side), before truncation."""
    mean_tokens: float = 0.0
    """Mean tokenized row length, before truncation."""
    cache_key: str = ""
    cache_hit: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        parts = [f"{s.name}: {s.rows_taken}/{s.rows_available}" for s in self.sources]
        return (f"{self.kind} mixture -> {self.rows} rows ({'; '.join(parts)}); tokens max {self.max_tokens} mean "
                f"{self.mean_tokens:.0f}; truncated {self.truncated}, skipped {sum(self.skipped.values())} "
                f"{dict(self.skipped)}; cache {'hit' if self.cache_hit else 'miss'}")


# ----------------------------------------------------------------------------------------------- reading
def _validate_row(row: Any, kind: str, margin_columns: tuple[str, ...] = ()) -> dict:
    """Normalized row for ``kind`` or :class:`chat.DataFormatError` naming the field (``margin_columns``: see
    :func:`_margin_of`; preference rows only)."""
    if not isinstance(row, dict):
        raise chat.DataFormatError(f"row must be a JSON object, got {type(row).__name__}")
    if kind == "sft":
        if "messages" not in row:
            raise chat.DataFormatError("missing field 'messages'")
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in chat.validate_messages(row["messages"])],
                **_source_of(row)}
    if kind == "preference":
        c, r = chat._split_preference(row)
        strip = lambda ms: [{"role": m["role"], "content": m["content"]} for m in ms]  # noqa: E731
        return {"chosen": strip(c), "rejected": strip(r), **_source_of(row), **_margin_of(row, margin_columns)}
    if kind == "rlvr":
        if "messages" not in row:
            raise chat.DataFormatError("missing field 'messages'")
        msgs = chat.validate_messages(chat.prompt_messages(row["messages"]) or row["messages"], require_assistant=False)
        for k in ("ground_truth", "dataset"):
            if k not in row or row[k] is None:
                raise chat.DataFormatError(f"missing field {k!r}")
        gt = row["ground_truth"]
        gt = gt if isinstance(gt, str) else (gt[0] if isinstance(gt, list) and len(gt) == 1 else json.dumps(gt))
        _check_verifiable(str(row["dataset"]), gt)
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs],
                "ground_truth": gt, "dataset": str(row["dataset"])}
    if kind == "text":
        if not isinstance(row.get("text"), str) or not row["text"]:
            raise chat.DataFormatError("field 'text' must be a non-empty string")
        return {"text": row["text"]}
    raise ValueError(f"unknown data kind {kind!r} (expected one of {', '.join(KINDS)})")


def _source_of(row: dict) -> dict:
    """``{"source": value}`` when the row has a string ``source`` column (kept for mixing and report counts)."""
    return {"source": row["source"]} if isinstance(row.get("source"), str) else {}


def _margin_of(row: dict, columns: tuple[str, ...]) -> dict:
    """``{"margin": float}`` of a preference row (the reward model's per-pair target margin): the numeric column
    ``columns[0]``, or ``columns[0] - columns[1]`` for two (``chosen_rating``, ``rejected_rating``); ``{}`` for none.
    A missing, null or non-numeric (or non-finite) column raises :class:`chat.DataFormatError` naming it."""
    if len(columns) > 2:
        raise ValueError(f"margin columns {columns}: give one column, or two (chosen, rejected) to subtract")
    vals = []
    for c in columns:
        v = row.get(c)
        if v is None:
            raise chat.DataFormatError(f"missing field {c!r} (the pair's margin)")
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):  # numpy scalars count
            raise chat.DataFormatError(f"field {c!r} (the pair's margin) must be a finite number, got {v!r}")
        vals.append(float(v))
    return {"margin": vals[0] - vals[1] if len(vals) == 2 else vals[0]} if vals else {}


def _check_verifiable(dataset: str, ground_truth) -> None:
    """An RLVR row's ``dataset`` must name a verifier (any case) that can judge its ``ground_truth``; checked when the
    data is read, so a bad row fails naming file:line before any model or engine starts."""
    from megatron_tulu.rewards.registry import canonical_dataset, validate_ground_truth

    try:
        canonical_dataset(dataset)
    except ValueError as e:
        raise chat.DataFormatError(f"field 'dataset': {e}") from None
    try:
        validate_ground_truth(dataset, ground_truth)
    except ValueError as e:
        raise chat.DataFormatError(f"field 'ground_truth': {e}") from None


HUB_PREFIX = "hf://"


def raw_rows(path: Path | str):
    """Yield (line_number, parsed_or_exception) for JSONL or Parquet files, or ``hf://org/name[:split]`` hub
    datasets (loaded through ``datasets.load_dataset``; a machine without network raises, naming the dataset)."""
    if isinstance(path, str) and path.startswith(HUB_PREFIX):
        import datasets

        name, _, split = path[len(HUB_PREFIX):].partition(":")
        try:
            ds = datasets.load_dataset(name, split=split or "train")
        except Exception as e:  # noqa: BLE001 - offline, unknown name, ...: say which dataset
            raise FileNotFoundError(f"hub dataset {name!r} (split {split or 'train'!r}) could not be loaded: {e}") from e
        for i, row in enumerate(ds, start=1):
            yield i, row
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, chat.DataFormatError(f"malformed JSON ({e.msg} at column {e.colno})")
    elif suffix == ".parquet":
        import datasets

        ds = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
        for i, row in enumerate(ds, start=1):
            yield i, row
    else:
        raise ValueError(f"{path}: unsupported data file type {suffix!r} (use .jsonl or .parquet)")


def read_rows(path: str | Path, kind: str, skip_invalid: bool = False, skipped: Counter | None = None,
              margin_columns: tuple[str, ...] = ()) -> list[dict]:
    """Validated rows of one file; each row carries ``_source`` (path) and ``_line`` for later error messages.
    ``margin_columns`` (preference): the row's ``margin`` comes from them (:func:`_margin_of`).

    Raises :class:`DataFileError` (file and line) on the first bad row unless ``skip_invalid``; skipped rows are
    counted into ``skipped`` by reason and logged.
    """
    p = str(path) if str(path).startswith(HUB_PREFIX) else Path(path)
    if isinstance(p, Path) and not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    out = []
    skipped = skipped if skipped is not None else Counter()
    for line, raw in raw_rows(p):
        try:
            if isinstance(raw, Exception):
                raise raw
            row = _validate_row(raw, kind, margin_columns)
        except chat.DataFormatError as e:
            if not skip_invalid:
                raise DataFileError(str(p), line, str(e)) from None
            reason = str(e).split(" (")[0]
            skipped[reason] += 1
            log.warning("skipping %s:%d: %s", p, line, e)
            continue
        row["_source"], row["_line"] = str(p), line
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------- mixing
def _select(n_avail: int, src: DatasetSource, rng: random.Random) -> list[int]:
    if src.count is not None and src.fraction is not None:
        raise ValueError(f"mixture source {src.path}: give count or fraction, not both")
    if src.count is not None:
        want = int(src.count)
    elif src.fraction is not None:
        want = int(round(float(src.fraction) * n_avail))
    else:
        want = n_avail
    if want < 0:
        raise ValueError(f"mixture source {src.path}: negative count/fraction")
    out: list[int] = []
    while len(out) < want and n_avail > 0:  # whole shuffled passes, then a shuffled remainder (upsampling)
        perm = list(range(n_avail))
        rng.shuffle(perm)
        out.extend(perm[: want - len(out)])
    return out


def _source_name(src: DatasetSource) -> str:
    """The name that seeds a source's row selection (and so belongs in the cache key)."""
    return src.name or src.source or Path(src.path).name


def mix(cfg: MixtureConfig, kind: str, margin_columns: tuple[str, ...] = ()) -> tuple[list[dict], DataReport]:
    """Read, validate and mix the sources of ``cfg``; returns rows (with ``_source``/``_line``) and a report."""
    if not cfg.datasets:
        raise ValueError("mixture has no datasets")
    rows: list[dict] = []
    reports = []
    total_skipped: Counter = Counter()
    files: dict[str, tuple[list[dict], Counter]] = {}  # a released mixture is one file that several entries select from
    for k, src in enumerate(cfg.datasets):
        if src.path not in files:
            skipped: Counter = Counter()
            files[src.path] = read_rows(src.path, kind, cfg.skip_invalid, skipped, margin_columns), skipped
            total_skipped.update(skipped)
        avail, skipped = files[src.path]
        if src.source is not None:
            avail = [r for r in avail if r.get("source") == src.source]
            if not avail:
                raise ValueError(f"mixture source {src.path}: no row has source {src.source!r}")
        # seeded by the file's name, not its absolute path: the same mixture picks the same rows wherever the
        # data directory lives (another machine, a temp dir in tests)
        idx = _select(len(avail), src, random.Random(f"{cfg.seed}-{k}-{_source_name(src)}"))
        rows.extend(avail[i] for i in idx)
        by_source = Counter(avail[i]["source"] for i in idx if "source" in avail[i])
        reports.append(SourceReport(_source_name(src), src.path, len(avail), len(idx), dict(skipped), dict(by_source)))
    random.Random(cfg.seed).shuffle(rows)
    return rows, DataReport(kind=kind, sources=reports, rows=len(rows), skipped=dict(total_skipped))


# ----------------------------------------------------------------------------------------------- tokenizing
def _tokenize_row(row: dict, kind: str, tokenizer, max_len: int | None, template: str,
                  add_bos: bool = False) -> tuple[dict, int, bool]:
    """``(tokenized row, its length before truncation, truncated?)``; raises DataFormatError for over-long prompts.
    The length is the prompt's for RLVR and the longer side's for preference pairs."""
    if kind == "sft":
        full = chat.tokenize_sft_full(row["messages"], tokenizer, template, add_bos)
        n = len(full["input_ids"])
        if max_len is not None and n > max_len:
            labels = full["labels"][:max_len]
            if all(x == chat.IGNORE_INDEX for x in labels):
                raise chat.PromptTooLongError(f"prompt fills all {max_len} tokens (conversation has {n}); nothing to train on")
            return {"input_ids": full["input_ids"][:max_len], "labels": labels}, n, True
        return full, n, False
    if kind == "preference":
        out = chat.tokenize_preference(row, tokenizer, None, template, add_bos)
        n = max(len(out["chosen_input_ids"]), len(out["rejected_input_ids"]))
        trunc = False
        if max_len is not None:
            for side in ("chosen", "rejected"):
                if len(out[f"{side}_input_ids"]) > max_len:
                    trunc = True
                    out[f"{side}_input_ids"] = out[f"{side}_input_ids"][:max_len]
                    out[f"{side}_labels"] = out[f"{side}_labels"][:max_len]
                    if all(x == chat.IGNORE_INDEX for x in out[f"{side}_labels"]):
                        raise chat.PromptTooLongError(f"prompt fills all {max_len} tokens of {side}; nothing to train on")
        if "margin" in row:
            out["margin"] = row["margin"]
        return out, n, trunc
    if kind == "rlvr":  # a prompt is never cut (the answer would be judged against another question): too long fails
        out = chat.tokenize_prompt(row, tokenizer, max_len, template, add_bos)
        return out, len(out["prompt_ids"]), False
    if kind == "text":
        ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
        ids = list(ids) + [tokenizer.eos_token_id]
        trunc = max_len is not None and len(ids) > max_len
        return {"input_ids": ids[:max_len] if trunc else ids}, len(ids), trunc
    raise ValueError(f"unknown data kind {kind!r}")


def tokenize_rows(
    rows: list[dict], kind: str, tokenizer, max_len: int | None, template: str = "tulu",
    skip_invalid: bool = False, report: DataReport | None = None, add_bos: bool = False,
) -> list[dict]:
    """Tokenize validated rows; errors name the row's file and line (or are counted with ``skip_invalid``).
    The report gets the truncation and skip counts and the token lengths (as tokenized, before truncation)."""
    out = []
    lengths = []
    for row in rows:
        try:
            tok, n_tokens, trunc = _tokenize_row(row, kind, tokenizer, max_len, template, add_bos)
        except chat.DataFormatError as e:
            if not skip_invalid:
                raise DataFileError(row.get("_source", "<rows>"), row.get("_line", 0), str(e)) from None
            reason = type(e).__name__
            if report is not None:
                report.skipped[reason] = report.skipped.get(reason, 0) + 1
            log.warning("skipping %s:%s: %s", row.get("_source"), row.get("_line"), e)
            continue
        if trunc and report is not None:
            report.truncated += 1
        lengths.append(n_tokens)
        out.append(tok)
    if report is not None:
        report.rows = len(out)
        report.max_tokens = max(lengths, default=0)
        report.mean_tokens = sum(lengths) / max(len(lengths), 1)
    return out


def _file_digest(path: str, memo: dict[str, str]) -> str:
    if str(path).startswith(HUB_PREFIX):  # hub datasets are keyed by name (and split); pin a revision upstream
        return str(path)
    if path not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        memo[path] = h.hexdigest()
    return memo[path]


def cache_key(cfg: MixtureConfig, kind: str, tokenizer, max_len: int | None, template: str, add_bos: bool = False,
              margin_columns: tuple[str, ...] = ()) -> str:
    """Hash of everything the tokenized output depends on (file contents, not paths or mtimes)."""
    from megatron_tulu.data.tokenizer import tokenizer_fingerprint

    memo: dict[str, str] = {}
    spec = {
        "version": CACHE_FORMAT_VERSION,
        "kind": kind,
        "max_len": max_len,
        "template": template,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "seed": cfg.seed,
        "skip_invalid": cfg.skip_invalid,
        # the name seeds which rows are taken (see mix), so a renamed source must not hit a stale cache
        "sources": [(_file_digest(s.path, memo), _source_name(s), s.count, s.fraction, s.source) for s in cfg.datasets],
        "add_bos": add_bos,
    }
    if margin_columns:  # only when set: the keys of margin-free caches stay what they were
        spec["margin_columns"] = list(margin_columns)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def build_dataset(
    cfg: MixtureConfig, kind: str, tokenizer, max_len: int | None, template: str = "tulu",
    cache_dir: str | Path | None = None, tokenize_fn: Callable[..., list[dict]] = tokenize_rows, add_bos: bool = False,
    margin_columns: tuple[str, ...] = (),
):
    """Mix, validate and tokenize; returns ``(datasets.Dataset, DataReport)``.

    Columns: sft ``input_ids, labels``; preference ``chosen_input_ids, chosen_labels, rejected_input_ids,
    rejected_labels`` (+ ``margin`` with ``margin_columns``, see :func:`_margin_of`); rlvr ``prompt_ids, ground_truth,
    dataset``; text ``input_ids``. With ``cache_dir`` the
    result is stored under ``cache_dir/<cache_key>`` and reused by later calls with identical inputs.
    """
    import datasets

    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r} (expected one of {', '.join(KINDS)})")
    key = cache_key(cfg, kind, tokenizer, max_len, template, add_bos, tuple(margin_columns))
    if cache_dir is not None:
        path = Path(cache_dir) / key
        if (path / "report.json").exists():
            ds = datasets.load_from_disk(str(path / "data"))
            rep = json.loads((path / "report.json").read_text())
            rep["sources"] = [SourceReport(**s) for s in rep["sources"]]
            report = DataReport(**{**rep, "cache_hit": True})
            log.info("%s (%s)", report.summary(), path)
            return ds, report
    rows, report = mix(cfg, kind, tuple(margin_columns))
    toks = tokenize_fn(rows, kind, tokenizer, max_len, template, cfg.skip_invalid, report, add_bos=add_bos)
    if not toks:
        raise ValueError(f"{kind} mixture produced no rows ({report.summary()})")
    ds = datasets.Dataset.from_list(toks)
    report.cache_key = key
    if cache_dir is not None:
        path = Path(cache_dir) / key
        tmp = path.with_name(path.name + ".tmp")
        ds.save_to_disk(str(tmp / "data"))
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
        if path.exists():  # a concurrent builder won: keep theirs (identical by construction)
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(path)  # atomic: a half-written cache is never picked up
        ds = datasets.load_from_disk(str(path / "data"))
    log.info("%s", report.summary())
    return ds, report


def mixture_from_dict(d: dict) -> MixtureConfig:
    """MixtureConfig from a plain dict/YAML node; also accepts open-instruct's ``{path: count_or_fraction}`` form."""
    if "datasets" not in d:  # dataset_mixer form: ints are counts, floats are fractions
        srcs = [DatasetSource(path=p, **({"count": v} if isinstance(v, int) else {"fraction": float(v)})) for p, v in d.items()]
        return MixtureConfig(datasets=srcs)
    srcs = [DatasetSource(**s) for s in d["datasets"]]
    return MixtureConfig(datasets=srcs, **{k: v for k, v in d.items() if k != "datasets"})
