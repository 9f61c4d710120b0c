"""IFEval: all 25 instruction ids with passing and failing responses, edge kwargs, strictness."""

import json

import pytest

from megatron_tulu.rewards import verify
from megatron_tulu.rewards.ifeval import INSTRUCTIONS, parse_ground_truth
from megatron_tulu.rewards.ifeval_text import count_sentences, split_into_sentences


def gt(iid, **kwargs):
    return {"instruction_id_list": [iid], "kwargs": [kwargs]}


EN = "The weather today is lovely and we will walk to the park near the river after lunch."
FR = "Le temps est magnifique aujourd'hui et nous allons nous promener au parc après le déjeuner."

# (instruction id, kwargs, passing response, failing response)
CASES = [
    ("keywords:existence", {"keywords": ["apple", "Pie"]}, "An APPLE pie.", "An apple tart."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat and Cat", "one cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "badge is fine", "this is Bad."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"}, "zZz", "zz"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "less than"}, "zz", "zzz"),
    ("language:response_language", {"language": "fr"}, FR, EN),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "One.", "One. Two."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "Dr. Who ran. Go!", "Dr. Who ran."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\nb", "a\n***\n***\nb"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "two words", "three words here"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "three words here", "two words"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
     "First part.\n\n\"Then, second.", "First part.\n\nSo second."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] at [address]", "[name] only"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi.\nPS bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S bye", "Hi.\nP.S. bye"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", "* one\n** bold"),
    ("detectable_format:constrained_response", {}, "Hmm. My answer is maybe.", "My answer is perhaps."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and **b**", "*a* and ** **"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nx\nSection 2\ny", "Section 1\nx"),
    ("detectable_format:json_format", {}, '```json\n{"a": {"b": [1, {"c": 2}]}}\n```', '{"a": 1'),
    ("detectable_format:title", {}, "<<My Title>>\nbody", "<<   >>\nbody"),
    ("combination:two_responses", {}, "answer one\n******\nanswer two", "same\n******\nsame"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses...", "Roses..."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Text. Any other questions?"', "Text. Bye."),
    ("startend:quotation", {}, '"quoted"', '"not closed'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THE U.S. wins", "THE us wins"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "ONE big word", "TWO BIG words"),
    ("change_case:english_capital", {}, EN.upper(), EN),
    ("change_case:english_lowercase", {}, EN.lower(), EN),
    ("change_case:english_lowercase", {}, EN.lower(), FR.lower()),  # lowercase but not English
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
]


def test_all_25_ids_covered():
    assert len(INSTRUCTIONS) == 25
    assert {c[0] for c in CASES} == set(INSTRUCTIONS)


@pytest.mark.parametrize("iid, kwargs, good, bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction_pass_and_fail(iid, kwargs, good, bad):
    assert verify("ifeval", good, gt(iid, **kwargs)) is True
    assert verify("ifeval", bad, gt(iid, **kwargs)) is False


def test_capital_frequency_boundaries():
    words = "ONE TWO THREE four"  # exactly 3 capital words
    assert verify("ifeval", words, gt("change_case:capital_word_frequency", capital_frequency=3, capital_relation="at least"))
    assert not verify("ifeval", words, gt("change_case:capital_word_frequency", capital_frequency=4, capital_relation="at least"))
    assert not verify("ifeval", words, gt("change_case:capital_word_frequency", capital_frequency=3, capital_relation="less than"))
    assert verify("ifeval", words, gt("change_case:capital_word_frequency", capital_frequency=4, capital_relation="less than"))


def test_bullets_star_vs_dash_vs_bold():
    g = gt("detectable_format:number_bullet_lists", num_bullets=3)
    assert verify("ifeval", "* a\n* b\n- c", g)
    assert verify("ifeval", "- a\n  - b\n- c", g)
    assert not verify("ifeval", "* a\n**b**\n- c", g)  # "**" is bold, not a bullet


def test_json_fence_variants():
    g = gt("detectable_format:json_format")
    assert verify("ifeval", '```JSON\n[{"x": {"y": null}}]\n```', g)
    assert verify("ifeval", '```\n{"x": 1}\n```', g)
    assert not verify("ifeval", 'Here it is: {"x": 1}', g)


def test_strict_all_instructions_must_hold_and_json_string_gt():
    truth = {
        "instruction_id_list": ["punctuation:no_comma", "detectable_format:title", "startend:quotation"],
        "kwargs": [None, {}, {"num_words": None}],  # null/empty kwargs for ids without kwargs
    }
    assert verify("ifeval", '"<<T>> no commas"', truth)
    assert verify("ifeval", '"<<T>> no commas"', json.dumps(truth))
    assert not verify("ifeval", '"<<T>> a, b"', truth)
    assert not verify("ifeval", "   ", {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})


def test_hf_style_kwargs_with_nulls():
    kw = {"num_words": 5, "relation": "at least", "keywords": None, "language": None}
    assert verify("ifeval", "one two three four five", {"instruction_id_list": ["length_constraints:number_words"], "kwargs": [kw]})


@pytest.mark.parametrize(
    "truth, match",
    [
        ({"instruction_id_list": ["nope:nope"], "kwargs": [{}]}, "unknown instruction id 'nope:nope'"),
        (gt("keywords:frequency", keyword="a", frequency=1), "lacks relation"),
        (gt("keywords:frequency", keyword="a", frequency=1, relation="more than"), "relation must be one of"),
        ({"kwargs": []}, "instruction_id_list"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_ground_truth_names_field(truth, match):
    with pytest.raises(ValueError, match=match):
        parse_ground_truth(truth)


def test_sentence_splitter():
    assert split_into_sentences("Mr. Smith met Dr. Jones at 3.30 p.m. today. Then they left!") == [
        "Mr. Smith met Dr. Jones at 3.30 p.m. today.", "Then they left!"]
    assert count_sentences("Visit example.com now. Wait... what? Yes.") == 4
    assert count_sentences("He said \"hi.\" She left.") == 2


def test_language_detection_deterministic():
    results = {verify("ifeval", FR, gt("language:response_language", language="fr")) for _ in range(5)}
    assert results == {True}


ADVERSARIAL = ["\n" * 100_000, " " * 100_000, "[" * 100_000, "<" * 100_000, "*" * 100_000,
               "Mr. " * 25_000, "a" * 100_000, "p. " * 33_000, ("word " * 20_000).upper()]


def test_every_instruction_fast_on_100kb_adversarial_text():
    import time

    from megatron_tulu.rewards.ifeval import INSTRUCTIONS as table

    start = time.monotonic()
    for text in ADVERSARIAL:
        for iid, kwargs, _good, _bad in CASES:
            table[iid][0](text, **kwargs)  # any verdict is fine; it must just finish
    assert time.monotonic() - start < 20.0


def test_placeholder_and_title_scans_match_google_semantics():
    g = gt("detectable_content:number_placeholders", num_placeholders=3)
    assert verify("ifeval", "[a] [[b]] [c\n] [d]", g)  # [a], [[b], [d]: the "[c" line has no "]"
    assert not verify("ifeval", "[a] [c\n] x", g)
    assert verify("ifeval", "x <<a>> y >> z", gt("detectable_format:title"))
    assert not verify("ifeval", "<<\n>>", gt("detectable_format:title"))
