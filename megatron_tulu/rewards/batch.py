"""Score many records in parallel worker processes, each item under a hard time limit.

The RLVR driver calls :func:`verify_batch` once per rollout step (a few hundred short responses), and the
score CLI calls it on whole files. Design:

- Records are validated in the caller first (dataset known, response a string, ifeval ground truth
  well-formed), so bad input fails fast with the record index and field, before any work is spent.
- Small batches (< ``inprocess_below``) or ``workers=0`` are scored in the calling process: no start-up
  cost. gsm8k/ifeval checks are linear-time; math's sympy step runs in a forked child killed at the
  deadline (see :mod:`math_symbolic`), so the in-process path is time-bounded too.
- Larger batches go to ``workers`` forked processes. Records reach them through fork (never pickled);
  each worker gets chunks of indices and writes verdicts and the start time of its current item into
  shared memory, so there is no per-item pipe round trip. The parent waits on the pipes with a deadline;
  a worker whose current item overruns ``timeout_s`` is SIGKILLed, that item is scored incorrect and
  counted in ``metrics["timeouts"]``, the rest of its chunk is requeued and a fresh worker is forked
  (workers that die for other reasons are handled the same way, counted as errors). Workers run sympy in-process (no
  second fork), because the worker itself is the sandbox. Forking after sympy is imported in the parent
  means workers start in milliseconds and never pay the 1 s import/parser build.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import time
from multiprocessing.connection import wait as wait_connections

from dataclasses import dataclass

from megatron_tulu.rewards.registry import (
    DEFAULT_TIMEOUT_S, VerifyTimeout, canonical_dataset, get_verifier, validate_ground_truth,
)

INPROCESS_BELOW = 32
"""Batches smaller than this are scored in the caller's process (no worker start-up)."""


@dataclass(frozen=True)
class ScoreOptions:
    """How every record of a batch is scored."""

    paper_compat: bool = False
    """Reproduce the 2024 reference implementations' quirks (see each verifier)."""
    ifeval_partial_credit: bool = False
    """IFEval rows score the fraction of their constraints met instead of all-or-nothing."""


def validate_record(record: dict, where: str = "record") -> None:
    """ValueError naming ``where`` and the field when ``record`` cannot be scored."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in ("dataset", "response", "ground_truth"):
        if field not in record:
            raise ValueError(f"{where}: missing field {field!r}")
    try:
        canonical_dataset(record["dataset"])
    except ValueError as exc:
        raise ValueError(f"{where}: field 'dataset': {exc}") from None
    if not isinstance(record["response"], str):
        raise ValueError(f"{where}: field 'response' must be a string, got {type(record['response']).__name__}")
    try:
        validate_ground_truth(record["dataset"], record["ground_truth"])
    except ValueError as exc:
        raise ValueError(f"{where}: field 'ground_truth': {exc}") from None


def _score_one(record: dict, *, timeout_s: float, isolate: bool, options: ScoreOptions) -> float:
    fn = get_verifier(record["dataset"])
    return float(fn(record["response"], record["ground_truth"], timeout_s=timeout_s, isolate=isolate,
                    paper_compat=options.paper_compat, partial_credit=options.ifeval_partial_credit))


_PENDING, _TRUE, _FALSE, _ERROR = 0, 1, 2, 3


def _worker_main(conn, records, status, scores, clock, timeout_s: float, options: ScoreOptions) -> None:
    """Score index ranges of ``records`` (inherited through fork, never pickled), writing verdicts into
    the shared ``status`` array (and each score into ``scores``). ``clock[0]`` is when the current item started; it is written before the
    previous item's status, so the parent never pairs a new item with an old start time."""
    clock[0] = time.monotonic()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        start, stop = msg
        errors = []
        for i in range(start, stop):
            try:
                scores[i] = _score_one(records[i], timeout_s=timeout_s, isolate=False, options=options)
                value = _TRUE if scores[i] == 1.0 else _FALSE
            except Exception as exc:  # noqa: BLE001 -- reported to the parent and counted, never hidden
                value = _ERROR
                errors.append((i, f"{type(exc).__name__}: {exc}"))
            clock[0] = time.monotonic()
            status[i] = value
        conn.send(errors)


