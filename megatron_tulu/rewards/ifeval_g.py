"""IFEvalG: the IFBench training constraints of the newer AllenAI IF data (our own implementation).

The newer AllenAI IF-RLVR data (e.g. ``allenai/IF_multi_constraints_upto5``, read by open-instruct's
``IFEvalVerifier``) writes ``ground_truth`` as a Python-literal list string
``[{"instruction_id": [...], "kwargs": [...]}]``. Its ids are the 25 of Google's IFEval (checked by
:data:`megatron_tulu.rewards.ifeval.INSTRUCTIONS`, same kwargs) plus the 29 defined here, which are the rest of
``INSTRUCTION_DICT`` in open-instruct ``open_instruct/IFEvalG/instructions_registry.py``, read at the pinned
commit ``e6c3044aa6201c8bfa4573c1b03142af599e730d`` (IFEvalG last changed there by ebca9f7, 2026-04-08,
"Fix RepeatPhraseChecker constraints"). Rules follow that commit's ``instructions.py`` ``check_following``
methods; each is one line in its docstring below. Deliberate differences:

- keywords are matched literally (``re.escape``); IFEvalG passes them to ``re`` as patterns.
- ``nltk.word_tokenize`` (counting_composition, count_unique, keyword_specific_position, start_end) is
  approximated by :func:`ifeval_text.word_tokens` and sentences are split by :func:`ifeval_text.split_into_sentences`
  (no punkt download here).
- ``new:copy_span_idx`` takes ``n_start=0`` as index 0 (IFEvalG treats 0 as "missing" and draws a random one).
- ``keywords:no_adjacent_consecutive`` only compares letters (IFEvalG also rejects e.g. ``1 2``).
- missing required kwargs raise ValueError (IFEvalG would draw random ones, which cannot be verified); so do
  non-null kwargs the checker does not take (IFEvalG raised TypeError).

Kept as published although weak: ``keywords:palindrome`` passes on any one-character word (``a``, ``I``);
``keywords:exclude_word_harder`` only forbids the keyword between two spaces, case-sensitively;
``count:count_unique`` counts punctuation tokens (two commas repeat a word).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

from megatron_tulu.rewards.ifeval_args import as_choice, as_first_str, as_int, as_str
from megatron_tulu.rewards.ifeval_text import split_into_sentences, word_tokens

PINNED_COMMIT = "e6c3044aa6201c8bfa4573c1b03142af599e730d"
_RELATIONS = ("less than", "at least")


def _relation(value: Any, field: str) -> str:
    return as_choice(value, field, _RELATIONS)


def _compare(actual: int, relation: str, target: int) -> bool:
    return actual < target if relation == "less than" else actual >= target


def _count_literal(keyword: str, text: str) -> int:
    return len(re.findall(re.escape(keyword), text, flags=re.IGNORECASE))


def _same_text(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


def _paragraphs(text: str, separator: str) -> list[str] | None:
    """Paragraphs split on ``separator``: empty ones at either end dropped, None if one in the middle is empty."""
    parts = re.split(separator, text)
    out = []
    for i, p in enumerate(parts):
        if p.strip():
            out.append(p)
        elif 0 < i < len(parts) - 1:
            return None
    return out


_STARS = r"\s?\*\*\*\s?"


def _spans(v: str, head: str, tail: str) -> list[str]:
    """Non-overlapping leftmost-shortest ``head .* tail`` spans within one line, as ``re.findall`` of
    ``re.escape(head) + ".*?" + re.escape(tail)`` finds them, by a linear scan (the regex is quadratic)."""
    out, pos = [], 0
    while True:
        i = v.find(head, pos)
        if i < 0:
            return out
        eol = v.find("\n", i)
        eol = len(v) if eol < 0 else eol
        j = v.find(tail, i + len(head) - 1, eol)  # the space ending head may not also start tail
        while 0 <= j < i + len(head):
            j = v.find(tail, j + 1, eol)
        if j < 0:
            pos = eol + 1
            continue
        out.append(v[i:j + len(tail)])
        pos = j + len(tail)


# ------------------------------------------------------------------------------------------- checkers
def repeat_phrase(v: str, phrase: str, small_n: int) -> bool:
    """Exactly small_n spans from the phrase's first to last word (one line), each as long as the phrase and
    differing from it in exactly one word."""
    ref = phrase.split()
    found = _spans(v, ref[0] + " ", " " + ref[-1])
    if len(found) != small_n:
        return False
    for span in found:
        words = span.split()
        if len(words) != len(ref) or sum(a != b for a, b in zip(words, ref)) != 1:
            return False
    return True


def copy(v: str, prompt_to_repeat: str) -> bool:
    """The response is the prompt, verbatim up to case and surrounding whitespace."""
    return _same_text(v, prompt_to_repeat)


def copy_span_idx(v: str, prompt_to_repeat: str, n_start: int, n_end: int) -> bool:
    """The response is ``prompt_to_repeat[n_start:n_end]`` up to case and surrounding whitespace."""
    return _same_text(v, prompt_to_repeat[n_start:n_end])


def sentence_hyphens(v: str) -> bool:
    """Splitting on ``-`` gives the sentences, each with no space around it (sentences joined by hyphens)."""
    v = v.strip()
    parts = v.split("-")
    gold = split_into_sentences(v.replace("-", " "))
    return all(p == p.strip() and p == g for p, g in zip(parts, gold))


def no_adjacent_consecutive(v: str) -> bool:
    """No two adjacent words start with consecutive letters of the alphabet (``a b``, ``Cat dog``)."""
    firsts = [w[0].lower() for w in v.split()]
    return not any(a.isalpha() and b.isalpha() and ord(b) - ord(a) == 1 for a, b in itertools.pairwise(firsts))


def square_brackets(v: str) -> bool:
    """Every whitespace-separated word starts with ``[`` and ends with ``]``."""
    return all(w.startswith("[") and w.endswith("]") for w in v.split())


def word_once(v: str, keyword: str) -> bool:
    """The keyword occurs exactly once (substring, ignoring case)."""
    return _count_literal(keyword.strip(), v) == 1


def word_count_different_numbers(v: str, keyword: str, frequency: int, relation: str) -> bool:
    """The keyword's occurrences (substring, ignoring case) are < frequency or >= frequency per ``relation``."""
    return _compare(_count_literal(keyword.strip(), v), relation, frequency)


