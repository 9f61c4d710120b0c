"""The fused logprob backward adds each vocab chunk's ``dz @ W_chunk`` into the fp32 ``dh`` accumulator unrounded.

Rounding every chunk's bf16 ``[N, d]`` product before the add costs a bf16 rounding per chunk, and over a 128k vocab
in many chunks those errors add up, where the fp32 accumulator exists to make one rounding at the end. The
interpreter runs the Triton dlogits kernel on CPU; the dh product there is the CPU branch of ``_addmm_fp32_``
(the CUDA branch, cuBLAS with fp32 output, runs in the ``gpu``-marked cases on a GPU).
"""

from __future__ import annotations

import pytest
import torch

from kernels.fused_logprob import fused_linear_logprob, linear_logprob_reference

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _exact_case(n=32, d=64, v=256, seed=0):
    """bf16 data for which the true ``dh`` is exactly representable and every input to the dh product is exact:
    ``h`` is zero on the half of ``d`` where the rows of ``W`` differ, so all logits are equal and p = 1/256
    exactly; with upstream grad 1, ``dz`` is -1/256 or 255/256 (both exact in bf16). The rows' differing halves sum
    to zero over the vocab (each row appears once negated, shuffled), so ``dh[i] = W[t_i]`` with the shared half
    cancelled: ``dh = [0, u_t]``. Every partial sum is a short dyadic number, exact in fp32; a chunk product rounded
    to bf16 (8 significant bits) is not."""
    g = torch.Generator().manual_seed(seed)
    half = d // 2
    shared = torch.randint(-127, 128, (half,), generator=g).double() / 64
    a = torch.randint(-64, 65, (v // 2, half), generator=g).double() / 64
    u = torch.cat([a, -a])[torch.randperm(v, generator=g)]
    w = torch.cat([shared.expand(v, half), u], 1)
    zeros = torch.zeros(n, half, dtype=torch.float64)
    h = torch.cat([torch.randn(n, half, generator=g, dtype=torch.float64), zeros], 1)
    t = torch.randint(0, v, (n,), generator=g)
    return h.to(torch.bfloat16), w.to(torch.bfloat16), t, torch.cat([zeros, u[t]], 1)


def _dh(h, w, t, chunk_bytes):
    h = h.clone().requires_grad_()
    fused_linear_logprob(h, w, t, bwd_chunk_bytes=chunk_bytes).sum().backward()
    return h.grad


@pytest.mark.parametrize("device", DEVICES)
def test_dh_exact_when_chunk_products_are_not_rounded(device):
    h, w, t, want = _exact_case()
    hr = h.double().requires_grad_()
    linear_logprob_reference(hr, w.double(), t).sum().backward()
    assert (hr.grad - want).abs().max() < 1e-12  # the construction: fp64 reference == the exact dh
    # bwd_chunk_bytes=1: one vocab tile per chunk (8 chunks of 32 columns on CPU, 2 of 128 on the GPU)
    got = _dh(h.to(device), w.to(device), t.to(device), 1).double().cpu()
    wrong = got != want
    assert not wrong.any(), (f"dh differs from the exact gradient in {int(wrong.sum())}/{want.numel()} entries, "
                             f"max abs err {(got - want).abs().max().item():.3g}")


@pytest.mark.parametrize("device", DEVICES)
def test_no_bf16_dh_sized_matmul_output_in_backward(device):
    """No matmul in the backward produces a bf16 ``[N, d]`` tensor (the rounded per-chunk dh product)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Matmuls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.outs = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if "mm" in func.__name__ or "matmul" in func.__name__:
                for x in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(x, torch.Tensor):
                        self.outs.append((func.__name__, tuple(x.shape), x.dtype))
            return out

    n, d = 24, 48  # n, d, and the 32/128-column chunks all differ, so an [n, d] output is the dh product
    g = torch.Generator().manual_seed(3)
    h = torch.randn(n, d, generator=g).to(torch.bfloat16).to(device).requires_grad_()
    w = (torch.randn(300, d, generator=g) * 0.4).to(torch.bfloat16).to(device).requires_grad_()
    t = torch.randint(0, 300, (n,), generator=g).to(device)
    lp = fused_linear_logprob(h, w, t, bwd_chunk_bytes=1)
    mode = Matmuls()
    with mode:
        lp.sum().backward()
    dh_products = [o for o in mode.outs if o[1] == (n, d)]
    assert dh_products, mode.outs
    bad = [o for o in dh_products if o[2] != torch.float32]
    assert not bad, f"rounded per-chunk dh products: {bad[:3]} ({len(bad)} chunks)"


def test_many_chunks_no_less_accurate_than_one_chunk():
    """Random bf16 data whose vocab rows share a common offset: large per-chunk products that cancel over the
    vocab. With unrounded accumulation, 32 chunks are as accurate as one (the only
    rounding left is dh's own bf16 cast); rounding each chunk's product made it ~1.8x worse here."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, 32, generator=g, dtype=torch.float64)
    common = 2.0 * torch.randn(32, generator=g, dtype=torch.float64)
    w = torch.randn(1024, 32, generator=g, dtype=torch.float64) * 0.4 + common
    t = torch.randint(0, 1024, (32,), generator=g)
    h, w = h.to(torch.bfloat16), w.to(torch.bfloat16)
    hr = h.double().requires_grad_()
    linear_logprob_reference(hr, w.double(), t).sum().backward()
    err = {k: (_dh(h, w, t, b).double() - hr.grad).abs().max().item() for k, b in (("one", 2**30), ("many", 1))}
    assert err["many"] <= 1.25 * err["one"], (f"dh max abs err: {err['many']:.4g} in 32 chunks vs "
                                              f"{err['one']:.4g} in one")
