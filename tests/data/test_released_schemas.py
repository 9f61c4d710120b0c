"""Rows in the schemas of the released Tülu 3 datasets (tests/fixtures/README.md) through the loaders: the SFT mixture
selected by its `source` column, preference rows whose message lists already hold the prompt, RLVR rows with
`dataset: MATH` and few-shot prompts, and rows refused (file:line, field) when the data loads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from megatron_tulu.data import loaders

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _mixture(*entries, **kw):
    return loaders.MixtureConfig(datasets=[loaders.DatasetSource(**e) for e in entries], **kw)


def test_sft_mixture_entries_select_rows_by_source_and_report_them():
    path = str(FIXTURES / "sft_tulu3_mixture.jsonl")
    cfg = _mixture({"path": path, "source": "ai2-adapt-dev/oasst1_converted", "count": 2},
                   {"path": path, "source": "allenai/tulu-3-sft-personas-math-grade", "count": 4})
    rows, report = loaders.mix(cfg, "sft")
    assert Counter(r["source"] for r in rows) == {"ai2-adapt-dev/oasst1_converted": 2,
                                                   "allenai/tulu-3-sft-personas-math-grade": 4}
    assert [(s.rows_available, s.rows_taken) for s in report.sources] == [(2, 2), (3, 4)]  # 4 of 3: one repeated
    assert report.sources[1].by_source == {"allenai/tulu-3-sft-personas-math-grade": 4}
    assert report.sources[0].name == "ai2-adapt-dev/oasst1_converted"
    whole, rep = loaders.mix(_mixture({"path": path}), "sft")  # the file as one entry: every source, counted
    assert rep.sources[0].by_source == {"ai2-adapt-dev/oasst1_converted": 2, "allenai/tulu-3-sft-personas-math-grade": 3,
                                        "ai2-adapt-dev/tulu_hard_coded_repeated_10": 1}
    with pytest.raises(ValueError, match="no row has source 'ai2-adapt-dev/nope'"):
        loaders.mix(_mixture({"path": path, "source": "ai2-adapt-dev/nope"}), "sft")


def test_preference_message_lists_are_used_as_they_are():
    rows = loaders.read_rows(FIXTURES / "preference_tulu3_mixture.jsonl", "preference")
    raw = [__import__("json").loads(line) for line in (FIXTURES / "preference_tulu3_mixture.jsonl").read_text().splitlines()]
    for row, want in zip(rows, raw):  # never a second copy of the prompt, never a user turn before the system turn
        assert row["chosen"] == want["chosen"] and row["rejected"] == want["rejected"]
    assert rows[1]["chosen"][0]["role"] == "system" and len(rows[2]["chosen"]) == 4
    _, report = loaders.mix(_mixture({"path": str(FIXTURES / "preference_tulu3_mixture.jsonl")}), "preference")
    assert report.sources[0].by_source == {"ai2-adapt-dev/ultrafeedback_cleaned": 2, "ai2-adapt-dev/wildchat_on_policy": 1}


def test_a_prompt_with_a_bare_response_still_gets_the_prompt():
    from megatron_tulu.data.chat import _split_preference

    chosen, rejected = _split_preference({"prompt": "Hi", "chosen": "Hello!", "rejected": [{"role": "assistant", "content": "Go."}]})
    assert chosen[0] == rejected[0] == {"role": "user", "content": "Hi"} and len(chosen) == len(rejected) == 2


def test_rlvr_rows_as_released_load_with_their_dataset_spelling_and_prompt_lengths(syn_tok):
    rows = loaders.read_rows(FIXTURES / "rlvr_gsm_math.jsonl", "rlvr")
    assert [r["dataset"] for r in rows] == ["gsm8k", "MATH"]  # kept as written; matched case-insensitively
    report = loaders.DataReport(kind="rlvr", sources=[])
    toks = loaders.tokenize_rows(rows, "rlvr", syn_tok, None, report=report)
    lengths = [len(t["prompt_ids"]) for t in toks]
    assert report.max_tokens == max(lengths) > 200  # the 8-shot prompt, counted whole
    assert report.mean_tokens == pytest.approx(sum(lengths) / 2)
    limit = min(lengths) + 1  # the 8-shot prompt no longer fits: refused with file:line, or counted and skipped
    with pytest.raises(loaders.DataFileError, match=r"rlvr_gsm_math.jsonl:1: prompt has \d+ tokens > max_len"):
        loaders.tokenize_rows(rows, "rlvr", syn_tok, limit)
    report = loaders.DataReport(kind="rlvr", sources=[])
    assert len(loaders.tokenize_rows(rows, "rlvr", syn_tok, limit, skip_invalid=True, report=report)) == 1
    assert report.skipped == {"PromptTooLongError": 1} and report.truncated == 0


def test_rlvr_rows_a_verifier_cannot_judge_are_refused_when_the_data_loads():
    path = FIXTURES / "rlvr_rejected.jsonl"
    with pytest.raises(loaders.DataFileError, match=r"rlvr_rejected.jsonl:1: field 'dataset': unknown dataset 'mbpp'"):
        loaders.read_rows(path, "rlvr")
    skipped = Counter()
    assert loaders.read_rows(path, "rlvr", skip_invalid=True, skipped=skipped) == []
    assert sum(skipped.values()) == 2 and any("field 'ground_truth'" in k for k in skipped)


@pytest.mark.parametrize("name,kind", [("sft_tulu3_mixture", "sft"), ("preference_tulu3_mixture", "preference"),
                                       ("rlvr_gsm_math", "rlvr"), ("rlvr_ifeval_tulu3", "rlvr"), ("rlvr_ifeval_g", "rlvr")])
def test_released_schema_fixtures_through_the_inspect_cli(syn_dir, capsys, name, kind):
    """Every released-schema fixture goes through the public CLI a user runs first on their data."""
    from megatron_tulu.data import inspect

    rc = inspect.main([str(FIXTURES / f"{name}.jsonl"), "--kind", kind, "--tokenizer", str(syn_dir / "tokenizer"),
                       "--no-color", "--rows", "10"])
    out = capsys.readouterr().out
    assert rc == 0, out
    if name == "rlvr_gsm_math":
        assert "'MATH' -> verifier" in out and "_math" in out  # the released spelling, judged by the MATH verifier


def test_rejected_rlvr_rows_through_the_inspect_cli(syn_dir, capsys):
    from megatron_tulu.data import inspect

    rc = inspect.main([str(FIXTURES / "rlvr_rejected.jsonl"), "--kind", "rlvr", "--tokenizer",
                       str(syn_dir / "tokenizer"), "--no-color"])
    err = capsys.readouterr().err
    assert rc == 2 and "rlvr_rejected.jsonl:1: field 'dataset': unknown dataset 'mbpp'" in err, err
