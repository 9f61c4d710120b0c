"""IFEval verifier for RLVR: three ground-truth formats, detected per row.

1. Google IFEval: ``{"instruction_id_list": [...], "kwargs": [{...}|null, ...]}`` (an object or its JSON
   string). Ids and kwargs are Google's 25 (:data:`INSTRUCTIONS`, below).
2. The Tülu 3 release (``allenai/RLVR-IFeval``, ifeval rows of ``allenai/RLVR-GSM-MATH-IF-Mixed-Constraints``):
   a JSON string ``{"func_name": NAME, <arguments, null where unused>}``; one constraint per row, checked by
   the Tülu 3 functions of :mod:`ifeval_tulu` (their semantics are not Google's; ``paper_compat`` reproduces
   the 2024 release's quirks, listed there).
3. The newer AllenAI format (IFEvalG / IFBench training data): a Python-literal list string
   ``[{"instruction_id": [...], "kwargs": [...]}]`` (parsed with ``ast.literal_eval``, never ``eval``), ids
   being Google's 25 plus the 29 of :mod:`ifeval_g`.

:func:`ifeval_score` is 1.0/0.0 when every constraint holds or not, or with ``partial_credit`` the fraction
that holds; a blank response scores 0. :func:`parse_ground_truth` / :func:`validate_ground_truth` raise
``ValueError`` naming the field and the problem (unknown id or func_name, missing or wrong-typed argument,
unparseable string) so bad rows fail when data loads, never at scoring time.

Google's semantics follow its ``instructions.py`` ``check_following`` methods; the deliberate differences:

- keywords are matched literally (``re.escape``); Google passes them to ``re`` as patterns.
- ``change_case:capital_word_frequency`` tokenises with a regex approximation of ``nltk.word_tokenize``
  (see :mod:`ifeval_text`), because punkt data cannot be downloaded here.
- missing required kwargs raise ValueError (Google would draw random ones, which cannot be verified).

Like Google's, language checks count "langdetect cannot tell" as following the instruction. In formats 1
and 3, kwargs entries whose value is null are ignored (the HF IFEval rows carry every key, mostly null), and
``kwargs`` may be shorter than the id list or absent for ids that take no kwargs; format 1 ignores unknown
non-null kwargs (as before), format 3 rejects them (open-instruct would raise TypeError).
"""

from __future__ import annotations

import ast
import collections
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from megatron_tulu.rewards import ifeval_g, ifeval_tulu
from megatron_tulu.rewards.ifeval_text import (
    count_sentences,
    count_words,
    detect_language,
    word_tokens,
)

_RELATIONS = ("less than", "at least")


def _compare(actual: int, relation: str, target: int, field: str) -> bool:
    if relation == "less than":
        return actual < target
    if relation == "at least":
        return actual >= target
    raise ValueError(f"{field} must be one of {_RELATIONS}, got {relation!r}")


# ----------------------------------------------------------------------------------------- checkers
def _keywords_existence(v: str, keywords: list[str]) -> bool:
    return all(re.search(re.escape(k), v, flags=re.IGNORECASE) for k in keywords)


def _keywords_frequency(v: str, keyword: str, frequency: int, relation: str) -> bool:
    actual = len(re.findall(re.escape(keyword), v, flags=re.IGNORECASE))
    return _compare(actual, relation, int(frequency), "relation")


