"""The Tülu 3 IFEval reward: 25 ``func_name`` checks of the released RLVR data (our own implementation).

Rows of ``allenai/RLVR-IFeval`` and the ifeval rows of ``allenai/RLVR-GSM-MATH-IF-Mixed-Constraints`` carry
``ground_truth`` as a JSON string ``{"func_name": NAME, "N": ..., "quantifier": ..., ...}``: the function's
name plus the union of all argument keys of the 25 functions, ``null`` where unused. As in open-instruct's
verifier, null arguments are dropped and the rest are the function's arguments; a missing, wrong-typed or
unexpected (non-null, not taken by the function) argument is a ``ValueError`` at validation.

Reference: open-instruct ``open_instruct/if_functions.py`` (``IF_FUNCTIONS_MAP``) and its caller
``open_instruct/ground_truth_utils.py``. The Tülu 3 release (Nov 2024) used commit
``9c2d44beca0727ba8c1fac205fc4957dd39e54f1`` ("Ground-Truth RL (#377)"); the rules below were read there and
at ``e6c3044aa6201c8bfa4573c1b03142af599e730d`` (2026, after the fixes of #1612/#1683). The semantics are
NOT Google's IFEval: keyword and letter frequencies are exact counts, word/sentence/capital counts take
``at least``/``around``/``at most``, paragraphs are split on ``* * *`` and so on (one line per function below).

The response is stripped of surrounding whitespace first (the release scored ``output.strip()``); a blank
response never scores.

Quirks of the 2024 release. By default the sensible rule is used; ``paper_compat=True`` reproduces the
released behaviour:

1. ``verify_keyword_frequency``: the release compares single ``\\w+`` tokens with the keyword, so a keyword
   of two words or with a hyphen/apostrophe never counts; default counts whole-word (phrase) occurrences.
2. ``validate_forbidden_words``: the release forbids substrings (``"bad"`` fails ``"badge"``); default forbids
   whole words. Both ignore case.
3. ``verify_letter_frequency``: the release counts the letter case-sensitively (``"a"`` does not count
   ``"A"``); default ignores case.
4. ``verify_sentence_constraint``: the 2024 splitter ends sentences only at ``.`` and ``?`` (``!`` was added
   in #1612); default also ends them at ``!``.
5. ``validate_paragraphs``: the release tests ``paragraph.startswith(first_word)``, case-sensitive and a
   prefix (``"The"`` accepts ``"Then"``); default compares the i-th paragraph's first word (quotes, markdown
   and trailing punctuation removed) with ``first_word`` ignoring case. (An ``i`` past the paragraphs
   crashed the release; it fails in both modes.)
6. ``validate_placeholders``: the 2024 function returned a tuple ``(ok, placeholders)``, which the reward
   treated as true, so every response passed; default requires at least N ``[...]`` placeholders.
7. ``verify_bullet_points``: the release counts every line starting with ``*`` or ``-`` (bold ``**x**``
   lines, ``---`` rules, ``* * *`` dividers); default counts lines starting with ``* `` or ``- ``.
8. ``validate_title``: the release accepts an empty ``<<>>``; default requires non-blank title text.
9. ``validate_choice``: the 2024 function tests ``response in option`` (the response must be a substring
   of an option; fixed in #1683); default requires an option to occur in the response. Options given as one
   string are split (Python literal list/tuple, else comma-separated) by default; the release iterates the
   string's characters.
10. ``validate_highlighted_sections``: the release counts every ``\\*(.*?)\\*`` match, so ``**`` (empty) and
    each bold ``**x**`` count; default counts ``*text*`` spans with non-blank text on one line.
11. ``validate_json_format``: the release parses the text as is; default also accepts one markdown code
    fence (````` ```json ... ``` `````) around it.
12. ``validate_repeat_prompt`` / ``validate_end``: the release matches ``original_prompt``/``end_phrase``
    including their surrounding whitespace (a prompt ending in a newline can then never be matched by the
    stripped response); default strips them.
13. ``validate_two_responses``: the release accepts an empty response on one side of ``******``; default
    requires both to be non-blank.
14. ``validate_frequency_capital_words``: in 2024 ``around`` meant exactly N (fixed in #1683); default
    allows ``max(round(N/10), 1)`` either way, like the word count.
15. ``validate_quotation``: the release accepts a lone ``"``; default needs an opening and a closing one.

Not quirks but rules kept in both modes: ``validate_response_language`` uses the seeded detector of
:mod:`ifeval_text` (the release's unseeded langdetect could flip) and fails when it cannot tell (the release
raised); the released data has no ``language`` argument for it, so such rows fail validation.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from megatron_tulu.rewards.ifeval_args import as_choice, as_int, as_str, as_str_list
from megatron_tulu.rewards.ifeval_text import detect_language

QUANTIFIERS = ("at least", "around", "at most")

RELEASE_ARG_KEYS = ("N", "quantifier", "end_phrase", "keyword_list", "word", "forbidden_words", "letter", "i",
                    "first_word", "postscript_marker", "options", "section_splitter", "original_prompt")
"""The argument keys every released row carries (null where unused), besides ``func_name``."""


def _quantified(actual: int, n: int, quantifier: str, around: int) -> bool:
    if quantifier == "at least":
        return actual >= n
    if quantifier == "at most":
        return actual <= n
    return abs(actual - n) <= around


def _ten_percent(n: int) -> int:
    return max(round(n * 0.1), 1)


# ------------------------------------------------------------------------------------------ the 25 checks
def verify_keywords(text: str, keyword_list: list[str], paper_compat: bool) -> bool:
    """Every keyword occurs in the response as a substring, ignoring case."""
    low = text.lower()
    return all(k.lower() in low for k in keyword_list)


def verify_keyword_frequency(text: str, word: str, N: int, paper_compat: bool) -> bool:
    """The keyword occurs exactly N times as a whole word or phrase, ignoring case."""
    if paper_compat:
        target = word.lower()
        return sum(1 for t in re.findall(r"\w+", text.lower()) if t == target) == N
    phrase = r"\s+".join(re.escape(p) for p in word.split())
    return len(re.findall(r"(?<!\w)" + phrase + r"(?!\w)", text, flags=re.IGNORECASE)) == N


def validate_forbidden_words(text: str, forbidden_words: list[str], paper_compat: bool) -> bool:
    """None of the forbidden words occurs as a whole word, ignoring case."""
    if paper_compat:
        low = text.lower()
        return not any(w.lower() in low for w in forbidden_words)
    return not any(re.search(r"(?<!\w)" + re.escape(w.strip()) + r"(?!\w)", text, flags=re.IGNORECASE)
                   for w in forbidden_words)


def verify_letter_frequency(text: str, letter: str, N: int, paper_compat: bool) -> bool:
    """The letter occurs exactly N times, ignoring case."""
    if paper_compat:
        return text.count(letter) == N
    return text.lower().count(letter.lower()) == N


def validate_response_language(text: str, language: str, paper_compat: bool) -> bool:
    """The detected language (ISO 639-1) is ``language``; undetectable text fails."""
    return detect_language(text) == language


def verify_paragraph_count(text: str, N: int, paper_compat: bool) -> bool:
    """Exactly N non-empty paragraphs separated by ``* * *`` (lines stripped first)."""
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    parts = cleaned.split("* * *")
    return all(p.strip() for p in parts) and len(parts) == N


def validate_word_constraint(text: str, N: int, quantifier: str, paper_compat: bool) -> bool:
    """Whitespace-separated words: >= N, <= N, or within max(round(N/10), 1) of N for ``around``."""
    return _quantified(len(text.split()), N, quantifier, _ten_percent(N))


def verify_sentence_constraint(text: str, N: int, quantifier: str, paper_compat: bool) -> bool:
    """Sentences (split after ``.``/``?``/``!`` + whitespace, not after ``U.S.``/``Mr.``-like abbreviations):
    >= N, <= N, or within 1 of N for ``around``."""
    ends = r"[.?]" if paper_compat else r"[.?!]"
    sentences = re.split(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=" + ends + r")\s", text)
    return _quantified(len(sentences), N, quantifier, 1)


def _first_word(paragraph: str) -> str:
    words = paragraph.split()
    return words[0].lstrip("\"'*#>_(“‘").rstrip(".,;:!?\"'*_)”’") if words else ""


def validate_paragraphs(text: str, N: int, first_word: str, i: int, paper_compat: bool) -> bool:
    """Exactly N paragraphs separated by blank lines (``\\n\\n``), the i-th starting with ``first_word``."""
    paragraphs = text.split("\n\n")
    if len(paragraphs) != N or not 1 <= i <= N:
        return False
    if paper_compat:
        return paragraphs[i - 1].strip().startswith(first_word)
    return _first_word(paragraphs[i - 1]).lower() == first_word.strip().lower()


def verify_postscript(text: str, postscript_marker: str, paper_compat: bool) -> bool:
    """The marker occurs (case-sensitive) and some text follows its first occurrence."""
    at = text.find(postscript_marker)
    return at >= 0 and len(text[at:].strip()) > len(postscript_marker)


def validate_placeholders(text: str, N: int, paper_compat: bool) -> bool:
    """At least N ``[...]`` placeholders (each within one line)."""
    if paper_compat:
        return True
    return len(re.findall(r"\[[^\]\n]*\]", text)) >= N


def verify_bullet_points(text: str, N: int, paper_compat: bool) -> bool:
    """Exactly N markdown bullet lines (``* item`` or ``- item``)."""
    lines = [line.strip() for line in text.split("\n")]
    if paper_compat:
        return sum(1 for line in lines if line.startswith(("*", "-"))) == N
    return sum(1 for line in lines if re.match(r"[*-]\s", line)) == N


def validate_title(text: str, paper_compat: bool) -> bool:
    """A title in double angular brackets, ``<<title>>``, on one line."""
    # Scanned per line with str.find: the regex forms are quadratic on a long "<<<<..." line.
    for line in text.split("\n"):
        start, end = line.find("<<"), line.rfind(">>")
        if start < 0 or end < start + 2:
            continue
        if paper_compat or line[start:end + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


def _split_options(options: str) -> list[str]:
    try:
        parsed = ast.literal_eval(options)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        parsed = None
    if isinstance(parsed, (list, tuple)) and parsed and all(isinstance(o, str) for o in parsed):
        return list(parsed)
    return [o.strip() for o in options.split(",") if o.strip()]


def validate_choice(text: str, options: list[str] | str, paper_compat: bool) -> bool:
    """One of the options occurs in the response."""
    if paper_compat:
        return any(text in option for option in options)
    opts = _split_options(options) if isinstance(options, str) else options
    return any(option in text for option in opts)


def validate_highlighted_sections(text: str, N: int, paper_compat: bool) -> bool:
    """At least N ``*highlighted*`` spans."""
    if paper_compat:
        return len(re.findall(r"\*(.*?)\*", text)) >= N
    return sum(1 for m in re.findall(r"\*([^\n*]+)\*", text) if m.strip()) >= N


def validate_sections(text: str, N: int, section_splitter: str, paper_compat: bool) -> bool:
    """Splitting on ``section_splitter`` gives exactly N parts (a part before the first marker counts unless
    the response starts with the marker)."""
    parts = text.split(section_splitter)
    if parts[0] == "":
        parts.pop(0)
    return len(parts) == N


def validate_json_format(text: str, paper_compat: bool) -> bool:
    """The response is one JSON value."""
    if not paper_compat:
        fenced = re.fullmatch(r"```(?:json|JSON|Json)?\s*\n?(.*?)\n?```", text, flags=re.DOTALL)
        if fenced:
            text = fenced.group(1)
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def validate_repeat_prompt(text: str, original_prompt: str, paper_compat: bool) -> bool:
    """The response starts with the prompt, unchanged (case-sensitive)."""
    return text.startswith(original_prompt if paper_compat else original_prompt.strip())


def validate_two_responses(text: str, paper_compat: bool) -> bool:
    """Exactly one ``******`` separator, with two different responses around it."""
    if text.count("******") != 1:
        return False
    first, second = (p.strip() for p in text.split("******"))
    return first != second and (paper_compat or bool(first and second))


def validate_uppercase(text: str, paper_compat: bool) -> bool:
    """No lowercase letters (``text == text.upper()``)."""
    return text == text.upper()


def validate_lowercase(text: str, paper_compat: bool) -> bool:
    """No uppercase letters (``text == text.lower()``)."""
    return text == text.lower()


def validate_frequency_capital_words(text: str, N: int, quantifier: str, paper_compat: bool) -> bool:
    """All-capital words (``\\b[A-Z]+\\b``): >= N, <= N, or within max(round(N/10), 1) of N for ``around``."""
    return _quantified(len(re.findall(r"\b[A-Z]+\b", text)), N, quantifier, 0 if paper_compat else _ten_percent(N))


def validate_end(text: str, end_phrase: str, paper_compat: bool) -> bool:
    """The response ends with the exact phrase (case-sensitive)."""
    return text.endswith(end_phrase if paper_compat else end_phrase.strip())


def validate_quotation(text: str, paper_compat: bool) -> bool:
    """The response is wrapped in double quotation marks."""
    return text.startswith('"') and text.endswith('"') and (paper_compat or len(text) >= 2)


def validate_no_commas(text: str, paper_compat: bool) -> bool:
    """No comma anywhere."""
    return "," not in text


# ------------------------------------------------------------------------------------------------ table
def _letter(value: Any, field: str) -> str:
    value = as_str(value, field)
    if len(value) != 1:
        raise ValueError(f"{field} must be a single character, got {value!r}")
    return value


def _options(value: Any, field: str) -> list[str] | str:
    return as_str(value, field) if isinstance(value, str) else as_str_list(value, field)


def _quantifier(value: Any, field: str) -> str:
    return as_choice(value, field, QUANTIFIERS)


def _int1(value: Any, field: str) -> int:
    return as_int(value, field, minimum=1)


def _raw_str(value: Any, field: str) -> str:
    return as_str(value, field)


@dataclass(frozen=True)
class TuluFunction:
    check: Callable[..., bool]
    args: dict[str, Callable[[Any, str], Any]]


FUNCTIONS: dict[str, TuluFunction] = {
    "verify_keywords": TuluFunction(verify_keywords, {"keyword_list": as_str_list}),
    "verify_keyword_frequency": TuluFunction(verify_keyword_frequency, {"word": _raw_str, "N": as_int}),
    "validate_forbidden_words": TuluFunction(validate_forbidden_words, {"forbidden_words": as_str_list}),
    "verify_letter_frequency": TuluFunction(verify_letter_frequency, {"letter": _letter, "N": as_int}),
    "validate_response_language": TuluFunction(validate_response_language, {"language": _raw_str}),
    "verify_paragraph_count": TuluFunction(verify_paragraph_count, {"N": _int1}),
    "validate_word_constraint": TuluFunction(validate_word_constraint, {"N": as_int, "quantifier": _quantifier}),
    "verify_sentence_constraint": TuluFunction(verify_sentence_constraint, {"N": as_int, "quantifier": _quantifier}),
    "validate_paragraphs": TuluFunction(validate_paragraphs, {"N": _int1, "first_word": _raw_str, "i": _int1}),
    "verify_postscript": TuluFunction(verify_postscript, {"postscript_marker": _raw_str}),
    "validate_placeholders": TuluFunction(validate_placeholders, {"N": as_int}),
    "verify_bullet_points": TuluFunction(verify_bullet_points, {"N": as_int}),
    "validate_title": TuluFunction(validate_title, {}),
    "validate_choice": TuluFunction(validate_choice, {"options": _options}),
    "validate_highlighted_sections": TuluFunction(validate_highlighted_sections, {"N": as_int}),
    "validate_sections": TuluFunction(validate_sections, {"N": _int1, "section_splitter": _raw_str}),
    "validate_json_format": TuluFunction(validate_json_format, {}),
    "validate_repeat_prompt": TuluFunction(validate_repeat_prompt, {"original_prompt": _raw_str}),
    "validate_two_responses": TuluFunction(validate_two_responses, {}),
    "validate_uppercase": TuluFunction(validate_uppercase, {}),
    "validate_lowercase": TuluFunction(validate_lowercase, {}),
    "validate_frequency_capital_words": TuluFunction(
        validate_frequency_capital_words, {"N": as_int, "quantifier": _quantifier}),
    "validate_end": TuluFunction(validate_end, {"end_phrase": _raw_str}),
    "validate_quotation": TuluFunction(validate_quotation, {}),
    "validate_no_commas": TuluFunction(validate_no_commas, {}),
}
"""func_name -> check and its arguments (name -> validator), as the Tülu 3 reward names them."""


def parse_tulu(obj: dict, field: str = "ground_truth") -> tuple[str, dict[str, Any]]:
    """``(func_name, kwargs)`` from a Tülu 3 ground truth object; ValueError naming the field."""
    name = obj.get("func_name")
    if not isinstance(name, str) or name not in FUNCTIONS:
        raise ValueError(f"{field}: unknown IFEval func_name {name!r}")
    fn = FUNCTIONS[name]
    given = {k: v for k, v in obj.items() if k != "func_name" and v is not None}
    extra = sorted(set(given) - set(fn.args))
    if extra:
        raise ValueError(f"{field}: func_name {name!r} takes no argument {', '.join(map(repr, extra))} "
                         f"(its arguments: {', '.join(fn.args) or 'none'})")
    missing = [a for a in fn.args if a not in given]
    if missing:
        raise ValueError(f"{field}: func_name {name!r} lacks argument {', '.join(map(repr, missing))}")
    kwargs = {a: check(given[a], f"{field}.{a}") for a, check in fn.args.items()}
    return name, kwargs


def check_tulu(name: str, text: str, kwargs: dict[str, Any], *, paper_compat: bool = False) -> bool:
    """Verdict of Tülu 3 function ``name`` on ``text`` (already stripped) with validated ``kwargs``."""
    return bool(FUNCTIONS[name].check(text, paper_compat=paper_compat, **kwargs))
