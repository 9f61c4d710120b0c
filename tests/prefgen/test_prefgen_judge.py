"""The judge's score format and parser, binarising and the output schema: pure functions on hand-made inputs."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from megatron_tulu.prefgen.binarize import binarize, preference_row, prompt_rng, rating_histogram
from megatron_tulu.prefgen.judge import ASPECTS, SCORE_REGEX, judge_messages, mean_rating, parse_ratings, verifier_ratings

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "preference_tulu3_mixture.jsonl"


def test_prefgen_score_regex_is_what_the_parser_reads():
    reply = '{"helpfulness": 4, "instruction_following": 2, "honesty": 5, "truthfulness": 1}'
    assert re.fullmatch(SCORE_REGEX, reply)
    assert parse_ratings(reply) == {"helpfulness": 4, "instruction_following": 2, "honesty": 5, "truthfulness": 1}
    assert mean_rating(parse_ratings(reply)) == 3.0
    assert not re.fullmatch(SCORE_REGEX, reply.replace("4", "6"))


@pytest.mark.parametrize("reply, want", [
    # JSON inside prose, other key spellings, numeric strings and floats
    ('Sure! {"Helpfulness": "5", "instruction following": 4, "Honesty": 3.5, "truthfulness": 2} done', (5, 4, 3.5, 2)),
    # markdown lines
    ("**Helpfulness**: 3\n**Instruction-following**: 2\nHonesty = 4\nTruthfulness is 5", (3, 2, 4, 5)),
    # a broken JSON object, then lines: the first mention of each aspect counts
    ('{"helpfulness": 4, oops}\nhelpfulness: 1\ninstruction_following: 1\nhonesty: 1\ntruthfulness: 1', (4, 1, 1, 1)),
])
def test_prefgen_parse_ratings_lenient(reply, want):
    assert tuple(parse_ratings(reply)[a] for a in ASPECTS) == want


@pytest.mark.parametrize("reply", [
    "",                                                                     # nothing
    "I think it is a good answer.",                                         # no numbers
    '{"helpfulness": 4, "instruction_following": 4, "honesty": 4}',         # an aspect missing
    '{"helpfulness": 0, "instruction_following": 4, "honesty": 4, "truthfulness": 4}',  # out of range (never a 0)
    '{"helpfulness": 9, "instruction_following": 4, "honesty": 4, "truthfulness": 4}',
    '{"helpfulness": true, "instruction_following": 4, "honesty": 4, "truthfulness": 4}',
])
def test_prefgen_unparseable_reply_is_none_not_zero(reply):
    assert parse_ratings(reply) is None


def test_prefgen_verifier_ratings_and_judge_prompt():
    assert verifier_ratings([1.0, 0.0, 0.5]) == [{a: 5.0 for a in ASPECTS}, {a: 1.0 for a in ASPECTS},
                                                 {a: 3.0 for a in ASPECTS}]
    msgs = judge_messages([{"role": "user", "content": "Add 2 and 3."}], "5")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "User: Add 2 and 3." in msgs[1]["content"] and "[Answer to rate]\n5\n" in msgs[1]["content"]
    assert all(a in msgs[1]["content"] for a in ASPECTS)


def _c(model, rating):
    return {"model": model, "text": f"{model}-{rating}", "rating": rating}


def test_prefgen_binarize_chosen_best_rejected_lower():
    rated = [_c("a", 2.0), _c("b", 4.5), _c("c", 3.0), _c("d", 4.5)]
    seen_chosen, seen_rejected = set(), set()
    for seed in range(40):
        (chosen, rejected), why = binarize(rated, random.Random(seed))
        assert why == "pair" and chosen["rating"] == 4.5 and rejected["rating"] < 4.5
        seen_chosen.add(chosen["model"]), seen_rejected.add(rejected["model"])
    assert seen_chosen == {"b", "d"} and seen_rejected == {"a", "c"}  # ties at the top and the rejected: at random
    # the same prompt id and seed give the same pair (resumes and re-sharding do not change the data)
    assert binarize(rated, prompt_rng(0, "x")) == binarize(rated, prompt_rng(0, "x"))


def test_prefgen_binarize_drops_ties_and_singletons():
    assert binarize([_c("a", 3.0), _c("b", 3.0)], random.Random(0)) == (None, "all_tied")
    assert binarize([_c("a", 3.0)], random.Random(0)) == (None, "fewer_than_2_rated")
    assert binarize([], random.Random(0)) == (None, "fewer_than_2_rated")


def test_prefgen_rows_are_the_released_schema(tmp_path):
    """A binarised pair has exactly the released mixture's columns, and the DPO/RM loaders read it."""
    from megatron_tulu.data.loaders import read_rows

    released = json.loads(FIXTURE.read_text().splitlines()[0])
    prompt = {"id": "prefgen-0000001", "source": "test/sft", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]}
    row = preference_row(prompt, _c("big", 5.0), _c("small", 1.25))
    assert set(row) == set(released)
    assert row["prompt"] == "Name a prime." and row["chosen"][-1] == {"role": "assistant", "content": "big-5.0"}
    assert row["chosen"][:2] == row["rejected"][:2] == prompt["messages"]
    assert (row["chosen_model"], row["rejected_model"], row["rejected_rating"]) == ("big", "small", 1.25)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(row) + "\n")
    (read,) = read_rows(f, "preference")
    assert read["chosen"] == row["chosen"] and read["rejected"] == row["rejected"]


def test_prefgen_rating_histogram():
    h = rating_histogram([1.0, 1.2, 4.75, 5.0, 2.9])
    assert h["1.0"] == 2 and h["5.0"] == 2 and h["3.0"] == 1 and sum(h.values()) == 5 and list(h)[0] == "1.0"


@pytest.mark.parametrize("name", ["prefgen/tiny", "prefgen/8b"])
def test_prefgen_shipped_configs_validate(name, capsys):
    from megatron_tulu.prefgen.cli import main

    assert main(["--config", name, "--validate-only"]) == 0
    assert f"config {name}: valid" in capsys.readouterr().out
    assert main(["--config", name, "--validate-only", "shard_size=0"]) == 2
    assert "shard_size" in capsys.readouterr().err
