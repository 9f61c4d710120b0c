"""Verifier registry: a row's ``dataset`` field -> verifier; ``verify`` and the RLVR ``reward``.

All functions are pure per item (string in, bool/float out). The only process-wide side effect is that
sympy and its LaTeX parser get imported and cached in the calling process on first use.
"""

from __future__ import annotations

import time
from typing import Callable

from megatron_tulu.rewards.gsm8k import verify_gsm8k
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


def _gsm8k(response: str, ground_truth, *, timeout_s: float, isolate: bool, paper_compat: bool,
           partial_credit: bool = False) -> bool:
    del timeout_s, isolate, partial_credit  # linear-time string work: nothing to bound; one answer, no parts
    return verify_gsm8k(response, str(ground_truth), paper_compat=paper_compat)


def _math(response: str, ground_truth, *, timeout_s: float, isolate: bool, paper_compat: bool,
          partial_credit: bool = False) -> bool:
    del partial_credit  # one answer, no parts
    return verify_math(response, ground_truth, timeout_s=timeout_s, isolate=isolate, paper_compat=paper_compat)


def _ifeval(response: str, ground_truth, *, timeout_s: float, isolate: bool, paper_compat: bool,
            partial_credit: bool = False) -> float:
    del timeout_s, isolate  # linear-time checks: nothing to bound
    from megatron_tulu.rewards.ifeval import ifeval_score

    return ifeval_score(response, ground_truth, partial_credit=partial_credit, paper_compat=paper_compat)


VERIFIERS: dict[str, Callable[..., bool | float]] = {
    "gsm8k": _gsm8k,
    "math": _math,
    "ifeval": _ifeval,
}
"""canonical (lower-case) dataset name -> ``fn(response, ground_truth, *, timeout_s, isolate, paper_compat,
partial_credit) -> bool`` (a float in [0, 1] for IFEval with ``partial_credit``)."""


def canonical_dataset(dataset: str) -> str:
    """The registry's name for a row's ``dataset`` value: matched case-insensitively (the released RLVR sets say
    ``MATH``, ``gsm8k`` and ``ifeval``); rows and outputs keep their own spelling. Raises naming the known ones."""
    name = dataset.lower() if isinstance(dataset, str) else dataset
    if name not in VERIFIERS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets (any case): {', '.join(sorted(VERIFIERS))}")
    return name


def get_verifier(dataset: str) -> Callable[..., bool | float]:
    return VERIFIERS[canonical_dataset(dataset)]


def validate_ground_truth(dataset: str, ground_truth) -> None:
    """``ValueError`` saying what is wrong when ``dataset``'s verifier cannot judge ``ground_truth`` (checked when
    data loads, before any model or engine starts): an unknown dataset, an IFEval instruction or function it does
    not know or an argument missing, a GSM8K answer that is not a number, a non-string MATH answer."""
    name = canonical_dataset(dataset)
    if name == "ifeval":
        from megatron_tulu.rewards.ifeval import validate_ground_truth as validate_ifeval

        validate_ifeval(ground_truth)
        return
    if not isinstance(ground_truth, (str, int, float)) or isinstance(ground_truth, bool):
        raise ValueError(f"must be a string for dataset {dataset!r}, got {type(ground_truth).__name__}")
    if name == "gsm8k":
        from megatron_tulu.rewards.gsm8k import parse_ground_truth

        parse_ground_truth(ground_truth)


def score(dataset: str, response: str, ground_truth: str | dict, *, paper_compat: bool = False,
          timeout_s: float = DEFAULT_TIMEOUT_S, isolate: bool = True, ifeval_partial_credit: bool = False) -> float:
    """``response``'s score in [0, 1] for ``ground_truth`` under ``dataset``'s verifier: 1.0 correct, 0.0 not, or
    for IFEval with ``ifeval_partial_credit`` the fraction of its constraints met.

    A timeout scores 0 (use :func:`verify_batch` to have timeouts counted). Unknown dataset -> ValueError naming it
    and the known ones; malformed ground truth -> ValueError naming the field.
    """
    fn = get_verifier(dataset)
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    try:
        return float(fn(response, ground_truth, timeout_s=timeout_s, isolate=isolate, paper_compat=paper_compat,
                        partial_credit=ifeval_partial_credit))
    except VerifyTimeout:
        return 0.0


def verify(dataset: str, response: str, ground_truth: str | dict, **kw) -> bool:
    """True when ``response`` is fully correct for ``ground_truth`` (:func:`score` is 1)."""
    return score(dataset, response, ground_truth, **kw) == 1.0


def reward(dataset: str, response: str, ground_truth: str | dict, alpha: float = 10.0, **kw) -> float:
    """RLVR verifiable reward: ``alpha`` times :func:`score`."""
    return float(alpha) * score(dataset, response, ground_truth, **kw)
