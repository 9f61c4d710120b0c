"""Score many records in parallel worker processes, each item under a hard time limit.

The RLVR driver calls :func:`verify_batch` once per rollout step (a few hundred short responses), and the
score CLI calls it on whole files. Design:

- Records are validated in the caller first (dataset known, response a string, ifeval ground truth
  well-formed), so bad input fails fast with the record index and field, before any work is spent.
- Small batches (< ``inprocess_below``) or ``workers=0`` are scored in the calling process: no start-up
  cost. gsm8k/ifeval checks are linear-time; math's sympy step runs in a forked child killed at the
  deadline (see :mod:`math_symbolic`), so the in-process path is time-bounded too.
- Larger batches go to ``workers`` forked processes, one item in flight per worker. The parent waits on
  the pipes with a deadline; a worker that overruns its item is SIGKILLed, the item is scored incorrect
  and counted in ``metrics["timeouts"]``, and a fresh worker is forked. Workers run sympy in-process (no
  second fork), because the worker itself is the sandbox. Forking after sympy is imported in the parent
  means workers start in milliseconds and never pay the 1 s import/parser build.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.connection import wait as wait_connections

from megatron_tulu.rewards.ifeval import parse_ground_truth as parse_ifeval_ground_truth
from megatron_tulu.rewards.registry import DEFAULT_TIMEOUT_S, VERIFIERS, VerifyTimeout, get_verifier

INPROCESS_BELOW = 32
"""Batches smaller than this are scored in the caller's process (no worker start-up)."""


def validate_record(record: dict, where: str = "record") -> None:
    """ValueError naming ``where`` and the field when ``record`` cannot be scored."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in ("dataset", "response", "ground_truth"):
        if field not in record:
            raise ValueError(f"{where}: missing field {field!r}")
    try:
        get_verifier(record["dataset"])
    except ValueError as exc:
        raise ValueError(f"{where}: field 'dataset': {exc}") from None
    if not isinstance(record["response"], str):
        raise ValueError(f"{where}: field 'response' must be a string, got {type(record['response']).__name__}")
    gt = record["ground_truth"]
    if record["dataset"] == "ifeval":
        try:
            parse_ifeval_ground_truth(gt)
        except ValueError as exc:
            raise ValueError(f"{where}: field 'ground_truth': {exc}") from None
    elif not isinstance(gt, (str, int, float)) or isinstance(gt, bool):
        raise ValueError(f"{where}: field 'ground_truth' must be a string for {record['dataset']}")


def _score_one(record: dict, *, timeout_s: float, isolate: bool, paper_compat: bool) -> bool:
    fn = VERIFIERS[record["dataset"]]
    return bool(fn(record["response"], record["ground_truth"], timeout_s=timeout_s, isolate=isolate,
                   paper_compat=paper_compat))


def _worker_main(conn, timeout_s: float, paper_compat: bool) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, record = msg
        try:
            result = (index, "ok", _score_one(record, timeout_s=timeout_s, isolate=False, paper_compat=paper_compat))
        except Exception as exc:  # noqa: BLE001 -- reported to the parent and counted, never hidden
            result = (index, "err", f"{type(exc).__name__}: {exc}")
        conn.send(result)


class _Worker:
    def __init__(self, ctx, timeout_s: float, paper_compat: bool):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, timeout_s, paper_compat), daemon=True)
        self.proc.start()
        child.close()
        self.index: int | None = None
        self.started = 0.0

    def submit(self, index: int, record: dict) -> None:
        self.index, self.started = index, time.monotonic()
        self.conn.send((index, record))

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
                 paper_compat: bool = False, inprocess_below: int = INPROCESS_BELOW) -> tuple[list[bool], dict]:
    """Verdicts for ``records`` (dicts with dataset/response/ground_truth), in order, and metrics.

    ``workers``: processes to use (None -> CPU count, 0 -> score in this process). Each item gets
    ``timeout_s`` seconds; an item over its limit is scored False and counted. Metrics keys: ``n``,
    ``correct``, ``timeouts``, ``errors`` (unexpected verifier exceptions, scored False),
    ``error_messages`` (first few, with record index), ``workers`` (processes used), ``seconds``,
    ``by_dataset`` ({dataset: {"n", "correct"}}).
    Raises ValueError naming the record index and field for a record that cannot be scored.
    """
    for i, record in enumerate(records):
        validate_record(record, where=f"record {i}")
    start = time.monotonic()
    verdicts: list[bool] = [False] * len(records)
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
                verdicts[i] = _score_one(record, timeout_s=timeout_s, isolate=True, paper_compat=paper_compat)
            except VerifyTimeout:
                metrics["timeouts"] += 1
            except Exception as exc:  # noqa: BLE001 -- counted, scored incorrect
                fail(i, f"{type(exc).__name__}: {exc}")
    else:
        if any(r["dataset"] == "math" for r in records):
            from megatron_tulu.rewards.math_symbolic import warm_up

            warm_up()  # import sympy + build the parser once here; forked workers inherit it
        if any(r["dataset"] == "ifeval" for r in records):
            from megatron_tulu.rewards.ifeval_text import warm_up_language

            warm_up_language()
        metrics["workers"] = n_workers
        _run_pool(records, verdicts, metrics, fail, n_workers, timeout_s, paper_compat)

    metrics["correct"] = sum(verdicts)
    by_dataset: dict[str, dict[str, int]] = {}
    for record, ok in zip(records, verdicts):
        entry = by_dataset.setdefault(record["dataset"], {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(ok)
    metrics["by_dataset"] = by_dataset
    metrics["seconds"] = time.monotonic() - start
    return verdicts, metrics


def _run_pool(records, verdicts, metrics, fail, n_workers, timeout_s, paper_compat) -> None:
    ctx = mp.get_context("fork")
    pool = [_Worker(ctx, timeout_s, paper_compat) for _ in range(n_workers)]
    next_index = 0
    pending = len(records)
    try:
        for w in pool:
            if next_index < len(records):
                w.submit(next_index, records[next_index])
                next_index += 1
        while pending:
            busy = [w for w in pool if w.index is not None]
            now = time.monotonic()
            wait_s = max(0.0, min(w.started + timeout_s - now for w in busy))
            ready = set(wait_connections([w.conn for w in busy], timeout=wait_s))
            now = time.monotonic()
            for slot, w in enumerate(pool):
                if w.index is None:
                    continue
                if w.conn in ready:
                    try:
                        index, status, value = w.conn.recv()
                    except (EOFError, OSError):  # the worker died (e.g. killed for memory): incorrect
                        index, status, value = w.index, "err", "worker died"
                        w.kill()
                        pool[slot] = w = _Worker(ctx, timeout_s, paper_compat)
                    if status == "ok":
                        verdicts[index] = value
                    else:
                        fail(index, value)
                elif now - w.started >= timeout_s:
                    metrics["timeouts"] += 1  # verdicts[index] stays False
                    w.kill()
                    pool[slot] = w = _Worker(ctx, timeout_s, paper_compat)
                else:
                    continue
                pending -= 1
                w.index = None
                if next_index < len(records):
                    w.submit(next_index, records[next_index])
                    next_index += 1
    finally:
        for w in pool:
            if w.index is None:
                w.close()
            else:
                w.kill()
