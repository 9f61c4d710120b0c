"""IFEval ground-truth formats of the released RLVR data: Google, Tülu 3 ``func_name`` and IFEvalG literal lists.

Verdicts are computed by hand from the rules in :mod:`megatron_tulu.rewards.ifeval_tulu` /
:mod:`megatron_tulu.rewards.ifeval_g` (each rule is one docstring line there).
"""

import json
import time
from pathlib import Path

import pytest

from megatron_tulu.rewards import verify
from megatron_tulu.rewards.ifeval import (
    GOOGLE,
    IFEVALG,
    INSTRUCTIONS,
    TULU3,
    ifeval_score,
    parse_ground_truth,
    validate_ground_truth,
    verify_ifeval,
)
from megatron_tulu.rewards.ifeval_g import NEW_INSTRUCTIONS, PINNED_COMMIT
from megatron_tulu.rewards.ifeval_tulu import FUNCTIONS, RELEASE_ARG_KEYS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def tulu(func_name, **args):
    """A ground truth exactly as the Tülu 3 release writes it: every argument key present, null where unused."""
    row = {"func_name": func_name, **{k: None for k in RELEASE_ARG_KEYS}}
    row.update(args)
    return json.dumps(row)


def g_literal(ids, kwargs):
    """A ground truth as the newer AllenAI data writes it: ``str()`` of a one-item list (Python literal)."""
    return str([{"instruction_id": ids, "kwargs": kwargs}])


EN = "The weather today is lovely and we will walk to the park near the river after lunch."
FR = "Le temps est magnifique aujourd'hui et nous allons nous promener au parc après le déjeuner."

# ------------------------------------------------------------------------------------------ Tülu 3
# (func_name, args, passing response, failing response), default (sensible) rules
TULU_CASES = [
    ("verify_keywords", {"keyword_list": ["apple", "Pie"]}, "An APPLE pie.", "An apple tart."),
    ("verify_keyword_frequency", {"word": "cat", "N": 2}, "Cat, category and cat.", "cat, cat, cat"),
    ("validate_forbidden_words", {"forbidden_words": ["bad"]}, "a badge", "This is Bad."),
    ("verify_letter_frequency", {"letter": "z", "N": 3}, "Zz z", "zz"),
    ("validate_response_language", {"language": "fr"}, FR, EN),
    ("verify_paragraph_count", {"N": 2}, "a\n  * * *  \nb", "a\n* * *\n* * *\nb"),
    ("validate_word_constraint", {"N": 10, "quantifier": "around"}, "w " * 9, "w " * 12),
    ("validate_word_constraint", {"N": 3, "quantifier": "at most"}, "one two three", "one two three four"),
    ("validate_word_constraint", {"N": 3, "quantifier": "at least"}, "one two three", "one two"),
    ("verify_sentence_constraint", {"N": 2, "quantifier": "at most"}, "One. Two.", "One. Two. Three."),
    ("verify_sentence_constraint", {"N": 3, "quantifier": "around"}, "A. B.", "A."),
    ("verify_sentence_constraint", {"N": 2, "quantifier": "at least"}, "Mr. Smith ran. He sat.",
     "Mr. Smith ran."),
    ("validate_paragraphs", {"N": 2, "first_word": "then", "i": 2}, "First.\n\nThen, second.", "First.\n\nSo second."),
    ("verify_postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi.\nP.S."),
    ("validate_placeholders", {"N": 2}, "[a] and [b]", "[a] only"),
    ("verify_bullet_points", {"N": 2}, "* one\n  - two", "* one\n**bold**"),
    ("validate_title", {}, "<<My Title>>\nbody", "No title"),
    ("validate_choice", {"options": ["yes", "no"]}, "My answer is yes.", "Maybe."),
    ("validate_highlighted_sections", {"N": 2}, "*a* and *b*", "*a* only"),
    ("validate_sections", {"N": 2, "section_splitter": "SECTION"}, "SECTION 1 a\nSECTION 2 b", "SECTION 1 a"),
    ("validate_json_format", {}, '{"a": [1, 2]}', '{"a": 1'),
    ("validate_repeat_prompt", {"original_prompt": "Write a poem."}, "Write a poem. Roses...", "write a poem. Roses"),
    ("validate_two_responses", {}, "one\n******\ntwo", "same\n******\nsame"),
    ("validate_uppercase", {}, "HELLO 123", "Hello"),
    ("validate_lowercase", {}, "hello 123", "Hello"),
    ("validate_frequency_capital_words", {"N": 2, "quantifier": "at least"}, "THE BIG dog", "THE dog"),
    ("validate_frequency_capital_words", {"N": 1, "quantifier": "at most"}, "THE dog", "THE BIG dog"),
    ("validate_end", {"end_phrase": "Any other questions?"}, "Done. Any other questions?\n", "Any other questions? Bye"),
    ("validate_quotation", {}, '  "quoted"\n', '"not closed'),
    ("validate_no_commas", {}, "no commas", "a, b"),
]

