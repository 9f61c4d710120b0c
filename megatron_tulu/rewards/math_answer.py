"""MATH answers: extraction from a model response, Hendrycks/Minerva normalisation, cheap equality.

Tülu 3's "flex" MATH verifier (open-instruct ``verify_math_sample``) collects candidate answers three
ways and accepts the response if any candidate equals the ground truth:

1. the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-balanced, so nested ``\\frac{a}{b}`` survives),
2. the Minerva sentence "Final Answer: The final answer is X. I hope it is correct.",
3. only if neither exists, the last ``$...$`` span (and, if there is no ``$`` pair either, the whole
   response when it is short).

Equality is tried from cheapest to dearest: normalised strings (Hendrycks ``strip_string`` and Minerva
``normalize_final_answer``), then exact rational comparison of plain numbers/fractions, and only then a
symbolic check in :mod:`megatron_tulu.rewards.math_symbolic` (time-bounded, isolated).

Everything here is linear-time string work on candidates capped at :data:`MAX_ANSWER_CHARS`, so a 100 KB
response cannot make the regexes below quadratic.
"""

from __future__ import annotations

import re
from fractions import Fraction

from megatron_tulu.rewards.math_numeric import numeric_equal

MAX_ANSWER_CHARS = 512
"""Candidates longer than this are dropped: no real MATH answer is this long, and the Minerva regexes
(``(.*?)\\$(.*?)\\$``) are quadratic on long inputs."""

_MINERVA_RE = re.compile(r"Final Answer: The final answer is(.*?)\. I hope it is correct\.", re.DOTALL)
INVALID_ANSWER = "[invalidanswer]"


