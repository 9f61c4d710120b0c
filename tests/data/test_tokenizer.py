import time

import pytest

from megatron_tulu.data.chat import render_tulu, tokenize_sft
from megatron_tulu.data.tokenizer import build_llama3_tokenizer, load_tokenizer, train_bpe_tokenizer


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_bpe_training_is_deterministic(tmp_path):
    texts = [f"Tom has {i} apples and {i + 3} pens. The sea is deep." for i in range(200)]
    a = train_bpe_tokenizer(texts, tmp_path / "a", vocab_size=300)
    b = train_bpe_tokenizer(texts, tmp_path / "b", vocab_size=300)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert a.chat_template == b.chat_template and a.pad_token_id is not None
    assert a.decode(a("Tom has 42 pens.", add_special_tokens=False)["input_ids"]) == "Tom has 42 pens."


@pytest.mark.slow  # ~20 s on 2 cores: reading 128k BPE ranks and rebuilding merges
def test_llama3_tokenizer_from_tiktoken(tmp_path):
    t0 = time.time()
    tok = build_llama3_tokenizer(tmp_path / "llama3")
    assert len(tok) == 128256
    assert tok.convert_tokens_to_ids("<|begin_of_text|>") == 128000
    assert tok.convert_tokens_to_ids("<|end_of_text|>") == 128001
    assert tok.convert_tokens_to_ids("<|eot_id|>") == 128009
    assert tok.convert_tokens_to_ids("<|reserved_special_token_245|>") == 128255
    assert tok.pad_token == "<|finetune_right_pad_id|>"
    # Reference: tiktoken itself on the same ranks file (what llama_models' Tokenizer wraps) gives the same ids.
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from megatron_tulu.data.tokenizer import LLAMA3_PATTERN, default_llama3_tokenizer_model

    ranks = load_tiktoken_bpe(str(default_llama3_tokenizer_model()))
    ref = tiktoken.Encoding("llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens={})
    text = "Hello world! 12345 Tülu 3's recipe:\n  def f(x): return x**2"
    assert tok(text)["input_ids"] == [128000] + ref.encode(text)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    out = tokenize_sft(msgs, tok, 64)  # as Tülu 3: the tulu chat alone, no <|begin_of_text|> (data.add_bos=false)
    assert tok.decode(out["input_ids"]) == render_tulu(msgs, "<|end_of_text|>")
    with_bos = tokenize_sft(msgs, tok, 64, add_bos=True)
    assert with_bos["input_ids"] == [128000] + out["input_ids"]
    assert time.time() - t0 < 60
