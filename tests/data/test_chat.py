import jinja2
import pytest

from megatron_tulu.data import chat

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there 12"},
    {"role": "assistant", "content": "Yo 3"},
    {"role": "user", "content": "again"},
    {"role": "assistant", "content": "ok."},
]


@pytest.mark.parametrize("n,gen", [(5, False), (4, True), (2, True), (3, False), (1, False)])
def test_python_render_equals_jinja_template(n, gen):
    tmpl = jinja2.Environment().from_string(chat.TULU_CHAT_TEMPLATE)
    want = tmpl.render(messages=MSGS[:n], eos_token="</s>", add_generation_prompt=gen)
    assert chat.render_tulu(MSGS[:n], "</s>", gen) == want


def test_golden_tulu_text():
    text = chat.render_tulu(MSGS[1:], "<E>")
    assert text == "<|user|>\nHi there 12\n<|assistant|>\nYo 3<E>\n<|user|>\nagain\n<|assistant|>\nok.<E>"


def test_tokenizer_template_matches_tulu(syn_tok):
    assert syn_tok.apply_chat_template(MSGS, tokenize=False) == chat.render_tulu(MSGS, syn_tok.eos_token)


@pytest.mark.parametrize("add_bos", [False, True])
def test_sft_masking_golden(syn_tok, add_bos):
    """Without add_bos (the default, as Tülu 3 tokenized): exactly the rendered chat, as apply_chat_template's ids;
    with it, one BOS before it. Either way the labelled tokens are the assistant turns."""
    out = chat.tokenize_sft(MSGS, syn_tok, max_len=None, add_bos=add_bos)
    ids, labels = out["input_ids"], out["labels"]
    assert len(ids) == len(labels)
    text = chat.render_tulu(MSGS, syn_tok.eos_token)
    if add_bos:
        assert ids[0] == syn_tok.bos_token_id and syn_tok.decode(ids) == syn_tok.bos_token + text
    else:
        assert ids == list(syn_tok.apply_chat_template(MSGS, tokenize=True, return_dict=False))
        assert syn_tok.decode(ids) == text
    # Labelled tokens are exactly the two assistant contents, each with its eos.
    spans, cur = [], []
    for i, l in zip(ids, labels):
        if l != -100:
            assert l == i
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    assert [syn_tok.decode(s) for s in spans] == ["Yo 3" + syn_tok.eos_token, "ok." + syn_tok.eos_token]


def test_sft_truncation(syn_tok):
    full = chat.tokenize_sft(MSGS, syn_tok, None)
    cut = chat.tokenize_sft(MSGS, syn_tok, 20)
    assert cut["input_ids"] == full["input_ids"][:20] and cut["labels"] == full["labels"][:20]


def test_tokenizer_template_option_and_drift(syn_tok):
    out = chat.tokenize_sft(MSGS, syn_tok, None, template="tokenizer")
    assert out == chat.tokenize_sft(MSGS, syn_tok, None, template="tulu")
    # A template whose generation prompt ends in a space: BPE merges " th" across the boundary.
    tok = type(syn_tok).from_pretrained(syn_tok.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\nA:' }}"
        "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ ' ' }}{% endif %}"
    )
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there the"}]
    with pytest.raises(chat.BoundaryDriftError, match="not a token prefix"):
        chat.tokenize_sft(msgs, tok, None, template="tokenizer")


@pytest.mark.parametrize("bad,match", [
    ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}], "empty assistant turn"),
    ([{"role": "user", "content": "x"}], "no assistant turn"),
    ([], "non-empty list"),
    ([{"role": "user", "content": 3}], r"messages\[0\].content must be a string"),
])
def test_validate_messages_errors(bad, match):
    with pytest.raises(chat.DataFormatError, match=match):
        chat.validate_messages(bad)


def test_tokenize_preference_and_prompt(syn_tok):
    u = [{"role": "user", "content": "What is 2 + 2?"}]
    row = {"chosen": u + [{"role": "assistant", "content": "4"}], "rejected": u + [{"role": "assistant", "content": "5"}]}
    out = chat.tokenize_preference(row, syn_tok, 64)
    assert set(out) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}
    assert syn_tok.decode([t for t in out["chosen_labels"] if t != -100]) == "4" + syn_tok.eos_token
    assert syn_tok.decode([t for t in out["rejected_labels"] if t != -100]) == "5" + syn_tok.eos_token
    # prompt + bare responses is the same pair
    alt = chat.tokenize_preference({"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}, syn_tok, 64)
    assert alt == out
    with pytest.raises(chat.DataFormatError, match="same prompt"):
        chat.tokenize_preference({"chosen": row["chosen"], "rejected": [{"role": "user", "content": "no"}, row["rejected"][1]]}, syn_tok, 64)

    p = chat.tokenize_prompt({"messages": u, "ground_truth": "4", "dataset": "gsm8k"}, syn_tok, 64)
    assert syn_tok.decode(p["prompt_ids"]).endswith("<|assistant|>\n")
    assert p["ground_truth"] == "4" and p["dataset"] == "gsm8k"
    assert p["prompt_ids"] == chat.tokenize_sft(row["chosen"], syn_tok, None)["input_ids"][: len(p["prompt_ids"])]
    with pytest.raises(chat.PromptTooLongError, match="> max_len 3"):
        chat.tokenize_prompt({"messages": u, "ground_truth": "4", "dataset": "gsm8k"}, syn_tok, 3)
