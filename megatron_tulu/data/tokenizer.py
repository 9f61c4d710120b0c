"""Tokenizers: load any Hugging Face tokenizer directory, build the real Llama 3 one from its tiktoken file, and
train the small deterministic byte-level BPE that the embedded synthetic suite ships with.

All three produce ordinary HF tokenizer directories (``tokenizer.json`` + ``tokenizer_config.json`` with a
``chat_template``), so every other module only ever calls :func:`load_tokenizer`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from megatron_tulu.data.chat import TULU_CHAT_TEMPLATE

# Llama 3's special tokens, in id order after the 128,000 BPE ranks (same list as llama_models.llama3.tokenizer).
LLAMA3_NUM_RESERVED_SPECIAL = 256
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Specials of the synthetic tokenizer: Llama-3 names so that code paths (bos/eos/pad) look the same at every scale.
SYN_BOS, SYN_EOS, SYN_PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"
# Tülu role headers become single (non-special, so they still decode) tokens: shorter sequences for the tiny model.
SYN_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]


def load_tokenizer(path: str | os.PathLike):
    """Load a HF tokenizer from a local directory (no network), with a pad token guaranteed.

    Raises:
        FileNotFoundError naming ``path`` when it is not a tokenizer directory.
    """
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir() or not any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"tokenizer directory {str(p)!r} has no tokenizer.json/tokenizer_config.json")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if tok.pad_token_id is None:
        # Llama 3 ships without a pad token; its reserved fine-tune pad id is the conventional choice.
        if "<|finetune_right_pad_id|>" in tok.get_vocab():
            tok.pad_token = "<|finetune_right_pad_id|>"
        else:
            tok.pad_token = tok.eos_token
    return tok


def default_llama3_tokenizer_model() -> Path:
    """Path of the Llama 3 ``tokenizer.model`` (tiktoken BPE ranks) shipped inside the ``llama-models`` package."""
    import llama_models

    return Path(llama_models.__file__).resolve().parent / "llama3" / "tokenizer.model"


def build_llama3_tokenizer(out_dir: str | os.PathLike, model_file: str | os.PathLike | None = None):
    """Convert Llama 3's tiktoken ``tokenizer.model`` into a HF tokenizer directory at ``out_dir``.

    Result: 128,000 BPE ids + 256 special ids = 128,256, bos ``<|begin_of_text|>`` prepended on encode,
    eos ``<|end_of_text|>``, pad ``<|finetune_right_pad_id|>``, Tülu chat template. Returns the loaded tokenizer.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    model_file = Path(model_file or default_llama3_tokenizer_model())
    if not model_file.exists():
        raise FileNotFoundError(f"Llama 3 tokenizer.model not found at {model_file}")
    specials = LLAMA3_SPECIALS + [
        f"<|reserved_special_token_{2 + i}|>" for i in range(LLAMA3_NUM_RESERVED_SPECIAL - len(LLAMA3_SPECIALS))
    ]
    backend = TikTokenConverter(vocab_file=str(model_file), pattern=LLAMA3_PATTERN, extra_special_tokens=specials).converted()
    return _save_with_bos_and_template(backend, out_dir, model_max_length=131072)


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 768):
    """Train a byte-level BPE on ``texts`` and save it as a HF tokenizer directory; returns the loaded tokenizer.

    Deterministic for a given text sequence (single-threaded trainer, fixed order). Digits are split one by
    one so arithmetic is learnable by a tiny model; the Tülu role headers are single added tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    backend.decoder = decoders.ByteLevel()
    specials = [SYN_BOS, SYN_EOS, SYN_PAD]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    backend.add_tokens(SYN_ROLE_TOKENS)
    return _save_with_bos_and_template(backend, out_dir, model_max_length=4096)


def _save_with_bos_and_template(backend, out_dir: str | os.PathLike, model_max_length: int):
    """Prepend BOS, wrap as a HF fast tokenizer with our specials and the Tülu chat template, save, reload."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos_id = backend.token_to_id(SYN_BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{SYN_BOS} $A", pair=f"{SYN_BOS} $A {SYN_BOS} $B", special_tokens=[(SYN_BOS, bos_id)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=SYN_BOS, eos_token=SYN_EOS, pad_token=SYN_PAD,
        model_max_length=model_max_length,
    )
    tok.chat_template = TULU_CHAT_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return load_tokenizer(out)


def tokenizer_fingerprint(tokenizer) -> str:
    """Stable hash of a tokenizer's behaviour-relevant state (vocab, merges, specials, template) for cache keys."""
    import hashlib

    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizer: vocab is the best available proxy
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return h.hexdigest()[:16]
