"""Measure the model-state memory of a small Llama on CPU and compare it with the planner's estimate.

``python -m megatron_tulu.plan.measure_cpu --layers 8 --hidden 512`` builds a plain-torch Llama with exactly
the preset's parameters (bf16), keeps megatron's distributed-optimizer state for DP=1 (an fp32 grad buffer
filled by post-accumulate hooks, as megatron's DDP does, fp32 main params and two Adam moments), runs one
forward/backward/step on a tiny batch, and prints JSON with the peak-RSS increase next to the planner's
weights + grads + optimizer bytes.

Peak RSS is a process-wide high-water mark, and importing torch/transformers can set it above anything the model
later reaches (then "peak minus baseline" reads 0). So the mark is reset (Linux ``/proc/self/clear_refs``, value 5)
right before the model is built and the increase is measured from the resident size at that moment.
"""

from __future__ import annotations

import argparse
import json
import re

import torch
import torch.nn.functional as F
from torch import nn

from megatron_tulu.models.presets import LlamaPreset, get_preset
from megatron_tulu.plan.memory import model_state


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if m is None:
        raise RuntimeError(f"/proc/self/status has no {field} line; this measurement needs Linux")
    return int(m.group(1))


def _reset_rss_peak() -> int:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS and return that RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:  # not Linux, or /proc mounted read-only: refuse rather than report a wrong number
        raise RuntimeError(f"cannot reset the peak-RSS mark through /proc/self/clear_refs: {e}") from e
    return _status_kib("VmRSS") * 1024


def _rss_peak() -> int:
    return _status_kib("VmHWM") * 1024


class _Block(nn.Module):
    def __init__(self, p: LlamaPreset, dtype):
        super().__init__()
        d, kv = p.hidden_size, p.num_query_groups * p.head_dim
        self.p = p
        self.attn_norm = nn.RMSNorm(d, eps=p.norm_eps, dtype=dtype)
        self.q = nn.Linear(d, d, bias=False, dtype=dtype)
        self.k = nn.Linear(d, kv, bias=False, dtype=dtype)
        self.v = nn.Linear(d, kv, bias=False, dtype=dtype)
        self.o = nn.Linear(d, d, bias=False, dtype=dtype)
        self.mlp_norm = nn.RMSNorm(d, eps=p.norm_eps, dtype=dtype)
        self.gate = nn.Linear(d, p.ffn_hidden_size, bias=False, dtype=dtype)
        self.up = nn.Linear(d, p.ffn_hidden_size, bias=False, dtype=dtype)
        self.down = nn.Linear(p.ffn_hidden_size, d, bias=False, dtype=dtype)

    def forward(self, x):
        b, s, _ = x.shape
        p = self.p
        h = self.attn_norm(x)
        q = self.q(h).view(b, s, p.num_attention_heads, p.head_dim).transpose(1, 2)
        k = self.k(h).view(b, s, p.num_query_groups, p.head_dim).transpose(1, 2)
        v = self.v(h).view(b, s, p.num_query_groups, p.head_dim).transpose(1, 2)
        rep = p.num_attention_heads // p.num_query_groups
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, -1)
        x = x + self.o(a)
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class TinyLlama(nn.Module):
    """Plain-torch Llama (no RoPE: it holds no parameters) whose parameter count equals ``param_count()``."""

    def __init__(self, p: LlamaPreset, dtype=torch.bfloat16):
        super().__init__()
        self.embed = nn.Embedding(p.vocab_size, p.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(_Block(p, dtype) for _ in range(p.num_layers))
        self.norm = nn.RMSNorm(p.hidden_size, eps=p.norm_eps, dtype=dtype)
        self.head = nn.Linear(p.hidden_size, p.vocab_size, bias=False, dtype=dtype)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def measure(p: LlamaPreset, seq: int = 32) -> dict:
    """Peak RSS increase of building + one mixed-precision Adam step, and the planner's state estimate."""
    torch.manual_seed(0)
    # Warm up on a 1-layer toy first so that lazily loaded kernels, thread pools and the autograd engine
    # are already in the baseline (they are not model state).
    if p.num_layers > 1:
        measure(p.with_(num_layers=1, hidden_size=64, ffn_hidden_size=128, vocab_size=256), seq=8)
    base = _reset_rss_peak()
    model = TinyLlama(p)
    params = list(model.parameters())
    numel = sum(x.numel() for x in params)
    main = [x.detach().float().requires_grad_(False) for x in params]  # fp32 master copy
    grad_buf = [torch.zeros_like(m) for m in main]  # megatron's fp32 main_grad buffer

    def _hook(i):
        def fn(param):  # accumulate into fp32 and drop the bf16 grad at once, like megatron's DDP hooks
            grad_buf[i].add_(param.grad)
            param.grad = None
        return fn

    for i, x in enumerate(params):
        x.register_post_accumulate_grad_hook(_hook(i))
    for m, g in zip(main, grad_buf):
        m.grad = g
    opt = torch.optim.AdamW(main, lr=1e-4, foreach=False)
    ids = torch.randint(0, p.vocab_size, (1, seq))
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, p.vocab_size), ids[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    with torch.no_grad():
        for x, m in zip(params, main):
            x.copy_(m)
    peak = _rss_peak() - base
    w, g, o = model_state(p, tp=1, pp=1, dp_shard=1)
    return {"preset": p.to_dict(), "module_params": numel, "param_count": p.param_count(), "measured_peak_bytes": peak,
            "planner_state_bytes": w + g + o, "ratio": peak / (w + g + o), "loss": float(loss.detach())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=1408)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=32)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    p = get_preset("tiny").with_(name="measure", num_layers=a.layers, hidden_size=a.hidden, ffn_hidden_size=a.ffn,
                                 num_attention_heads=8, num_query_groups=2, vocab_size=a.vocab)
    print(json.dumps(measure(p, a.seq)))


if __name__ == "__main__":
    main()
