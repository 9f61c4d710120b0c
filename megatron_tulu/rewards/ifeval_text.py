"""Offline, deterministic text utilities for IFEval: sentences, words, tokens, language.

Google's IFEval (``instructions_util.py``) splits sentences with its own regex splitter, counts words with
nltk's ``RegexpTokenizer(r"\\w+")`` and tokenises with ``nltk.word_tokenize`` (which needs the punkt
download) for capital-word counting. Nothing may download at run time here, so the sentence splitter is a
re-implementation of Google's regex splitter, word counting is the same ``\\w+`` regex, and
:func:`word_tokens` approximates ``word_tokenize`` with a regex (words, with internal ``'``/``-``/``.``
kept, e.g. ``U.S.``, ``don't``; punctuation as separate tokens). Language detection uses langdetect with
a fixed seed (its profiles ship inside the wheel), so verdicts do not change from run to run.
"""

from __future__ import annotations

import re

_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|"
    r"This\s|Wherever)"
)
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"


def split_into_sentences(text: str) -> list[str]:
    """Sentences of ``text``, following IFEval's regex splitter (abbreviations, initials, decimals,
    websites, acronyms and ellipses do not end a sentence; quotes move outside the stop)."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "”" in text:
        text = text.replace(".”", "”.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>")
    text = text.replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


def count_sentences(text: str) -> int:
    return len(split_into_sentences(text))


def count_words(text: str) -> int:
    """Words as IFEval counts them: runs of ``\\w`` characters."""
    return len(re.findall(r"\w+", text))


_TOKEN_RE = re.compile(r"\w+(?:[-'’.]\w+)*\.?(?<=[A-Z]\.)|\w+(?:[-'’]\w+)*|[^\w\s]")


def word_tokens(text: str) -> list[str]:
    """Word tokens approximating ``nltk.word_tokenize`` (used for capital-word frequency)."""
    return _TOKEN_RE.findall(text)


def detect_language(text: str) -> str | None:
    """ISO 639-1 code from langdetect with a fixed seed, or None when it cannot tell (no letters)."""
    import langdetect
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0  # langdetect samples n-grams at random; fix it so verdicts are reproducible
    try:
        return langdetect.detect(text)
    except langdetect.lang_detect_exception.LangDetectException:
        return None


def warm_up_language() -> None:
    """Load langdetect's profiles in this process (about a second), so forked workers inherit them."""
    detect_language("warm up the language profiles")
