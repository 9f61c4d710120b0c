"""Symbolic equivalence of two LaTeX answers with sympy, bounded in time and isolated from the caller.

Why the care: sympy evaluates while it parses, so ``10^{10^{10^{10}}}`` from an untrusted model makes
``parse_latex`` compute a number with 10^10^10 digits (hours, gigabytes), and deep nesting or long input
makes the Earley parser slow. Two defences, both needed:

1. :func:`reject_reason` refuses inputs before sympy sees them: too long, too deeply nested, exponent
   towers, long exponents or huge literals. Refused means "not equivalent" (the cheap string/rational
   checks in :mod:`math_answer` have already run).
2. :func:`run_with_deadline` runs the sympy work in a forked child process and SIGKILLs it at the
   deadline. Unlike ``signal.alarm`` this works off the main thread and inside worker processes (even
   daemonic ones, since it uses ``os.fork`` directly rather than ``multiprocessing``). Batch workers that
   are themselves killed at the deadline by :mod:`megatron_tulu.rewards.batch` call
   :func:`sympy_equal` directly instead (``isolate=False``).

LaTeX parsing uses ``sympy.parsing.latex.parse_latex(..., backend="lark")``: the default antlr backend
needs antlr4-python3-runtime 4.11, which conflicts with the 4.9.3 that hydra-core/omegaconf pin in this
environment. The lark backend is slow (tens of ms to a second per expression on the Earley parser), so
sympy is the last resort, after string and exact-rational comparison.
"""

from __future__ import annotations

import os
import pickle
import re
import select
import signal
import time

MAX_SYMPY_CHARS = 160
MAX_NESTING = 8
MAX_CARETS = 4
MAX_DIGITS = 40

_NUM_RE = re.compile(r"\d+")
_EXP_TOWER_RE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\^\s*\{[^{}]*\{")
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{4,}")
_EXP_RE = re.compile(r"\^\s*(\{[^{}]*\}|\\?[A-Za-z]+|\d+)")


def reject_reason(expr: str) -> str | None:
    """Why ``expr`` must not be handed to sympy (None when it looks safe). Linear time."""
    if len(expr) > MAX_SYMPY_CHARS:
        return f"longer than {MAX_SYMPY_CHARS} chars"
    depth = deepest = 0
    for ch in expr:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    if deepest > MAX_NESTING:
        return f"nesting deeper than {MAX_NESTING}"
    if expr.count("^") > MAX_CARETS or "**" in expr:
        return "too many powers"
    if _EXP_TOWER_RE.search(expr):
        return "exponent tower"
    for m in _EXP_RE.finditer(expr):
        digits = "".join(_NUM_RE.findall(m.group(1)))
        if len(digits) > 3:
            return "exponent too large"
    if any(len(n) > MAX_DIGITS for n in _NUM_RE.findall(expr)):
        return f"literal with more than {MAX_DIGITS} digits"
    if "," in expr:  # tuples/intervals/lists: the lark grammar has no rule for them (cheap_equal splits them)
        return "comma"
    if _WORD_RE.search(expr):  # prose ("the answer is") would parse as a product of single-letter symbols
        return "contains words"
    if "!" in expr:  # factorials of big numbers are as dangerous as powers
        return "factorial"
    return None


def _parse(expr: str):
    from sympy.parsing.latex import parse_latex

    return parse_latex(expr, backend="lark")


def sympy_equal(a: str, b: str) -> bool:
    """``simplify(parse(a) - parse(b)) == 0``, as in Minerva/open-instruct ``is_equiv``; parse errors are
    not-equal. Unbounded in time: call it through :func:`run_with_deadline` or from a killable worker."""
    if reject_reason(a) or reject_reason(b):
        return False
    import sympy

    try:
        pa, pb = _parse(a), _parse(b)
        if not (isinstance(pa, sympy.Expr) and isinstance(pb, sympy.Expr)):
            return bool(pa == pb)
        diff = pa - pb
        if diff == 0:
            return True
        return bool(sympy.simplify(diff) == 0)
    except Exception:  # noqa: BLE001 -- any parser/sympy failure on untrusted text means "not equal"
        return False


class Timeout(Exception):
    """The isolated computation ran past its deadline and was killed."""


def warm_up() -> None:
    """Import sympy and build the lark LaTeX parser in this process, so forked children start warm."""
    _parse("1")


def run_with_deadline(fn, args: tuple, timeout_s: float):
    """Run ``fn(*args)`` in a forked child and return its (picklable) result.

    Raises :class:`Timeout` if it has not answered within ``timeout_s`` (the child is SIGKILLed) and
    RuntimeError if the child died without answering. Works from any thread and any process on POSIX.
    """
    warm_up()  # build the parser once here, not once per child
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: compute, write the pickled result, leave without running any cleanup handlers
        code = 0
        try:
            os.close(read_fd)
            try:
                payload = pickle.dumps(("ok", fn(*args)))
            except BaseException as exc:  # noqa: BLE001 -- reported to the parent, never swallowed
                payload = pickle.dumps(("err", repr(exc)))
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view):]
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"sympy took longer than {timeout_s:.2f}s")
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError("sympy child exited without an answer")
    status, value = pickle.loads(b"".join(chunks))
    if status != "ok":
        raise RuntimeError(f"sympy child failed: {value}")
    return value