def _forbidden_words(v: str, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", v, flags=re.IGNORECASE) for w in forbidden_words)


def _letter_frequency(v: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    letters = collections.Counter(v.lower())
    return _compare(letters[letter.lower()], let_relation, int(let_frequency), "let_relation")


def _response_language(v: str, language: str) -> bool:
    detected = detect_language(v)
    return detected is None or detected == language


def _number_sentences(v: str, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(v), relation, int(num_sentences), "relation")


def _number_paragraphs(v: str, num_paragraphs: int) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", v)
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i == 0 or i == len(paragraphs) - 1:
                count -= 1
            else:
                return False  # an empty paragraph between two *** separators
    return count == int(num_paragraphs)


def _number_words(v: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(v), relation, int(num_words), "relation")


def _nth_paragraph_first_word(v: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    paragraphs = re.split(r"\n\n", v)
    count = sum(1 for p in paragraphs if p.strip())
    nth = int(nth_paragraph)
    if not 1 <= nth <= count:
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    got = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        got += ch.lower()
    return count == int(num_paragraphs) and got == first_word.lower()


def _number_placeholders(v: str, num_placeholders: int) -> bool:
    # Same count as Google's re.findall(r"\[.*?\]"), by a linear scan (that regex is quadratic on a long
    # line of "[" without "]").
    count = 0
    for line in v.split("\n"):
        pos = line.find("[")
        while pos >= 0:
            close = line.find("]", pos + 1)
            if close < 0:
                break
            count += 1
            pos = line.find("[", close + 1)
    return count >= int(num_placeholders)


def _postscript(v: str, postscript_marker: str) -> bool:
    v = v.lower()
    if postscript_marker == "P.P.S":
        pattern = r"p\.\s?p\.\s?s"
    elif postscript_marker == "P.S.":
        pattern = r"p\.\s?s\."
    else:
        pattern = re.escape(postscript_marker.lower())
    # Google's patterns are "\s*" + this + ".*$": the same truth value, but quadratic on long whitespace.
    return re.search(pattern, v) is not None


def _number_bullet_lists(v: str, num_bullets: int) -> bool:
    # Google writes ^\s* (which can cross blank lines, quadratic on many newlines); [ \t]* gives the same
    # count, because a match that crossed blank lines would have started on the bullet line anyway.
    stars = re.findall(r"^[ \t]*\*[^\*].*$", v, flags=re.MULTILINE)
    dashes = re.findall(r"^[ \t]*-.*$", v, flags=re.MULTILINE)
    return len(stars) + len(dashes) == int(num_bullets)


def _constrained_response(v: str) -> bool:
    v = v.strip()
    return any(c in v for c in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def _number_highlighted_sections(v: str, num_highlights: int) -> bool:
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", v) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", v) if h.removeprefix("**").removesuffix("**").strip())
    return count >= int(num_highlights)


def _multiple_sections(v: str, section_spliter: str, num_sections: int) -> bool:
    sections = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", v)
    return len(sections) - 1 >= int(num_sections)


def _json_format(v: str) -> bool:
    v = (
        v.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON")
        .removeprefix("```").removesuffix("```").strip()
    )
    try:
        json.loads(v)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack limit
        return False
    return True


def _title(v: str) -> bool:
    # Google: any re.findall(r"<<[^\n]+>>") match with text inside. Per line the greedy match runs from the
    # first "<<" to the last ">>"; found directly, because the regex is quadratic on a long "<<<<..." line.
    for line in v.split("\n"):
        start, end = line.find("<<"), line.rfind(">>")
        if start >= 0 and end >= start + 3 and line[start:end + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


def _two_responses(v: str) -> bool:
    parts = v.split("******")
    valid = []
    for i, part in enumerate(parts):
        if not part.strip():
            if i != 0 and i != len(parts) - 1:
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _repeat_prompt(v: str, prompt_to_repeat: str) -> bool:
    return v.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end_checker(v: str, end_phrase: str) -> bool:
    return v.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _quotation(v: str) -> bool:
    v = v.strip()
    return len(v) > 1 and v[0] == '"' and v[-1] == '"'


def _capital_word_frequency(v: str, capital_frequency: int, capital_relation: str) -> bool:
    capitals = sum(1 for w in word_tokens(v) if w.isupper())
    return _compare(capitals, capital_relation, int(capital_frequency), "capital_relation")


def _english_capital(v: str) -> bool:
    if not v.isupper():
        return False
    lang = detect_language(v)
    return lang is None or lang == "en"


def _english_lowercase(v: str) -> bool:
    if not v.islower():
        return False
    lang = detect_language(v)
    return lang is None or lang == "en"


def _no_comma(v: str) -> bool:
    return "," not in v


# id -> (checker, required kwarg names). The names are Google's, spelling ("section_spliter") included.
INSTRUCTIONS: dict[str, tuple[Callable[..., bool], tuple[str, ...]]] = {
    "keywords:existence": (_keywords_existence, ("keywords",)),
    "keywords:frequency": (_keywords_frequency, ("keyword", "frequency", "relation")),
    "keywords:forbidden_words": (_forbidden_words, ("forbidden_words",)),
    "keywords:letter_frequency": (_letter_frequency, ("letter", "let_frequency", "let_relation")),
    "language:response_language": (_response_language, ("language",)),
    "length_constraints:number_sentences": (_number_sentences, ("num_sentences", "relation")),
    "length_constraints:number_paragraphs": (_number_paragraphs, ("num_paragraphs",)),
    "length_constraints:number_words": (_number_words, ("num_words", "relation")),
    "length_constraints:nth_paragraph_first_word": (
        _nth_paragraph_first_word, ("num_paragraphs", "nth_paragraph", "first_word")),
    "detectable_content:number_placeholders": (_number_placeholders, ("num_placeholders",)),
    "detectable_content:postscript": (_postscript, ("postscript_marker",)),
    "detectable_format:number_bullet_lists": (_number_bullet_lists, ("num_bullets",)),
    "detectable_format:constrained_response": (_constrained_response, ()),
    "detectable_format:number_highlighted_sections": (_number_highlighted_sections, ("num_highlights",)),
    "detectable_format:multiple_sections": (_multiple_sections, ("section_spliter", "num_sections")),
    "detectable_format:json_format": (_json_format, ()),
    "detectable_format:title": (_title, ()),
    "combination:two_responses": (_two_responses, ()),
    "combination:repeat_prompt": (_repeat_prompt, ("prompt_to_repeat",)),
    "startend:end_checker": (_end_checker, ("end_phrase",)),
    "startend:quotation": (_quotation, ()),
    "change_case:capital_word_frequency": (_capital_word_frequency, ("capital_frequency", "capital_relation")),
    "change_case:english_capital": (_english_capital, ()),
    "change_case:english_lowercase": (_english_lowercase, ()),
    "punctuation:no_comma": (_no_comma, ()),
}



GOOGLE, TULU3, IFEVALG = "google", "tulu3", "ifevalg"


@dataclass(frozen=True)
class Constraint:
    """One verifiable constraint of a row: its format, id (Google/IFEvalG id or Tülu 3 func_name) and
    validated kwargs."""

    format: str
    id: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self, response: str, *, paper_compat: bool = False) -> bool:
        """Whether non-blank ``response`` meets this constraint."""
        if self.format == TULU3:
            return ifeval_tulu.check_tulu(self.id, response.strip(), self.kwargs, paper_compat=paper_compat)
        if self.id in INSTRUCTIONS:
            return bool(INSTRUCTIONS[self.id][0](response, **self.kwargs))
        return bool(ifeval_g.NEW_INSTRUCTIONS[self.id][0](response, **self.kwargs))


def _google_kwargs(iid: str, raw: dict | None, where: str, *, strict: bool) -> dict[str, Any]:
    names = INSTRUCTIONS[iid][1]
    given = {k: v for k, v in (raw or {}).items() if v is not None}
    if strict:
        extra = sorted(set(given) - set(names))
        if extra:
            raise ValueError(f"{where} for {iid!r} has unexpected argument {', '.join(map(repr, extra))}")
    kw = {k: v for k, v in given.items() if k in names}
    missing = [n for n in names if n not in kw]
    if missing:
        raise ValueError(f"{where} for {iid!r} lacks {', '.join(missing)}")
    for n in ("relation", "let_relation", "capital_relation"):
        if n in kw and kw[n] not in _RELATIONS:
            raise ValueError(f"{where}.{n} must be one of {_RELATIONS}, got {kw[n]!r}")
    return kw


def _ifevalg_kwargs(iid: str, raw: dict | None, where: str) -> dict[str, Any]:
    checker, required, unused = ifeval_g.NEW_INSTRUCTIONS[iid]
    del checker
    given = {k: v for k, v in (raw or {}).items() if v is not None}
    extra = sorted(set(given) - set(required) - set(unused))
    if extra:
        raise ValueError(f"{where} for {iid!r} has unexpected argument {', '.join(map(repr, extra))}")
    missing = [n for n in required if n not in given]
    if missing:
        raise ValueError(f"{where} for {iid!r} lacks {', '.join(missing)}")
    return {n: validate(given[n], f"{where}.{n}") for n, validate in required.items()}


def _instruction_list(ids: Any, kwargs_list: Any, ids_field: str, fmt: str) -> list[Constraint]:
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"{ids_field} must be a non-empty list of instruction ids")
    kwargs_list = kwargs_list or []
    if not isinstance(kwargs_list, list):
        raise ValueError(f"{ids_field.rsplit('.', 1)[0]}.kwargs must be a list")  # noqa: TRY004
    known = INSTRUCTIONS if fmt == GOOGLE else {**INSTRUCTIONS, **ifeval_g.NEW_INSTRUCTIONS}
    out = []
    for i, iid in enumerate(ids):
        if not isinstance(iid, str) or iid not in known:
            raise ValueError(f"{ids_field}[{i}]: unknown instruction id {iid!r}")
        raw = kwargs_list[i] if i < len(kwargs_list) else None
        where = f"{ids_field.rsplit('.', 1)[0]}.kwargs[{i}]"
        if raw is not None and not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object or null")
        if iid in INSTRUCTIONS:
            kw = _google_kwargs(iid, raw, where, strict=fmt == IFEVALG)
        else:
            kw = _ifevalg_kwargs(iid, raw, where)
        out.append(Constraint(fmt, iid, kw))
    return out


def _decode(ground_truth: str) -> Any:
    text = ground_truth.strip()
    try:
        return json.loads(text)
    except ValueError as json_exc:
        if not text.startswith("["):
            raise ValueError(f"ground_truth is a string but not JSON: {json_exc}") from None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError(f"ground_truth is a string but not JSON nor a Python literal list: "
                         f"{type(exc).__name__}: {exc}") from None


def parse_ground_truth(ground_truth: str | dict | list) -> list[Constraint]:
    """The row's constraints, format detected per row; ValueError naming the field and the problem."""
    obj = _decode(ground_truth) if isinstance(ground_truth, str) else ground_truth
    if isinstance(obj, list):  # newer AllenAI format: [{"instruction_id": [...], "kwargs": [...]}]
        if len(obj) != 1:
            raise ValueError(f"ground_truth must be a list of exactly one constraint object, got {len(obj)} items")
        obj = obj[0]
        if isinstance(obj, str):  # open-instruct also accepts the object as a JSON string inside the list
            try:
                obj = json.loads(obj)
            except ValueError as exc:
                raise ValueError(f"ground_truth[0] is a string but not JSON: {exc}") from None
        if not isinstance(obj, dict) or "instruction_id" not in obj:
            raise ValueError("ground_truth[0] must be an object with instruction_id and kwargs")
        return _instruction_list(obj.get("instruction_id"), obj.get("kwargs"), "ground_truth[0].instruction_id",
                                 IFEVALG)
    if not isinstance(obj, dict):
        raise ValueError(f"ground_truth must be an object or a one-item list, got {type(obj).__name__}")  # noqa: TRY004
    if "func_name" in obj:
        name, kwargs = ifeval_tulu.parse_tulu(obj)
        return [Constraint(TULU3, name, kwargs)]
    if "instruction_id" in obj and "instruction_id_list" not in obj:
        return _instruction_list(obj.get("instruction_id"), obj.get("kwargs"), "ground_truth.instruction_id",
                                 IFEVALG)
    return _instruction_list(obj.get("instruction_id_list"), obj.get("kwargs"),
                             "ground_truth.instruction_id_list", GOOGLE)


def validate_ground_truth(ground_truth: str | dict | list) -> None:
    """Raise ValueError (naming the field) unless :func:`ifeval_score` can judge ``ground_truth``."""
    parse_ground_truth(ground_truth)


def ifeval_score(response: str, ground_truth: str | dict | list, *, partial_credit: bool = False,
                 paper_compat: bool = False) -> float:
    """1.0 if ``response`` meets every constraint else 0.0; with ``partial_credit`` the fraction met.

    ``paper_compat`` reproduces the Tülu 3 (2024) release's quirks for its ``func_name`` rows (see
    :mod:`ifeval_tulu`); the other formats have none. A blank response scores 0.
    """
    constraints = parse_ground_truth(ground_truth)
    if not response.strip():
        return 0.0
    met = sum(1 for c in constraints if c.check(response, paper_compat=paper_compat))
    if partial_credit:
        return met / len(constraints)
    return 1.0 if met == len(constraints) else 0.0


def verify_ifeval(response: str, ground_truth: str | dict | list, *, paper_compat: bool = False) -> bool:
    """Strict IFEval: True only if ``response`` follows every instruction in ``ground_truth``."""
    return ifeval_score(response, ground_truth, paper_compat=paper_compat) == 1.0
