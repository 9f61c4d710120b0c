"""GSM8K verifier: numeric comparison by default, the 2024 string quirks behind paper_compat."""

import pytest

from megatron_tulu.rewards import reward, verify
from megatron_tulu.rewards.gsm8k import extract_last_number


@pytest.mark.parametrize(
    "response, gt, expected",
    [
        ("She pays 3 * 8 = 24 dollars. The answer is 24", "24", True),
        ("Total: $1,234.", "1234", True),
        ("It costs $1,234.50 in all", "1234.5", True),
        ("The answer is 24.00", "24", True),
        ("so 18.0", "18", True),
        ("The temperature drops to -5 degrees", "-5", True),
        ("The temperature drops to -5 degrees", "5", False),
        ("We get 0.25 of the pie", ".25", True),
        ("first 7 then 8", "7", False),  # the LAST number counts
        ("no numbers here", "3", False),
        ("The answer is 1,000,000", "1000000", True),
        ("x2 is a label; the answer is 12", "12", True),
    ],
)
def test_gsm8k_numeric(response, gt, expected):
    assert verify("gsm8k", response, gt) is expected


def test_extract_last_number_values():
    assert extract_last_number("a $3.50 b -2") == -2
    assert float(extract_last_number("then 1,250.75.")) == 1250.75
    assert extract_last_number("nothing") is None


def test_gsm8k_paper_compat_quirks():
    # 2024 reference compared strings: 24.00 != 24 ...
    assert verify("gsm8k", "The answer is 24.00", "24", paper_compat=True) is False
    assert verify("gsm8k", "The answer is 24", "24", paper_compat=True) is True
    # ... and dropped the minus sign of negative integers.
    assert verify("gsm8k", "it is -5", "5", paper_compat=True) is True
    assert verify("gsm8k", "it is -5", "-5", paper_compat=True) is False
    # negative decimals keep their sign in the reference regex
    assert verify("gsm8k", "it is -2.5", "-2.5", paper_compat=True) is True
    assert verify("gsm8k", "cost 1,234", "1234", paper_compat=True) is True


def test_gsm8k_bad_ground_truth_names_it():
    with pytest.raises(ValueError, match="gsm8k ground_truth"):
        verify("gsm8k", "42", "forty-two")


def test_reward_alpha():
    assert reward("gsm8k", "so 42", "42") == 10.0
    assert reward("gsm8k", "so 41", "42") == 0.0
    assert reward("gsm8k", "so 42", "42", alpha=3.5) == 3.5


def test_unknown_dataset_lists_known():
    with pytest.raises(ValueError, match=r"unknown dataset 'mbpp'.*gsm8k.*ifeval.*math"):
        verify("mbpp", "x", "y")


def test_adversarial_long_inputs_fast():
    import time

    start = time.monotonic()
    assert verify("gsm8k", "1" * 100_000, "1") is False  # a 100k-digit literal is not an answer
    assert verify("gsm8k", "1," * 50_000 + "5", "5") is True
    assert verify("gsm8k", "-" * 100_000 + "7", "-7") is True
    # linear scanning takes milliseconds; a backtracking regex on 100k characters takes minutes: the bound tells the
    # two apart with room for a busy 2-core machine
    assert time.monotonic() - start < 30.0