def exclude_word_harder(v: str, keyword: str) -> bool:
    """The keyword does not occur between two spaces (case-sensitive)."""
    return f" {keyword.strip()} " not in v


def paragraphs(v: str) -> bool:
    """Exactly 2 paragraphs separated by ``***`` (no empty paragraph between separators)."""
    parts = _paragraphs(v, _STARS)
    return parts is not None and len(parts) == 2


def paragraphs2(v: str) -> bool:
    """Exactly 2 paragraphs separated by ``\\n\\n`` (no empty paragraph between separators)."""
    parts = _paragraphs(v, r"\n\n")
    return parts is not None and len(parts) == 2


def first_word_sent(v: str, first_word: str) -> bool:
    """Every sentence's first whitespace-separated word is ``first_word`` (ignoring case, punctuation kept)."""
    target = first_word.strip().lower()
    return all(s.split() and s.split()[0].lower() == target for s in split_into_sentences(v))


def first_word_answer(v: str, first_word: str) -> bool:
    """The response's first whitespace-separated word is ``first_word`` (ignoring case)."""
    words = v.split()
    return bool(words) and words[0].lower() == first_word.strip().lower()


def _bare(word: str) -> str:
    return re.sub(r"[^\w\s]", "", word).lower()


def last_word_sent(v: str, last_word: str) -> bool:
    """Every sentence's last word, punctuation removed, is ``last_word`` (ignoring case)."""
    target = last_word.strip().lower()
    return all(s.split() and _bare(s.split()[-1]) == target for s in split_into_sentences(v))


def last_word_answer(v: str, last_word: str) -> bool:
    """The response's last word, punctuation removed, is ``last_word`` (ignoring case)."""
    words = v.split()
    return bool(words) and _bare(words[-1]) == last_word.strip().lower()


def bigram_wrapping(v: str) -> bool:
    """Words pair up as ``<<w1 w2>>``: word 1, 3, 5, ... starts with ``<<`` and the next word ends with ``>>``."""
    words = v.split()
    return all(words[i].startswith("<<") and words[i + 1].endswith(">>") for i in range(0, len(words) - 1, 2))


def copying_simple(v: str, prompt_to_repeat: str) -> bool:
    """The response is the request, verbatim up to case and surrounding whitespace."""
    return _same_text(v, prompt_to_repeat)


def copying_multiple(v: str, prompt_to_repeat: str, N: int) -> bool:
    """Exactly N copies of the request (up to case/whitespace) separated by ``******``."""
    parts = v.split("******")
    return len(parts) == N and all(_same_text(p, prompt_to_repeat) for p in parts)


def punctuation_dot(v: str) -> bool:
    """No ``.`` anywhere."""
    return "." not in v


def punctuation_exclamation(v: str) -> bool:
    """No ``!`` anywhere."""
    return "!" not in v


def lowercase_counting(v: str, N: int) -> bool:
    """At most N all-lowercase words (``\\b[a-z]+\\b``)."""
    return len(re.findall(r"\b[a-z]+\b", v)) <= N


def letter_counting(v: str, N: int, relation: str) -> bool:
    """ASCII letters ``[a-zA-Z]`` are < N or >= N per ``relation``."""
    return _compare(len(re.findall(r"[a-zA-Z]", v)), relation, N)


