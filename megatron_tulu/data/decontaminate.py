"""8-gram decontamination of training sets against eval sets (Tülu 3's rule).

An eval instance is *matched* by a training dataset when the training data's n-grams (n=8) cover **more than**
50% of the eval instance's tokens (a token is covered when some eval n-gram containing it also occurs in the
training data). A training dataset is *contaminated* for an eval set when it matches more than 2% of that eval
set's instances. On request the tool writes a filtered copy of each training file without the rows that share
an n-gram with a matched eval instance.

Tokens are lowercase ``\\w+`` words (tokenizer independent). N-grams are 64-bit rolling hashes of per-word
keys computed with numpy over whole chunks, and only the (small) eval side is indexed: training rows are
streamed in chunks and intersected with the eval hash set, so memory does not grow with the training set.
Eval instances shorter than n use one n-gram of their full length.

Usage::

    python -m megatron_tulu.data.decontaminate --train a.jsonl b.parquet --eval gsm8k=eval_gsm8k.jsonl \\
        [--ngram 8] [--threshold 0.5] [--max-share 0.02] [--filtered-dir DIR] [--report report.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

_WORD = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial rolling hash (wraps mod 2^64)


def row_text(row: dict, fields: str = "all") -> str:
    """Text of a row in any of our formats; ``fields="prompt"`` keeps only non-assistant turns."""
    if "text" in row and isinstance(row["text"], str):
        return row["text"]
    parts: list[str] = []
    for key in ("messages", "chosen", "rejected", "prompt"):
        v = row.get(key)
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, list):
            for m in v:
                if isinstance(m, dict) and (fields == "all" or m.get("role") != "assistant"):
                    parts.append(str(m.get("content", "")))
        if key == "messages" and parts and fields == "prompt":
            break
    return "\n".join(parts)


class Vocab:
    """Word -> 64-bit key with Python's built-in string hash (SipHash, in C).

    ``hash(str)`` is salted per process, which is fine: eval and training hashes are only ever compared within
    one run, and no hash is stored. Mapping a chunk's words is one C-level ``map`` instead of a dict per word.
    """

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(keys [total] uint64 of all texts' words back to back, lengths [D] words per text)."""
        per = [_WORD.findall(t.lower()) for t in texts]
        lengths = np.fromiter(map(len, per), dtype=np.int64, count=len(per))
        flat = [w for ws in per for w in ws]
        keys = np.fromiter(map(hash, flat), dtype=np.int64, count=len(flat)).view(np.uint64)
        return keys, lengths

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]


