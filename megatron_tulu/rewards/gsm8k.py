"""GSM8K: the last number in the response, compared numerically with the ground truth.

Default (correct) behaviour: thousands separators, ``$``, a trailing ``.0``/``.00``, signs and decimals
are understood, so ``$1,234.00`` equals ``1234`` and ``-5`` does not equal ``5``.

``paper_compat=True`` reproduces open-instruct's 2024 ``verify_gsm8k_sample`` exactly, which produced the
Tülu 3 paper's numbers: commas between digits are removed, the last match of ``[-+]?\\d*\\.\\d+|\\d+`` is
taken and compared to the ground truth **as a lowercase string**. Two quirks follow: ``24.00`` != ``24``,
and the minus sign of a negative *integer* is dropped (the integer branch has no sign), so ``-5``
matches ground truth ``5`` and never matches ``-5``.
"""

from __future__ import annotations

import re
from fractions import Fraction

# A number: optional sign, optional "$", digits with optional thousands separators, optional decimals.
_NUMBER_RE = re.compile(r"(?<![\w.])([-+−]?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_PAPER_RE = re.compile(r"[-+]?\d*\.\d+|\d+")
_MAX_DIGITS = 64  # longer literals are not GSM8K answers; refusing them keeps Fraction() cheap


def extract_last_number(text: str) -> Fraction | None:
    """Value of the last number in ``text`` (commas, ``$``, sign, decimals understood), or None."""
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    if last is None:
        return None
    digits = last.group(2).replace(",", "")
    if len(digits) > _MAX_DIGITS:
        return None
    value = Fraction(digits)
    return -value if last.group(1) in ("-", "−") else value


def parse_ground_truth(ground_truth: str) -> Fraction:
    """The ground truth as an exact number; ValueError naming it when it is not one."""
    gt = str(ground_truth).strip().replace(",", "").replace("$", "")
    try:
        return Fraction(gt)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"gsm8k ground_truth must be a number, got {ground_truth!r}") from None


def verify_gsm8k(response: str, ground_truth: str, *, paper_compat: bool = False) -> bool:
    """True when the last number in ``response`` equals ``ground_truth`` (see module doc for the mode)."""
    if paper_compat:
        text = re.sub(r"(\d),(\d)", r"\1\2", response)
        numbers = _PAPER_RE.findall(text)
        extracted = numbers[-1] if numbers else text
        return str(extracted).lower() == str(ground_truth).lower()
    predicted = extract_last_number(response)
    return predicted is not None and predicted == parse_ground_truth(ground_truth)
