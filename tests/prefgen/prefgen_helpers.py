"""Tiny models, tokenizer and prompt files for the prefgen tests (random weights: the tests check mechanics)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from megatron_tulu.prefgen.judge import RUBRIC

NAMES = ["Ava", "Ben", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Mo", "Ned", "Oz", "Pia"]


def gsm_rows(n: int) -> list[dict]:
    """``n`` verifiable (GSM8K-style) RLVR rows in the released schema, each prompt different."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 2 * i + 1
        q = f"{NAMES[i % len(NAMES)]} has {a} apples and finds {b} more in box {i}. How many apples now?"
        rows.append({"messages": [{"role": "user", "content": q}], "ground_truth": str(a + b), "dataset": "gsm8k"})
    return rows


def sft_rows(n: int) -> list[dict]:
    """``n`` SFT rows (a user turn and an assistant turn) whose prompts an LLM judge rates."""
    return [{"messages": [{"role": "user", "content": f"Write one line about the number {i} and {NAMES[i % 16]}."},
                          {"role": "assistant", "content": f"{NAMES[i % 16]} likes {i}."}], "source": "test/sft"}
            for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_tokenizer(out: Path):
    from megatron_tulu.data.tokenizer import train_bpe_tokenizer

    texts = [RUBRIC] * 4 + [r["messages"][0]["content"] for r in gsm_rows(16) + sft_rows(16)] * 2
    texts += ['{"helpfulness": 3, "instruction_following": 4, "honesty": 5, "truthfulness": 2}'] * 4
    return train_bpe_tokenizer(texts, out, vocab_size=384)


def make_model(out: Path, tok_dir: Path, seed: int, vocab_size: int | None = None) -> Path:
    """A random 2-layer HF Llama (head dim 32: vLLM-CPU's smallest) with the tokenizer's files beside it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_tulu.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).eval().save_pretrained(str(out))
    for f in tok_dir.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out


def overrides(run_dir: Path, prompts: Path, kind: str, pool: Path, policy: Path, judge: Path | None, **extra) -> list[str]:
    """CLI/``load_config`` overrides of ``prefgen/tiny`` for a test run."""
    ov = [f"run_dir={run_dir}", f"prompts.kind={kind}", f"prompts.mixture.datasets=[{{path: {prompts}}}]",
          "prompts.decontaminate=[]", "prompts.max_prompt_tokens=256",
          f"pool=[{{name: pool-a, path: {pool}, n: 1, temperature: 1.0, max_new_tokens: 8}}]",
          f"policy={{name: policy-b, path: {policy}, n: 2, temperature: 1.0, max_new_tokens: 8}}",
          "drop_truncated=false", "engine.kind=torch", "engine.timeout_s=120"]
    if judge is not None:
        ov += [f"judge.model={judge}", "judge.template=tulu", "judge.max_new_tokens=96"]
    return ov + [f"{k}={v}" for k, v in extra.items()]
