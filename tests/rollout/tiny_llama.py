"""A tiny random HF Llama (2 layers, hidden 64, GQA 4/2 heads of dim 32 (the smallest vLLM-CPU attention supports), vocab 300) and a transformers reference."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 300


def make_tiny_llama(out_dir: Path, seed: int = 0, tie: bool = False) -> Path:
    """Save a random LlamaForCausalLM in fp32 safetensors (config.json + model.safetensors) to ``out_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0, torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger-than-default init so logits are peaked enough for stable greedy paths
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def load_reference(model_dir: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


@torch.no_grad()
def hf_greedy(model, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers' own greedy ``generate`` (EOS ignored: no stop tokens, like the engines here)."""
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        o = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        )
        outs.append(o[0, len(p):].tolist())
    return outs


@torch.no_grad()
def hf_logprobs(model, prompts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
    """log_softmax(logits) of each response token given prompt + previous response tokens (teacher forcing)."""
    res = []
    for p, r in zip(prompts, responses):
        ids = torch.tensor([list(p) + list(r)])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        pos = torch.arange(len(p) - 1, len(p) + len(r) - 1)
        res.append(logp[pos, torch.tensor(r)].tolist())
    return res


def perturbed_state(model, scale: float, seed: int) -> list[tuple[str, torch.Tensor]]:
    """HF-named copies of all weights with Gaussian noise; also loads them into ``model`` (the reference)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            new = p + scale * torch.randn(p.shape, generator=g)
            p.copy_(new)
            items.append((name, new.clone()))
    return items


def prompts_for_test(n: int = 4, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