class _Worker:
    def __init__(self, ctx, records, status, scores, timeout_s: float, options: ScoreOptions):
        self.conn, child = ctx.Pipe()
        self.clock = ctx.RawArray("d", 1)
        self.clock[0] = time.monotonic()
        self.proc = ctx.Process(target=_worker_main, daemon=True,
                                args=(child, records, status, scores, self.clock, timeout_s, options))
        self.proc.start()
        child.close()
        self.chunk: tuple[int, int] | None = None

    def submit(self, chunk: tuple[int, int]) -> None:
        self.chunk = chunk
        self.clock[0] = time.monotonic()
        self.conn.send(chunk)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.kill()
        else:
            self.conn.close()

def _can_fork_workers() -> bool:
    return os.name == "posix" and not mp.current_process().daemon


def verify_batch(records: list[dict], workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                 paper_compat: bool = False, ifeval_partial_credit: bool = False,
                 inprocess_below: int = INPROCESS_BELOW) -> tuple[list[bool | float], dict]:
    """Verdicts for ``records`` (dicts with dataset/response/ground_truth), in order, and metrics.

    A verdict is a bool, or with ``ifeval_partial_credit`` the score in [0, 1] (IFEval rows: the fraction of their
    constraints met; others 0.0 or 1.0). ``dataset`` is matched case-insensitively; ``by_dataset`` keeps the
    records' own spelling.

    ``workers``: processes to use (None -> CPU count, 0 -> score in this process). Each item gets
    ``timeout_s`` seconds; an item over its limit is scored False and counted. Metrics keys: ``n``,
    ``correct``, ``timeouts``, ``errors`` (unexpected verifier exceptions, scored False),
    ``error_messages`` (first few, with record index), ``workers`` (processes used), ``seconds``,
    ``by_dataset`` ({dataset: {"n", "correct"}}).
    Raises ValueError naming the record index and field for a record that cannot be scored.
    """
    for i, record in enumerate(records):
        validate_record(record, where=f"record {i}")
    options = ScoreOptions(paper_compat=paper_compat, ifeval_partial_credit=ifeval_partial_credit)
    start = time.monotonic()
    scores = [0.0] * len(records)
    metrics = {"n": len(records), "correct": 0, "timeouts": 0, "errors": 0, "error_messages": [], "workers": 0}

    def fail(index: int, message: str) -> None:
        metrics["errors"] += 1
        if len(metrics["error_messages"]) < 5:
            metrics["error_messages"].append(f"record {index}: {message}")

    n_workers = (os.cpu_count() or 1) if workers is None else max(0, int(workers))
    n_workers = min(n_workers, len(records))
    if n_workers == 0 or len(records) < inprocess_below or not _can_fork_workers():
        for i, record in enumerate(records):
            try:
                scores[i] = _score_one(record, timeout_s=timeout_s, isolate=True, options=options)
            except VerifyTimeout:
                metrics["timeouts"] += 1
            except Exception as exc:  # noqa: BLE001 -- counted, scored incorrect
                fail(i, f"{type(exc).__name__}: {exc}")
    else:
        if any(canonical_dataset(r["dataset"]) == "math" for r in records):
            from megatron_tulu.rewards.math_symbolic import warm_up

            warm_up()  # import sympy + build the parser once here; forked workers inherit it
        if any(canonical_dataset(r["dataset"]) == "ifeval" and ("language" in str(r["ground_truth"])
                                                                 or "english_" in str(r["ground_truth"]))
               for r in records):
            from megatron_tulu.rewards.ifeval_text import warm_up_language

            warm_up_language()
        metrics["workers"] = n_workers
        _run_pool(records, scores, metrics, fail, n_workers, timeout_s, options)

    verdicts = list(scores) if ifeval_partial_credit else [s == 1.0 for s in scores]
    metrics["correct"] = sum(verdicts)
    by_dataset: dict[str, dict[str, int]] = {}
    for record, ok in zip(records, verdicts):
        entry = by_dataset.setdefault(record["dataset"], {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += ok  # a bool counts 1; a partial-credit score its fraction
    metrics["by_dataset"] = by_dataset
    metrics["seconds"] = time.monotonic() - start
    return verdicts, metrics


def _run_pool(records, scores, metrics, fail, n_workers, timeout_s, options: ScoreOptions) -> None:
    """Chunks of indices go to workers; verdicts come back through shared memory, so per item there is
    no pickling and no pipe round trip. The item a worker is on is the first pending one of its chunk;
    when it overruns ``timeout_s`` the worker is killed, the item counted as a timeout and the rest of
    the chunk requeued."""
    ctx = mp.get_context("fork")
    n = len(records)
    status = ctx.RawArray("b", n)
    shared_scores = ctx.RawArray("d", n)
    chunk_size = max(1, min(64, n // (n_workers * 4)))
    queue = collections.deque((i, min(i + chunk_size, n)) for i in range(0, n, chunk_size))
    pool = [_Worker(ctx, records, status, shared_scores, timeout_s, options) for _ in range(n_workers)]

    def current_item(w: _Worker) -> int:
        start, stop = w.chunk
        return next((i for i in range(start, stop) if status[i] == _PENDING), stop)

    try:
        for w in pool:
            if queue:
                w.submit(queue.popleft())
        while any(w.chunk is not None for w in pool):
            busy = [w for w in pool if w.chunk is not None]
            wait_s = max(0.0, min(w.clock[0] + timeout_s - time.monotonic() for w in busy))
            ready = set(wait_connections([w.conn for w in busy], timeout=wait_s))
            for slot, w in enumerate(pool):
                if w.chunk is None:
                    continue
                if w.conn in ready:
                    try:
                        for index, message in w.conn.recv():
                            fail(index, message)
                        w.chunk = None
                    except (EOFError, OSError):  # died (e.g. killed for memory): its item is incorrect
                        pool[slot] = w = _replace(w, queue, ctx, records, status, shared_scores, timeout_s, options,
                                                  on_item=lambda i: fail(i, "worker died"))
                else:
                    item = current_item(w)  # status first, then the clock (the worker writes them in reverse)
                    if item >= w.chunk[1] or time.monotonic() - w.clock[0] < timeout_s:
                        continue

                    def count_timeout(i: int) -> None:
                        metrics["timeouts"] += 1  # verdict stays pending, i.e. incorrect

                    pool[slot] = w = _replace(w, queue, ctx, records, status, shared_scores, timeout_s, options,
                                              on_item=count_timeout, expected=item)
                if w.chunk is None and queue:
                    w.submit(queue.popleft())
    finally:
        for w in pool:
            if w.chunk is None:
                w.close()
            else:
                w.kill()
    for i in range(n):  # an item that timed out, errored or never ran scores 0
        scores[i] = shared_scores[i] if status[i] in (_TRUE, _FALSE) else 0.0


def _replace(w: _Worker, queue, ctx, records, status, scores, timeout_s, options, on_item, expected=None) -> _Worker:
    """Kill ``w``; charge ``on_item`` to the item it was on and requeue the rest of its chunk; fork anew.

    When ``expected`` is given and that item finished in the instant before the kill, nothing is charged
    and the rest of the chunk (from the next pending item) is requeued."""
    w.kill()
    start, stop = w.chunk
    item = next((i for i in range(start, stop) if status[i] == _PENDING), stop)
    if item < stop:
        if expected is None or item == expected:
            on_item(item)
            item += 1
        if item < stop:
            queue.appendleft((item, stop))
    return _Worker(ctx, records, status, scores, timeout_s, options)
