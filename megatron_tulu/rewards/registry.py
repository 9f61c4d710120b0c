"""Verifier registry: a row's ``dataset`` field -> verifier; ``verify`` and the RLVR ``reward``.

All functions are pure per item (string in, bool/float out). The only process-wide side effect is that
sympy and its LaTeX parser get imported and cached in the calling process on first use.
"""

from __future__ import annotations

import time
from typing import Callable

from megatron_tulu.rewards.gsm8k import verify_gsm8k
from megatron_tulu.rewards.ifeval import verify_ifeval
from megatron_tulu.rewards.math_answer import candidates, cheap_equal
from megatron_tulu.rewards.math_symbolic import Timeout, reject_reason, run_with_deadline, sympy_equal, warm_up

DEFAULT_TIMEOUT_S = 3.0
"""Per-item limit. The lark LaTeX parser takes 0.1-1.5 s per expression on a busy laptop core, so a
genuine symbolic check needs a few seconds; anything slower is adversarial or hopeless."""


class VerifyTimeout(Exception):
    """The item ran past its time limit; callers count it and score it incorrect."""


def verify_math(response: str, ground_truth: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                isolate: bool = True, paper_compat: bool = False) -> bool:
    """MATH flex: any candidate (boxed, Minerva, last ``$..$``) equivalent to ``ground_truth``.

    String/rational comparison first; sympy only for what remains, inside a forked child killed at the
    deadline (``isolate=True``) or in-process when the caller itself is a killable worker. Raises
    :class:`VerifyTimeout` when the deadline passes. ``paper_compat`` changes nothing for MATH.
    """
    del paper_compat
    gt = str(ground_truth)
    cands = candidates(response)
    pending = []
    for c in cands:
        verdict = cheap_equal(c, gt)
        if verdict:
            return True
        if verdict is None and not reject_reason(c) and not reject_reason(gt):
            pending.append(c)
    if not pending:
        return False
    if isolate:
        warm_up()  # one-time sympy import + parser build belongs to the process, not to this item's budget
    deadline = time.monotonic() + timeout_s
    for c in pending:
        if not isolate:
            if sympy_equal(c, gt):
                return True
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise VerifyTimeout(f"math verification exceeded {timeout_s}s")
        try:
            if run_with_deadline(sympy_equal, (c, gt), remaining):
                return True
        except Timeout:
            raise VerifyTimeout(f"math verification exceeded {timeout_s}s") from None
        except RuntimeError:
            continue  # the child died (e.g. out of memory): this candidate is not equivalent
    return False


def _gsm8k(response: str, ground_truth, *, timeout_s: float, isolate: bool, paper_compat: bool) -> bool:
    del timeout_s, isolate  # linear-time string work: nothing to bound
    return verify_gsm8k(response, str(ground_truth), paper_compat=paper_compat)


def _ifeval(response: str, ground_truth, *, timeout_s: float, isolate: bool, paper_compat: bool) -> bool:
    del timeout_s, isolate, paper_compat  # linear-time checks; no known paper quirk to reproduce
    return verify_ifeval(response, ground_truth)


VERIFIERS: dict[str, Callable[..., bool]] = {
    "gsm8k": _gsm8k,
    "math": verify_math,
    "ifeval": _ifeval,
}
"""dataset name -> ``fn(response, ground_truth, *, timeout_s, isolate, paper_compat) -> bool``."""


def get_verifier(dataset: str) -> Callable[..., bool]:
    try:
        return VERIFIERS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(VERIFIERS))}") from None


def verify(dataset: str, response: str, ground_truth: str | dict, *, paper_compat: bool = False,
           timeout_s: float = DEFAULT_TIMEOUT_S, isolate: bool = True) -> bool:
    """True when ``response`` is correct for ``ground_truth`` under ``dataset``'s verifier.

    A timeout is returned as False (use :func:`verify_batch` to have timeouts counted). Unknown dataset
    -> ValueError naming it and the known ones; malformed ground truth -> ValueError naming the field.
    """
    fn = get_verifier(dataset)
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    try:
        return bool(fn(response, ground_truth, timeout_s=timeout_s, isolate=isolate, paper_compat=paper_compat))
    except VerifyTimeout:
        return False


def reward(dataset: str, response: str, ground_truth: str | dict, alpha: float = 10.0, **kw) -> float:
    """RLVR verifiable reward: ``alpha`` when :func:`verify` says correct, else 0.0."""
    return float(alpha) if verify(dataset, response, ground_truth, **kw) else 0.0