# (func_name, args, response, verdict by default, verdict with paper_compat): the 2024 release's quirks
QUIRKS = [
    ("verify_keyword_frequency", {"word": "ice cream", "N": 1}, "I like ice cream.", True, False),
    ("validate_forbidden_words", {"forbidden_words": ["bad"]}, "a badge", True, False),
    ("verify_letter_frequency", {"letter": "a", "N": 2}, "Aa", True, False),
    ("verify_sentence_constraint", {"N": 2, "quantifier": "at least"}, "Hi! Bye.", True, False),
    ("validate_paragraphs", {"N": 2, "first_word": "The", "i": 2}, "A.\n\nThen b.", False, True),
    ("validate_paragraphs", {"N": 2, "first_word": "then", "i": 2}, "A.\n\nThen b.", True, False),
    ("validate_placeholders", {"N": 2}, "no placeholders", False, True),
    ("verify_bullet_points", {"N": 1}, "* one\n**Bold**", True, False),
    ("validate_title", {}, "<<>> body", False, True),
    ("validate_choice", {"options": ["My answer is yes.", "My answer is no."]}, "My answer is yes. Because.",
     True, False),
    ("validate_choice", {"options": ["My answer is yes.", "My answer is no."]}, "yes", False, True),
    ("validate_choice", {"options": "('yes', 'no')"}, "yes, indeed", True, False),
    ("validate_highlighted_sections", {"N": 2}, "**bold**", False, True),
    ("validate_json_format", {}, '```json\n{"a": 1}\n```', True, False),
    ("validate_repeat_prompt", {"original_prompt": "Write a poem.\n"}, "Write a poem. Roses", True, False),
    ("validate_end", {"end_phrase": "Bye.\n"}, "Ok. Bye.", True, False),
    ("validate_two_responses", {}, "answer\n******", False, True),
    ("validate_frequency_capital_words", {"N": 10, "quantifier": "around"}, "A " * 9, True, False),
    ("validate_quotation", {}, '"', False, True),
]
QUIRK_FUNCS = {q[0] for q in QUIRKS}


def test_tulu_cases_cover_all_25_functions():
    assert len(FUNCTIONS) == 25
    assert {c[0] for c in TULU_CASES} == set(FUNCTIONS)


@pytest.mark.parametrize("name, args, good, bad", TULU_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TULU_CASES)])
def test_tulu_function_pass_and_fail(name, args, good, bad):
    truth = tulu(name, **args)
    assert ifeval_score(good, truth) == 1.0
    assert ifeval_score(bad, truth) == 0.0
    if name not in QUIRK_FUNCS:  # the rule is the same in both modes
        assert ifeval_score(good, truth, paper_compat=True) == 1.0
        assert ifeval_score(bad, truth, paper_compat=True) == 0.0


@pytest.mark.parametrize("name, args, response, default, paper", QUIRKS,
                         ids=[f"{q[0]}-{i}" for i, q in enumerate(QUIRKS)])
def test_tulu_quirks_default_vs_paper_compat(name, args, response, default, paper):
    truth = tulu(name, **args)
    assert verify_ifeval(response, truth) is default
    assert verify_ifeval(response, truth, paper_compat=True) is paper


def test_tulu_paper_compat_through_the_registry():
    truth = tulu("validate_placeholders", N=3)
    assert not verify("ifeval", "none here", truth)
    assert verify("ifeval", "none here", truth, paper_compat=True)


def test_tulu_blank_response_never_scores():
    assert ifeval_score("   \n", tulu("validate_lowercase")) == 0.0
    assert ifeval_score("", tulu("validate_placeholders", N=1), paper_compat=True) == 0.0


def test_tulu_integral_float_argument_accepted():
    assert verify_ifeval("a\n* * *\nb", tulu("verify_paragraph_count", N=2.0))


