"""A tiny, safe evaluator for numeric LaTeX answers (``2\\sqrt{2}``, ``\\frac{\\pi}{3}``, ``3^{-2}``).

Most MATH answers are numbers written in LaTeX. Deciding ``\\sqrt{8}`` vs ``2\\sqrt{2}`` with sympy costs
0.1-2 s on the lark Earley parser; evaluating both to floats here costs microseconds. This is a
recursive-descent parser over a fixed grammar (no ``eval``), with hard limits: at most
:data:`MAX_TOKENS` tokens, nesting depth :data:`MAX_DEPTH`, exponents of magnitude <= 1000, finite real
results only. Anything else (symbols, tuples, intervals, overflow) returns None and is left to sympy.

Grammar: ``expr := term (('+'|'-') term)*``; ``term := unary (('*'|'\\cdot'|'\\times'|'/'|implicit) unary)*``;
``unary := ('+'|'-') unary | power``; ``power := atom ('^' unary-atom)?`` (right-associative);
``atom := number | \\frac{expr}{expr} | \\sqrt[n]{expr} | (expr) | {expr} | \\pi``.
"""

from __future__ import annotations

import math
import re

MAX_TOKENS = 200
MAX_DEPTH = 30
MAX_EXPONENT = 1000.0

_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|\.\d+|\\[A-Za-z]+|\S")
_ATOM_START = {"(", "{", "\\frac", "\\sqrt", "\\pi"}


class _Fail(Exception):
    pass


class _Parser:
    def __init__(self, tokens: list[str], env: dict[str, float] | None = None):
        self.t = tokens
        self.i = 0
        self.depth = 0
        self.env = env or {}

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Fail
        self.i += 1
        return tok

    def expr(self) -> float:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Fail
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        self.depth -= 1
        return value

    def term(self) -> float:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "\\cdot", "\\times"):
                self.take()
                value *= self.unary()
            elif tok in ("/", "\\div"):
                self.take()
                den = self.unary()
                if den == 0:
                    raise _Fail
                value /= den
            elif tok in _ATOM_START or (tok is not None and (tok[0].isdigit() or tok in self.env)):
                value *= self.power()  # implicit multiplication: 2\sqrt{2}, 3\pi, 2(1+x)
            else:
                return value

    def unary(self) -> float:
        tok = self.peek()
        if tok in ("+", "-"):
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Fail
            value = self.unary()
            self.depth -= 1
            return -value if tok == "-" else value
        return self.power()

    def power(self) -> float:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        exponent = self.unary() if self.peek() in ("+", "-") else self.power()
        if abs(exponent) > MAX_EXPONENT or (base == 0 and exponent < 0):
            raise _Fail
        if base < 0 and exponent != int(exponent):
            raise _Fail  # complex
        try:
            value = base ** exponent
        except OverflowError:
            raise _Fail from None
        if isinstance(value, complex) or not math.isfinite(value):
            raise _Fail
        return value

    def atom(self) -> float:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return float(tok)
        if tok == "\\pi":
            return math.pi
        if tok in self.env:
            return self.env[tok]
        if tok in ("(", "{"):
            value = self.expr()
            self.take(")" if tok == "(" else "}")
            return value
        if tok == "\\frac":
            num, den = self.group(), self.group()
            if den == 0:
                raise _Fail
            return num / den
        if tok == "\\sqrt":
            index = 2.0
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
            radicand = self.group()
            if radicand < 0 or index == 0 or abs(index) > MAX_EXPONENT:
                raise _Fail
            return radicand ** (1.0 / index)
        raise _Fail

    def group(self) -> float:
        if self.peek() == "{":
            self.take()
            value = self.expr()
            self.take("}")
            return value
        tok = self.take()  # \frac12 style single-token argument
        if tok[0].isdigit():
            return float(tok)
        raise _Fail


def evaluate(latex: str, env: dict[str, float] | None = None) -> float | None:
    """Float value of a numeric LaTeX expression (single-letter variables taken from ``env``), or None
    when it is not one (or breaks a limit)."""
    tokens = _TOKEN_RE.findall(latex)
    if not tokens or len(tokens) > MAX_TOKENS:
        return None
    parser = _Parser(tokens, env)
    try:
        value = parser.expr()
    except (_Fail, ZeroDivisionError, OverflowError, ValueError, RecursionError):
        return None
    if parser.i != len(tokens) or not math.isfinite(value):
        return None
    return value


_LETTER_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z](?![A-Za-z])")
# Irrational-looking, fixed probe values: identical every run (deterministic verdicts), and an accidental
# agreement of two different rational functions at all of them is vanishingly unlikely.
_PROBES = (0.5772156649, 1.4142135623, 2.7182818284, 0.3183098861, 1.6180339887, 7.3890560989, 12.566370614)


def numeric_equal(a: str, b: str) -> bool | None:
    """True/False when both sides are numeric expressions, None otherwise.

    Expressions in single-letter variables (``x^2+2x+1`` vs ``(x+1)^2``) are compared by evaluating both
    at fixed probe points (the Schwartz-Zippel idea): equal at every valid probe -> True, different at
    one -> False, fewer than 3 probes where both sides are defined -> None (left to sympy).
    """
    names = sorted(set(_LETTER_RE.findall(a)) | set(_LETTER_RE.findall(b)))
    if len(names) > 3:
        return None
    if not names:
        va, vb = evaluate(a), evaluate(b)
        if va is None or vb is None:
            return None
        return math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-12)
    valid = 0
    for k in range(len(_PROBES)):
        env = {name: _PROBES[(k + j) % len(_PROBES)] * (1 + j) for j, name in enumerate(names)}
        va, vb = evaluate(a, env), evaluate(b, env)
        if va is None or vb is None:
            continue
        if not math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-12):
            return False
        valid += 1
    return True if valid >= 3 else None
