"""TorchEngine: the rollout engine for machines without vLLM (plain transformers + KV cache, fp32 on CPU).

Slow but dependency-free and exact: it is the reference the vLLM engine is tested against, and the engine
the tiny RLVR config falls back to when ``import vllm`` fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from megatron_tulu.checkpoint.mapping import as_tensor
from megatron_tulu.rollout.base import Generation, RolloutEngine, SamplingConfig, check_prompts


def sample_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None):
    """Pick the next token and its logprob under the sampling distribution.

    logits: [B, V] float. Returns (tokens [B] long, logprobs [B] float). Greedy when temperature == 0
    (logprob from ``log_softmax(logits)``); otherwise ``log_softmax(logits / T)`` restricted to the top-p
    nucleus and renormalised, the convention of :mod:`megatron_tulu.rollout.base`.
    """
    logits = logits.float()
    if sampling.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tok = logits.argmax(dim=-1)
        return tok, logp.gather(-1, tok[:, None])[:, 0]
    logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        cum = sorted_logp.exp().cumsum(dim=-1)
        # keep a token if the mass strictly before it is < top_p (so the top token is always kept)
        drop_sorted = (cum - sorted_logp.exp()) >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    tok = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
    return tok, logp.gather(-1, tok[:, None])[:, 0]


class TorchEngine(RolloutEngine):
    """Sampling with a transformers ``LlamaForCausalLM`` loaded from an HF-format dir (config.json + safetensors).

    Prompts are processed one at a time with their ``n`` samples batched (no padding needed); the RNG for
    prompt ``i`` is seeded with ``seed + i`` so samples do not depend on how prompts are batched.
    """

    def __init__(self, model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        from transformers import AutoModelForCausalLM

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"TorchEngine: {self.model_dir}/config.json not found (expected an HF-format dir)")
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=dtype).to(self.device).eval()
        self.vocab_size = int(self.model.config.vocab_size)

    @torch.no_grad()
    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig) -> list[Generation]:
        sampling.validate()
        if sampling.regex is not None:
            raise ValueError("TorchEngine cannot constrain output to a regex (SamplingConfig.regex); use the vLLM engine "
                             "with structured_outputs=True, or parse unconstrained replies")
        check_prompts(prompt_token_ids, self.vocab_size)
        stop = torch.tensor(sorted(set(sampling.stop_token_ids)), dtype=torch.long, device=self.device)
        results = []
        for i, prompt in enumerate(prompt_token_ids):
            gen = None
            if sampling.seed is not None:
                gen = torch.Generator(device=self.device).manual_seed(sampling.seed + i)
            results.append(self._generate_one(i, prompt, sampling, stop, gen))
        return results

    def _generate_one(self, index, prompt, sampling, stop, gen) -> Generation:
        from transformers import DynamicCache

        n = sampling.n
        ids = torch.tensor([list(prompt)] * n, dtype=torch.long, device=self.device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]
        tokens = [[] for _ in range(n)]
        logprobs = [[] for _ in range(n)]
        reasons = ["length"] * n
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        for step in range(sampling.max_new_tokens):
            tok, lp = sample_next(logits, sampling, gen)
            for j in range(n):
                if not done[j]:
                    tokens[j].append(int(tok[j]))
                    logprobs[j].append(float(lp[j]))
            hit = torch.isin(tok, stop) & ~done
            for j in hit.nonzero()[:, 0].tolist():
                reasons[j] = "stop"
            done |= hit
            if bool(done.all()) or step == sampling.max_new_tokens - 1:
                break
            out = self.model(input_ids=tok[:, None], past_key_values=out.past_key_values, use_cache=True)
            logits = out.logits[:, -1]
        return Generation(prompt_index=index, token_ids=tokens, logprobs=logprobs, finish_reasons=reasons)

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], metas=None) -> None:  # noqa: ARG002
        params = dict(self.model.named_parameters())
        params.update({k: v for k, v in self.model.named_buffers() if k not in params})
        items = [(name, as_tensor(t)) for name, t in named_tensors]
        # check everything before touching anything, so a bad entry leaves the old weights intact
        for name, t in items:
            if name not in params:
                raise ValueError(f"update_weights: unknown parameter name {name!r}")
            if tuple(t.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"update_weights: {name!r} has shape {tuple(t.shape)}, model expects {tuple(params[name].shape)}"
                )
            if not t.is_floating_point():
                raise ValueError(f"update_weights: {name!r} has non-float dtype {t.dtype}")
        for name, t in items:
            params[name].copy_(t.to(device=params[name].device, dtype=params[name].dtype))

    def shutdown(self) -> None:
        self.model = None