# ------------------------------------------------------------------------------------------- IFEvalG
# The ids of INSTRUCTION_DICT in open_instruct/IFEvalG/instructions_registry.py at the pinned commit, as read.
IFEVALG_COMMIT = "e6c3044aa6201c8bfa4573c1b03142af599e730d"
IFEVALG_REGISTRY_IDS = [
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "language:response_language", "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:number_words", "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders", "detectable_content:postscript",
    "detectable_format:number_bullet_lists", "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title", "combination:two_responses",
    "combination:repeat_prompt", "startend:end_checker", "change_case:capital_word_frequency",
    "change_case:english_capital", "change_case:english_lowercase", "punctuation:no_comma", "startend:quotation",
    "copy:repeat_phrase", "copy:copy", "new:copy_span_idx", "detectable_format:sentence_hyphens",
    "keywords:no_adjacent_consecutive", "detectable_format:square_brackets", "keywords:word_once",
    "keywords:word_count_different_numbers", "keywords:exclude_word_harder", "paragraphs:paragraphs",
    "paragraphs:paragraphs2", "first_word:first_word_sent", "first_word:first_word_answer",
    "last_word:last_word_sent", "last_word:last_word_answer", "detectable_format:bigram_wrapping",
    "copy:copying_simple", "copy:copying_multiple", "punctuation:punctuation_dot",
    "punctuation:punctuation_exclamation", "count:lowercase_counting", "letters:letter_counting",
    "letters:letter_counting2", "count:counting_composition", "count:count_unique", "count:count_increment_word",
    "keywords:palindrome", "keywords:keyword_specific_position", "keywords:start_end",
]

# (id, kwargs, passing response, failing response)
G_CASES = [
    ("copy:repeat_phrase", {"phrase": "the quick brown fox", "small_n": 2},
     "the slow brown fox and the quick red fox", "the quick brown fox and the quick brown fox"),
    ("copy:copy", {"prompt_to_repeat": "Say hi."}, "  say HI.  ", "Hi!"),
    ("new:copy_span_idx", {"prompt_to_repeat": "Hello world", "n_start": 0, "n_end": 5}, "Hello", "Hello world"),
    ("detectable_format:sentence_hyphens", {}, "I ran.-You sat.", "I ran. - You sat."),
    ("keywords:no_adjacent_consecutive", {}, "cat sat on mats", "a big dog"),
    ("detectable_format:square_brackets", {}, "[hi] [there]", "[hi] there"),
    ("keywords:word_once", {"keyword": "tea"}, "I like tea.", "tea and Tea"),
    ("keywords:word_count_different_numbers", {"keyword": "tea", "frequency": 2, "relation": "at least"},
     "tea, TEA", "tea"),
    ("keywords:word_count_different_numbers", {"keyword": "tea", "frequency": 2, "relation": "less than"},
     "tea", "tea, TEA"),
    ("keywords:exclude_word_harder", {"keyword": "tea", "instruction": "Write about tea"}, "I like tea.",
     "I like tea a lot"),
    ("paragraphs:paragraphs", {}, "a\n***\nb", "a"),
    ("paragraphs:paragraphs2", {}, "a\n\nb", "a\n\nb\n\nc"),
    ("first_word:first_word_sent", {"first_word": "we"}, "We ran. We sat.", "We ran. They sat."),
    ("first_word:first_word_sent", {"first_word": ["we"]}, "We ran.", "They ran."),
    ("first_word:first_word_answer", {"first_word": "banana"}, "Banana is a fruit.", "A banana."),
    ("last_word:last_word_sent", {"last_word": "now"}, "Go now. Stop now!", "Go now. Stop."),
    ("last_word:last_word_answer", {"last_word": "end"}, "This is the end.", "The end is near."),
    ("detectable_format:bigram_wrapping", {}, "<<I am>> <<at home>>", "I am <<at home>>"),
    ("copy:copying_simple", {"prompt_to_repeat": "Tell me a joke."}, "Tell me a joke.", "Why did the chicken?"),
    ("copy:copying_multiple", {"prompt_to_repeat": "Hi there", "N": 2}, "Hi there ****** hi there", "Hi there"),
    ("punctuation:punctuation_dot", {}, "no dots here", "one dot."),
    ("punctuation:punctuation_exclamation", {}, "calm", "wow!"),
    ("count:lowercase_counting", {"N": 2}, "ONE two Three four", "one two three"),
    ("letters:letter_counting", {"N": 5, "relation": "less than"}, "abcd 123", "abcde"),
    ("letters:letter_counting", {"N": 5, "relation": "at least"}, "abcde", "abcd 123"),
    ("letters:letter_counting2", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "Zz", "z"),
    ("count:counting_composition", {"n_sent": 1, "n_words": 3}, "I ran.\n***\nWe sat.\n***\nThey left.",
     "I ran.\n***\nWe sat."),
    ("count:count_unique", {}, "one two three", "one two one"),
    ("count:count_increment_word", {"keyword1": "red", "keyword2": "blue"}, "red blue blue", "red blue"),
    ("keywords:palindrome", {}, "wow that", "hello there"),
    ("keywords:keyword_specific_position", {"keyword": "cat", "n": 2, "m": 3}, "Hi there. I saw cat today.",
     "Hi there. I saw a cat."),
    ("keywords:start_end", {}, "Hello world hello", "Hello world hello."),
]