# ----------------------------------------------------------------------------------------------- extraction
def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` (balanced braces), or ``\\boxed x`` form.

    Returns None when there is no box or its braces never close.
    """
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx:]
    if rest.startswith("\\boxed "):  # "\boxed 5" (no braces) ends at the next "$" or whitespace
        return rest[len("\\boxed "):].split("$")[0].split()[0] if rest[7:].strip() else None
    open_at = rest.find("{")
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(rest)):
        ch = rest[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[open_at + 1 : i]
    return None


def minerva_answer(text: str) -> str | None:
    """X from "Final Answer: The final answer is X. I hope it is correct." (the first such sentence,
    as in Minerva/lm-eval), or None."""
    m = _MINERVA_RE.search(text + "I hope it is correct.") if "Final Answer" in text else None
    return m.group(1).strip() if m else None


def last_dollar_span(text: str) -> str | None:
    """Content between the last two ``$`` signs, or None when there are fewer than two."""
    end = text.rfind("$")
    if end <= 0:
        return None
    start = text.rfind("$", 0, end)
    if start < 0:
        return None
    return text[start + 1 : end]


def candidates(response: str) -> list[str]:
    """Candidate answers in the order open-instruct's flex verifier tries them, Minerva-normalised."""
    out: list[str] = []
    boxed = last_boxed(response)
    if boxed is not None:
        out.append(boxed)
    minerva = minerva_answer(response)
    if minerva is not None:
        out.append(normalize_final_answer(minerva) if len(minerva) <= MAX_ANSWER_CHARS else minerva)
    if not out:
        span = last_dollar_span(response)
        if span is not None:
            out.append(normalize_final_answer(span) if len(span) <= MAX_ANSWER_CHARS else span)
        elif len(response) <= MAX_ANSWER_CHARS:
            out.append(normalize_final_answer(response))
    return [c for c in out if c and len(c) <= MAX_ANSWER_CHARS]


# ------------------------------------------------------------------------------- Minerva normalisation
_SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]
_REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots",
    "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters",
    "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
    "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
    r",\!", "{,}", '"', "\\dots",
]


def normalize_final_answer(final_answer: str) -> str:
    """Minerva (Lewkowycz et al. 2022, appendix D) normalisation, as used by lm-eval and open-instruct."""
    final_answer = final_answer.split("=")[-1]
    # Deviation from Minerva: drop \left/\right first, else removing the unit "ft" turns "\left(" into
    # "\le(" and a correct "\left(1, 2\right)" can never match "(1,2)".
    final_answer = final_answer.replace("\\left", "").replace("\\right", "")
    for before, after in _SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in _REMOVED_EXPRESSIONS:
        final_answer = final_answer.replace(expr, "")
    final_answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if final_answer.replace(",", "").isdigit():
        final_answer = final_answer.replace(",", "")
    return final_answer


# ----------------------------------------------------------------------------- Hendrycks normalisation
def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if substr and substr[0] == "{":
            new_str += substr
            continue
        if len(substr) < 2:
            return string
        a, b = substr[0], substr[1]
        if b != "{":
            new_str += "{" + a + "}{" + b + "}" + substr[2:]
        else:
            new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def _fix_a_slash_b(string: str) -> str:
    parts = string.split("/")
    if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[0]) or not re.fullmatch(r"\d+", parts[1]):
        return string
    return "\\frac{" + parts[0] + "}{" + parts[1] + "}"


def _remove_right_units(string: str) -> str:
    if "\\text{ " in string:
        return string.split("\\text{ ")[0]
    return string


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    new_string = splits[0]
    for split in splits[1:]:
        if split and split[0] != "{":
            new_string += "\\sqrt{" + split[0] + "}" + split[1:]
        else:
            new_string += "\\sqrt" + split
    return new_string


def strip_string(string: str) -> str:
    """Hendrycks et al. (2021) MATH normalisation (``\\dfrac``, ``\\left``, ``^\\circ``, ``\\$``, units,
    spaces, ``0.5`` → ``\\frac{1}{2}``, ``a/b`` → ``\\frac{a}{b}``)."""
    string = string.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "").replace("%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    halves = string.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        string = halves[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


# ---------------------------------------------------------------------------------------- cheap equality
_INT_OR_DEC = re.compile(r"[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?|[-+]?\.\d+")
_FRAC = re.compile(r"([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}")
_SLASH = re.compile(r"([-+]?\d+)/(\d+)")


def as_rational(s: str) -> Fraction | None:
    """Exact value of a plain number, ``a/b`` or ``\\frac{a}{b}`` (after :func:`strip_string`), else None.

    Numbers with more than 60 digits are refused so that an adversarial literal cannot make this slow.
    """
    s = s.strip().rstrip(".")
    if not s or len(s) > 80:
        return None
    try:
        if _INT_OR_DEC.fullmatch(s):
            return Fraction(s.replace(",", ""))
        m = _FRAC.fullmatch(s)
        if m:
            den = int(m.group(3))
            val = Fraction(int(m.group(2)), den) if den else None
            return -val if (val is not None and m.group(1) == "-") else val
        m = _SLASH.fullmatch(s)
        if m and int(m.group(2)):
            return Fraction(int(m.group(1)), int(m.group(2)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _split_tuple(s: str) -> list[str] | None:
    """Elements of ``(a,b)``/``[a,b]`` split at top-level commas, or None when ``s`` is not such a tuple."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    parts, depth, current = [], 0, ""
    for ch in s[1:-1]:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return None
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts if len(parts) > 1 else None


def cheap_equal(candidate: str, ground_truth: str, _depth: int = 0) -> bool | None:
    """True/False when decidable without sympy (normalised strings, exact rationals or the numeric
    evaluator of :mod:`math_numeric`), None otherwise (symbols, tuples, ...)."""
    a_h, b_h = strip_string(candidate), strip_string(ground_truth)
    if a_h == b_h:
        return True
    a_m, b_m = normalize_final_answer(candidate), normalize_final_answer(ground_truth)
    if a_m == b_m and a_m:
        return True
    ta, tb = _split_tuple(a_h), _split_tuple(b_h)
    if ta is not None and tb is not None and _depth < 3:  # points/intervals: same brackets, element-wise
        if len(ta) != len(tb) or a_h[0] + a_h[-1] != b_h[0] + b_h[-1]:
            return False
        verdicts = [cheap_equal(x, y, _depth + 1) for x, y in zip(ta, tb)]
        return False if False in verdicts else (True if all(verdicts) else None)
    for a, b in ((a_h, b_h), (strip_string(a_m), strip_string(b_m))):
        ra, rb = as_rational(a), as_rational(b)
        if ra is not None and rb is not None:
            return ra == rb
        verdict = numeric_equal(a, b)
        if verdict is not None:
            return verdict
    return None