def letter_counting2(v: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    """The letter's occurrences (ignoring case) are < let_frequency or >= let_frequency per ``let_relation``."""
    return _compare(v.lower().count(letter.lower()), let_relation, let_frequency)


def counting_composition(v: str, n_sent: int, n_words: int) -> bool:
    """3 paragraphs separated by ``***``, each of exactly n_sent sentences of exactly n_words tokens (punctuation
    tokens count, as with nltk)."""
    parts = re.split(_STARS, v)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        return False
    for p in parts:
        sentences = split_into_sentences(p)
        if len(sentences) != n_sent or any(len(word_tokens(s)) != n_words for s in sentences):
            return False
    return True


def count_unique(v: str) -> bool:
    """No token (word or punctuation, case-sensitive) occurs twice."""
    tokens = word_tokens(v)
    return len(tokens) == len(set(tokens))


def count_increment_word(v: str, keyword1: str, keyword2: str) -> bool:
    """keyword1 occurs exactly once and keyword2 exactly twice (substring, ignoring case)."""
    return _count_literal(keyword1.strip(), v) == 1 and _count_literal(keyword2.strip(), v) == 2


def palindrome(v: str) -> bool:
    """Some whitespace-separated word reads the same reversed (case-sensitive)."""
    return any(w == w[::-1] for w in v.split())


def keyword_specific_position(v: str, keyword: str, n: int, m: int) -> bool:
    """The n-th sentence's m-th token is exactly the keyword (case-sensitive)."""
    sentences = split_into_sentences(v)
    if len(sentences) < n:
        return False
    tokens = word_tokens(sentences[n - 1])
    return len(tokens) >= m and tokens[m - 1] == keyword.strip()


def start_end(v: str) -> bool:
    """At least two tokens and the first equals the last, ignoring case (a final ``.`` is a token)."""
    tokens = word_tokens(v)
    return len(tokens) >= 2 and tokens[0].lower() == tokens[-1].lower()


def _int1(value: Any, field: str) -> int:
    return as_int(value, field, minimum=1)


def _letter(value: Any, field: str) -> str:
    value = as_str(value, field)
    if len(value) != 1:
        raise ValueError(f"{field} must be a single character, got {value!r}")
    return value


Validator = Callable[[Any, str], Any]

NEW_INSTRUCTIONS: dict[str, tuple[Callable[..., bool], dict[str, Validator], tuple[str, ...]]] = {
    "copy:repeat_phrase": (repeat_phrase, {"phrase": as_str, "small_n": _int1}, ()),
    "copy:copy": (copy, {"prompt_to_repeat": as_str}, ()),
    "new:copy_span_idx": (copy_span_idx, {"prompt_to_repeat": as_str, "n_start": as_int, "n_end": as_int}, ()),
    "detectable_format:sentence_hyphens": (sentence_hyphens, {}, ()),
    "keywords:no_adjacent_consecutive": (no_adjacent_consecutive, {}, ()),
    "detectable_format:square_brackets": (square_brackets, {}, ()),
    "keywords:word_once": (word_once, {"keyword": as_str}, ()),
    "keywords:word_count_different_numbers": (
        word_count_different_numbers, {"keyword": as_str, "frequency": as_int, "relation": _relation}, ()),
    "keywords:exclude_word_harder": (exclude_word_harder, {"keyword": as_str}, ("instruction",)),
    "paragraphs:paragraphs": (paragraphs, {}, ()),
    "paragraphs:paragraphs2": (paragraphs2, {}, ()),
    "first_word:first_word_sent": (first_word_sent, {"first_word": as_first_str}, ()),
    "first_word:first_word_answer": (first_word_answer, {"first_word": as_str}, ()),
    "last_word:last_word_sent": (last_word_sent, {"last_word": as_first_str}, ()),
    "last_word:last_word_answer": (last_word_answer, {"last_word": as_str}, ()),
    "detectable_format:bigram_wrapping": (bigram_wrapping, {}, ()),
    "copy:copying_simple": (copying_simple, {"prompt_to_repeat": as_str}, ()),
    "copy:copying_multiple": (copying_multiple, {"prompt_to_repeat": as_str, "N": _int1}, ()),
    "punctuation:punctuation_dot": (punctuation_dot, {}, ()),
    "punctuation:punctuation_exclamation": (punctuation_exclamation, {}, ()),
    "count:lowercase_counting": (lowercase_counting, {"N": as_int}, ()),
    "letters:letter_counting": (letter_counting, {"N": as_int, "relation": _relation}, ()),
    "letters:letter_counting2": (
        letter_counting2, {"letter": _letter, "let_frequency": as_int, "let_relation": _relation}, ()),
    "count:counting_composition": (counting_composition, {"n_sent": _int1, "n_words": _int1}, ()),
    "count:count_unique": (count_unique, {}, ()),
    "count:count_increment_word": (count_increment_word, {"keyword1": as_str, "keyword2": as_str}, ()),
    "keywords:palindrome": (palindrome, {}, ()),
    "keywords:keyword_specific_position": (
        keyword_specific_position, {"keyword": as_first_str, "n": _int1, "m": _int1}, ()),
    "keywords:start_end": (start_end, {}, ()),
}
"""id -> (checker, required kwargs (name -> validator), accepted-but-unused kwarg names)."""