def test_pinned_commit_matches():
    assert PINNED_COMMIT == IFEVALG_COMMIT


def test_every_ifevalg_registry_id_is_known():
    assert len(IFEVALG_REGISTRY_IDS) == len(set(IFEVALG_REGISTRY_IDS)) == 54
    known = set(INSTRUCTIONS) | set(NEW_INSTRUCTIONS)
    assert set(IFEVALG_REGISTRY_IDS) == known
    for iid in IFEVALG_REGISTRY_IDS:  # every id parses in the newer format (kwargs from the cases below)
        kwargs = next((c[1] for c in G_CASES if c[0] == iid), None)
        if kwargs is not None:
            validate_ground_truth(g_literal([iid], [kwargs]))


def test_g_cases_cover_every_new_id():
    assert {c[0] for c in G_CASES} == set(NEW_INSTRUCTIONS)
    assert len(NEW_INSTRUCTIONS) == 29


@pytest.mark.parametrize("iid, kwargs, good, bad", G_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(G_CASES)])
def test_ifevalg_pass_and_fail(iid, kwargs, good, bad):
    truth = g_literal([iid], [kwargs])
    assert ifeval_score(good, truth) == 1.0
    assert ifeval_score(bad, truth) == 0.0


def test_ifevalg_google_ids_use_google_rules():
    truth = g_literal(["keywords:frequency"], [{"keyword": "cat", "frequency": 2, "relation": "at least"}])
    assert verify_ifeval("cat and Cat", truth)
    assert not verify_ifeval("one cat", truth)


def test_ifevalg_weak_rules_kept_as_published():
    assert verify_ifeval("I saw a cat", g_literal(["keywords:palindrome"], [None]))  # "a" is a palindrome
    assert verify_ifeval("Tea is nice", g_literal(["keywords:exclude_word_harder"], [{"keyword": "tea"}]))


def test_ifevalg_adversarial_inputs_finish_quickly():
    texts = ["the " * 25_000, "\n" * 100_000, "*" * 100_000, "<" * 100_000, "a" * 100_000]
    start = time.monotonic()
    for text in texts:
        for iid, kwargs, _good, _bad in G_CASES:
            ifeval_score(text, g_literal([iid], [kwargs]))
        for name, args, _good, _bad in TULU_CASES:
            if name != "validate_response_language":
                for paper in (False, True):
                    ifeval_score(text, tulu(name, **args), paper_compat=paper)
    assert time.monotonic() - start < 20.0


# ------------------------------------------------------------------------------ detection, partial credit
def test_format_detection_per_row():
    google = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [None]}
    assert [c.format for c in parse_ground_truth(google)] == [GOOGLE]
    assert [c.format for c in parse_ground_truth(json.dumps(google))] == [GOOGLE]
    assert [(c.format, c.id) for c in parse_ground_truth(tulu("validate_no_commas"))] == [
        (TULU3, "validate_no_commas")]
    assert [c.format for c in parse_ground_truth(json.loads(tulu("validate_no_commas")))] == [TULU3]
    literal = g_literal(["punctuation:no_comma", "count:count_unique"], [None, {}])
    assert [(c.format, c.id) for c in parse_ground_truth(literal)] == [
        (IFEVALG, "punctuation:no_comma"), (IFEVALG, "count:count_unique")]
    as_json = json.dumps([{"instruction_id": ["punctuation:no_comma"], "kwargs": [None]}])
    assert [c.format for c in parse_ground_truth(as_json)] == [IFEVALG]
    inner_json = str([json.dumps({"instruction_id": ["punctuation:no_comma"], "kwargs": [None]})])
    assert [c.format for c in parse_ground_truth(inner_json)] == [IFEVALG]
    assert [c.format for c in parse_ground_truth([{"instruction_id": ["copy:copy"],
                                                   "kwargs": [{"prompt_to_repeat": "x"}]}])] == [IFEVALG]