def ngram_hashes(keys: np.ndarray, lengths: np.ndarray, n: int, short_full: bool = False,
                 extra_widths: Sequence[int] = ()):
    """Hashes of all n-grams of a batch of documents given as concatenated token ids.

    Args:
        keys: [total] uint64 word keys (:class:`Vocab`) of all documents back to back.
        lengths: [D] tokens per document.
        short_full: documents shorter than ``n`` contribute one hash of their whole length (eval side).
        extra_widths: also hash all windows of these widths (training side, to meet short eval instances).
    Returns:
        (hashes [M] int64, doc [M] int64 document index, start [M] int64 first token within the document,
        width [M] int64 n-gram length). A width-w hash is the same function of w words on both sides.
    """
    total = len(keys)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)
    doc_of = np.repeat(np.arange(len(lengths)), lengths)
    out_h, out_d, out_s, out_w = [], [], [], []
    for w in sorted({n, *extra_widths}):
        if total < w:
            continue
        h = np.zeros(total - w + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(w):
                h = h * _MULT + keys[k: total - w + 1 + k]
        pos = np.arange(total - w + 1)
        ok = doc_of[pos] == doc_of[pos + w - 1]  # window inside one document
        if w < n and short_full:
            ok &= lengths[doc_of[pos]] == w  # a short eval instance is one window of its whole length
        d = doc_of[pos[ok]]
        out_h.append(h[ok].view(np.int64)), out_d.append(d), out_s.append(pos[ok] - starts[d])
        out_w.append(np.full(int(ok.sum()), w, dtype=np.int64))
    if not out_h:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z, z
    return (np.concatenate(out_h), np.concatenate(out_d).astype(np.int64),
            np.concatenate(out_s).astype(np.int64), np.concatenate(out_w).astype(np.int64))


@dataclass
class EvalIndex:
    """N-gram index of one eval set."""

    name: str
    lengths: np.ndarray  # [E] tokens per instance
    short_widths: tuple  # lengths of instances shorter than n (training hashes these widths too)
    hashes: np.ndarray  # [M] n-gram hashes
    inst: np.ndarray  # [M] instance of each n-gram
    start: np.ndarray  # [M]
    width: np.ndarray  # [M]


def build_eval_index(name: str, texts: Sequence[str], vocab: Vocab, n: int = 8) -> EvalIndex:
    cat, lengths = vocab.encode_batch(list(texts))
    short = sorted({int(x) for x in lengths if 0 < x < n})
    h, d, s, w = ngram_hashes(cat, lengths, n, short_full=True, extra_widths=short)
    return EvalIndex(name, lengths, tuple(short), h, d, s, w)


def coverage(index: EvalIndex, train_hashes: np.ndarray) -> np.ndarray:
    """[E] share of each eval instance's tokens covered by its n-grams found in ``train_hashes`` (sorted unique)."""
    hit = np.isin(index.hashes, train_hashes, assume_unique=False)
    E = len(index.lengths)
    offs = np.concatenate([[0], np.cumsum(index.lengths)]).astype(np.int64)
    diff = np.zeros(int(offs[-1]) + 1, dtype=np.int64)
    a = offs[index.inst[hit]] + index.start[hit]
    np.add.at(diff, a, 1)
    np.add.at(diff, a + index.width[hit], -1)
    # One trailing zero so reduceat's offsets stay in range even when the last instances are empty.
    covered = np.append((np.cumsum(diff)[:-1] > 0).astype(np.int64), 0)
    per = np.add.reduceat(covered, offs[:-1]) if E else np.zeros(0, np.int64)
    per = np.where(index.lengths > 0, per, 0)  # reduceat returns the element itself for empty segments
    return np.where(index.lengths > 0, per / np.maximum(index.lengths, 1), 0.0)


def iter_rows(path: str | Path) -> Iterator[dict]:
    p = Path(path)
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(str(p)).iter_batches(batch_size=10000):
            yield from batch.to_pylist()
    else:
        with open(p, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{p}:{i}: malformed JSON ({e.msg})") from None


@dataclass
class TrainScan:
    """Eval-set n-gram hashes that occur in one training dataset, and which rows hold them."""

    name: str
    rows: int = 0
    found: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted unique hashes
    row_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [K] rows with a hit
    row_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [K] the hit hash


def scan_training(name: str, texts: Iterable[str], eval_hashes: np.ndarray, vocab: Vocab, n: int = 8,
                  chunk: int = 20000, extra_widths: Sequence[int] = ()) -> TrainScan:
    """Stream training texts in chunks; keep only n-grams that are also eval n-grams (sorted ``eval_hashes``)."""
    scan = TrainScan(name)
    found, rid, rh = [], [], []
    buf: list[str] = []

    def flush(base: int) -> None:
        if not buf:
            return
        toks, lengths = vocab.encode_batch(buf)
        h, d, _, _ = ngram_hashes(toks, lengths, n, extra_widths=extra_widths)
        m = np.isin(h, eval_hashes)
        found.append(np.unique(h[m])), rid.append(d[m] + base), rh.append(h[m])
        buf.clear()

    for i, t in enumerate(texts):
        buf.append(t)
        if len(buf) >= chunk:
            flush(i + 1 - len(buf))
        scan.rows = i + 1
    flush(scan.rows - len(buf))
    if found:
        scan.found = np.unique(np.concatenate(found))
        scan.row_ids, scan.row_hashes = np.concatenate(rid), np.concatenate(rh)
    return scan


def _eval_indices(evals: dict[str, str], vocab: Vocab, n: int, eval_fields: str) -> dict[str, EvalIndex]:
    return {name: build_eval_index(name, [row_text(r, eval_fields) for r in iter_rows(p)], vocab, n)
            for name, p in evals.items()}


def _scan_against(indices: dict[str, EvalIndex], vocab: Vocab, n: int, threshold: float, name: str,
                  texts: Iterable[str]) -> tuple[TrainScan, dict[str, np.ndarray], set[int]]:
    """Scan one training set: (scan, ``{eval: [E] bool matched}``, rows sharing an n-gram with a matched instance)."""
    all_eval = np.unique(np.concatenate([ix.hashes for ix in indices.values()])) if indices else np.zeros(0, np.int64)
    short = sorted({w for ix in indices.values() for w in ix.short_widths})
    scan = scan_training(name, texts, all_eval, vocab, n, extra_widths=short)
    matched, bad_hashes = {}, []
    for ename, ix in indices.items():
        matched[ename] = coverage(ix, scan.found) > threshold
        bad_hashes.append(ix.hashes[np.isin(ix.inst, np.nonzero(matched[ename])[0])])
    bad = np.unique(np.concatenate(bad_hashes)) if bad_hashes else np.zeros(0, np.int64)
    drop = set(np.unique(scan.row_ids[np.isin(scan.row_hashes, bad)]).tolist())
    return scan, matched, drop


def contaminated_rows(texts: Sequence[str], evals: dict[str, str], n: int = 8, threshold: float = 0.5,
                      eval_fields: str = "prompt") -> set[int]:
    """Indices of ``texts`` that share an n-gram with an eval instance they match (the rows ``--filtered-dir``
    leaves out): what a generator of new training data (``prefgen``) drops before using a prompt."""
    vocab = Vocab()
    return _scan_against(_eval_indices(evals, vocab, n, eval_fields), vocab, n, threshold, "texts", texts)[2]


def decontaminate(train: dict[str, str], evals: dict[str, str], n: int = 8, threshold: float = 0.5,
                  max_share: float = 0.02, fields: str = "all", filtered_dir: str | None = None,
                  eval_fields: str = "prompt") -> dict:
    """Report (and optionally filter) contamination of each training file against each eval file.

    Returns ``{"results": [{train, eval, matched, total, share, contaminated}], "filtered": {...}}``; an eval
    instance is matched when its covered share is strictly greater than ``threshold``; a pair is contaminated
    when ``share > max_share``.
    """
    vocab = Vocab()
    indices = _eval_indices(evals, vocab, n, eval_fields)
    report: dict = {"ngram": n, "threshold": threshold, "max_share": max_share, "results": [], "filtered": {}}
    for tname, tpath in train.items():
        scan, matched_by_eval, drop = _scan_against(indices, vocab, n, threshold, tname,
                                                    (row_text(r, fields) for r in iter_rows(tpath)))
        for ename, matched in matched_by_eval.items():
            share = float(matched.mean()) if len(matched) else 0.0
            report["results"].append({"train": tname, "eval": ename, "train_rows": scan.rows,
                                      "matched": int(matched.sum()), "total": int(len(matched)),
                                      "share": share, "contaminated": share > max_share})
        if filtered_dir is not None:
            out = Path(filtered_dir) / (Path(tpath).stem + ".jsonl")
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8") as f:
                for i, r in enumerate(iter_rows(tpath)):
                    if i not in drop:
                        f.write(json.dumps(r, ensure_ascii=False) + "\n")
            report["filtered"][tname] = {"path": str(out), "kept": scan.rows - len(drop), "removed": len(drop)}
    return report


def _named(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        name, _, path = it.partition("=") if "=" in it else (Path(it).stem, "", it)
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="8-gram decontamination (Tülu 3 rule)")
    p.add_argument("--train", nargs="+", required=True, help="training files, optionally name=path")
    p.add_argument("--eval", nargs="+", required=True, help="eval files, optionally name=path")
    p.add_argument("--ngram", type=int, default=8)
    p.add_argument("--threshold", type=float, default=0.5, help="eval instance matched above this covered share")
    p.add_argument("--max-share", type=float, default=0.02, help="training set contaminated above this share")
    p.add_argument("--fields", choices=["all", "prompt"], default="all", help="training text: all turns or prompts")
    p.add_argument("--filtered-dir", default=None, help="write filtered training copies here")
    p.add_argument("--report", default=None, help="write the JSON report here")
    a = p.parse_args(argv)
    try:
        rep = decontaminate(_named(a.train), _named(a.eval), a.ngram, a.threshold, a.max_share, a.fields, a.filtered_dir)
    except (OSError, ValueError) as e:  # bad file or row: the message names the file (and line); no traceback
        print(f"decontaminate: error: {e}", file=sys.stderr)
        return 2
    for r in rep["results"]:
        flag = "CONTAMINATED" if r["contaminated"] else "ok"
        print(f"{r['train']:>24} vs {r['eval']:<16} {r['matched']:>6}/{r['total']:<6} {100 * r['share']:6.2f}%  {flag}")
    for t, f in rep["filtered"].items():
        print(f"filtered {t}: kept {f['kept']}, removed {f['removed']} -> {f['path']}")
    if a.report:
        Path(a.report).write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