def test_partial_credit_fractions():
    literal = g_literal(["punctuation:no_comma", "punctuation:punctuation_dot", "keywords:word_once"],
                        [None, None, {"keyword": "tea"}])
    response = "I like tea."  # no comma: met; a dot: not met; tea once: met
    assert ifeval_score(response, literal) == 0.0
    assert ifeval_score(response, literal, partial_credit=True) == pytest.approx(2 / 3)
    google = {"instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [None, None]}
    assert ifeval_score("a, b", google, partial_credit=True) == 0.0
    assert ifeval_score('"a b"', google, partial_credit=True) == 1.0
    assert ifeval_score("a b", google, partial_credit=True) == 0.5
    assert ifeval_score("a b", tulu("validate_quotation"), partial_credit=True) == 0.0
    assert ifeval_score('"a b"', tulu("validate_quotation"), partial_credit=True) == 1.0


@pytest.mark.parametrize("truth, message", [
    (tulu("verify_foo"), "ground_truth: unknown IFEval func_name 'verify_foo'"),
    (tulu("verify_keyword_frequency", word="cat"), "lacks argument 'N'"),
    (tulu("validate_word_constraint", N=True, quantifier="at least"), "ground_truth.N must be an integer"),
    (tulu("verify_keywords", keyword_list="apple"), "ground_truth.keyword_list must be a list of strings"),
    (g_literal(["nope:nope"], [None]), "ground_truth[0].instruction_id[0]: unknown instruction id 'nope:nope'"),
    (g_literal(["keywords:word_once"], [{}]), "ground_truth[0].kwargs[0] for 'keywords:word_once' lacks keyword"),
    (g_literal(["punctuation:no_comma"], [{"N": 3}]), "has unexpected argument 'N'"),
    (g_literal(["letters:letter_counting"], [{"N": 3, "relation": "more"}]), "relation must be one of"),
    (g_literal([], []), "must be a non-empty list"),
    ("[{'instruction_id': ['punctuation:no_comma'], 'kwargs': [None]}, {}]", "exactly one constraint object"),
    ("[{'instruction_id': ['punctuation:no_comma']", "not JSON nor a Python literal list"),
    ("[__import__('os').getpid()]", "not JSON nor a Python literal list"),
    ({"instruction_id_list": ["copy:copy"], "kwargs": [None]}, "unknown instruction id 'copy:copy'"),
    (42, "ground_truth must be an object"),
])
def test_rejections_name_field_and_problem(truth, message):
    with pytest.raises(ValueError, match=None) as info:
        validate_ground_truth(truth)
    assert message in str(info.value)


# ----------------------------------------------------------------------------------------------- fixtures
def _rows(name):
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


# per fixture row: (passing response, failing response)
TULU_FIXTURE_RESPONSES = [
    ("ipv6 gives every device its own address.", "IPv6 gives every device its own address."),
    ("Use curl wttr.in.\n* * *\nOr install a weather CLI.", "Use curl wttr.in."),
    ('"SELECT site FROM visits LIMIT 3;"', "SELECT site FROM visits LIMIT 3;"),
    ("It has *three parts* and *one rule*.", "It has *three parts* only."),
    ("A cat is fine; another Cat too.", "A cat is fine."),
    ("Rain is water falling from clouds.", "Water."),
]
G_FIXTURE_RESPONSES = [
    ("I drink tea every morning.", "Tea, tea and more tea."),
    ("Banana is yellow and sweet.", "A banana."),
    ("Hi there.", "Hi there!"),
]


@pytest.mark.parametrize("name, responses", [("rlvr_ifeval_tulu3.jsonl", TULU_FIXTURE_RESPONSES),
                                              ("rlvr_ifeval_g.jsonl", G_FIXTURE_RESPONSES)])
def test_released_schema_fixtures(name, responses):
    rows = _rows(name)
    assert len(rows) == len(responses)
    for row, (good, bad) in zip(rows, responses):
        assert row["dataset"] == "ifeval"
        assert [m["role"] for m in row["messages"]] == ["user"]
        assert isinstance(row["ground_truth"], str)
        validate_ground_truth(row["ground_truth"])
        assert verify("ifeval", good, row["ground_truth"]), (row["ground_truth"], good)
        assert not verify("ifeval", bad, row["ground_truth"]), (row["ground_truth"], bad)
        if name == "rlvr_ifeval_tulu3.jsonl":
            assert {"constraint_type", "constraint"} <= set(row)
            assert set(json.loads(row["ground_truth"])) == {"func_name", *RELEASE_ARG_KEYS}


def test_rejected_fixture_rows():
    rows = _rows("rlvr_ifeval_rejected.jsonl")
    assert rows
    for row in rows:
        with pytest.raises(ValueError) as info:
            validate_ground_truth(row["ground_truth"])
        assert row["expected_error"] in str(info.value)
