"""Fused linear+logprob kernel (Triton interpreter on CPU) against the fp64 torch reference and megatron."""

from __future__ import annotations

import pytest
import torch

from kernels.fused_logprob import fused_linear_logprob, linear_logprob_reference
from megatron_tulu.testing import run_distributed


def _data(n, d, v, dtype=torch.float32, seed=0, ignore=()):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * 0.4
    t = torch.randint(0, v, (n,), generator=g)
    for i in ignore:
        t[i] = -100
    # upstream grads with varied weights so every row's gradient is checked, not just their sum
    gl = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    ge = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    return h.to(dtype), w.to(dtype), t, gl, ge


def _run(fn, h, w, t, gl, ge, **kw):
    h = h.clone().requires_grad_()
    w = w.clone().requires_grad_()
    out = fn(h, w, t, **kw)
    if kw.get("with_entropy"):
        lp, ent = out
        (lp * gl.to(lp.dtype)).sum().add((ent * ge.to(ent.dtype)).sum()).backward()
    else:
        lp, ent = out, None
        (lp * gl.to(lp.dtype)).sum().backward()
    return lp.detach(), (ent.detach() if ent is not None else None), h.grad, w.grad


def _close(a, b, tol, what):
    err = (a.double() - b.double()).abs().max().item()
    scale = max(1.0, b.double().abs().max().item())
    assert err <= tol * scale, f"{what}: max abs err {err:.3g} > {tol:g} * {scale:.3g}"


# N, V not multiples of the interpreter blocks (16 tokens, 32 vocab); d not a multiple of 16 in one case
@pytest.mark.parametrize("n,d,v,temperature,with_entropy", [
    (37, 24, 101, 1.0, False),
    (64, 32, 200, 0.7, True),
    (5, 16, 33, 1.3, True),
])
def test_fp32_matches_fp64_reference(n, d, v, temperature, with_entropy):
    h, w, t, gl, ge = _data(n, d, v, torch.float64, ignore=(1, n - 1))
    kw = dict(temperature=temperature, with_entropy=with_entropy)
    ref = _run(linear_logprob_reference, h, w, t, gl, ge, **kw)
    got = _run(fused_linear_logprob, h.float(), w.float(), t, gl, ge, **kw)
    assert got[0].dtype == torch.float32 and got[0].shape == (n,)
    for name, a, b in zip(("logprob", "entropy", "dh", "dW"), got, ref):
        if b is not None:
            _close(a, b, 2e-5, name)
    assert got[0][1] == 0 and got[0][n - 1] == 0, "ignored rows must give logprob 0"
    assert got[2][1].abs().max() == 0 and got[2][n - 1].abs().max() == 0, "ignored rows must get no dh"
    if with_entropy:
        assert (got[1][:1] > 0).all() and got[1][1] == 0


def test_bf16_inputs():
    h, w, t, gl, ge = _data(48, 32, 150, torch.bfloat16, seed=1, ignore=(0,))
    got = _run(fused_linear_logprob, h, w, t, gl, ge, with_entropy=True, temperature=0.9)
    # reference in fp64 on the same bf16-rounded values: only the kernel's own rounding is measured
    ref = _run(linear_logprob_reference, h.double(), w.double(), t, gl, ge, with_entropy=True, temperature=0.9)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.bfloat16 and got[3].dtype == torch.bfloat16
    _close(got[0], ref[0], 1e-4, "logprob")
    _close(got[1], ref[1], 1e-4, "entropy")
    _close(got[2], ref[2], 2e-2, "dh")  # bf16 gradients: ~3 significant digits
    _close(got[3], ref[3], 2e-2, "dW")


def test_all_ignored_batch_is_zero_not_nan():
    h, w, t, gl, ge = _data(20, 16, 40, torch.float32)
    t[:] = -100
    lp, ent, dh, dw = _run(fused_linear_logprob, h, w, t, gl, ge, with_entropy=True)
    for x in (lp, ent, dh, dw):
        assert torch.isfinite(x).all()
        assert x.abs().max() == 0


def test_custom_ignore_index_and_padded_vocab():
    h, w, t, gl, ge = _data(30, 16, 70, torch.float64, seed=3)
    t = t.clamp(max=60)
    t[4] = 7777
    kw = dict(ignore_index=7777, true_vocab_size=61, with_entropy=True)
    got = _run(fused_linear_logprob, h.float(), w.float(), t, gl, ge, **kw)
    # padded rows (ids >= 61) take no mass: same as the reference restricted to the first 61 rows of W
    ref = _run(linear_logprob_reference, h, w[:61], t, gl, ge, ignore_index=7777, with_entropy=True)
    for name, a, b in zip(("logprob", "entropy", "dh"), got[:3], ref[:3]):
        _close(a, b, 2e-5, name)
    _close(got[3][:61], ref[3], 2e-5, "dW")
    assert got[3][61:].abs().max() == 0
    assert got[0][4] == 0


def test_backward_in_many_vocab_chunks_matches_reference():
    """A budget of one vocab tile per backward chunk (interpreter tile: 32 columns): 70 = 32 + 32 + 6 columns,
    the padded-vocab boundary (61) inside the last chunk, with entropy and temperature."""
    h, w, t, gl, ge = _data(23, 16, 70, torch.float64, seed=5, ignore=(2,))
    t = t.clamp(max=60)
    kw = dict(true_vocab_size=61, with_entropy=True, temperature=0.8)
    got = _run(fused_linear_logprob, h.float(), w.float(), t, gl, ge, bwd_chunk_bytes=1, **kw)
    ref = _run(linear_logprob_reference, h, w[:61], t, gl, ge, with_entropy=True, temperature=0.8)
    for name, a, b in zip(("logprob", "entropy", "dh"), got[:3], ref[:3]):
        _close(a, b, 2e-5, name)
    _close(got[3][:61], ref[3], 2e-5, "dW")
    assert got[3][61:].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_allocates_no_vocab_sized_buffer_but_dw(dtype):
    """Memory shape of the backward: the only allocation of [V, d] size is dW itself (no fp32 accumulator, no
    per-chunk [V, d] product), and each logit-gradient chunk stays within ``bwd_chunk_bytes``. Every aten op's
    output storage that is new during backward is recorded (views of ``hidden``/``weight`` are not new; the Triton
    kernel writes into ``dz``, which aten allocates)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Allocs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen, self.sizes = set(), []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for x in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(x, torch.Tensor) and x.untyped_storage().data_ptr() not in self.seen:
                    self.seen.add(x.untyped_storage().data_ptr())
                    self.sizes.append((x.untyped_storage().nbytes(), tuple(x.shape), x.dtype))
            return out

    n, d, v, budget = 16, 32, 1000, 4096
    h, w, t, gl, _ = _data(n, d, v, dtype, seed=7)
    h, w = h.requires_grad_(), w.requires_grad_()
    lp = fused_linear_logprob(h, w, t, bwd_chunk_bytes=budget)
    mode = Allocs()
    mode.seen |= {h.untyped_storage().data_ptr(), w.untyped_storage().data_ptr()}
    with mode:
        (lp * gl.float()).sum().backward()
    vd_bytes = v * d * w.element_size()
    big = [a for a in mode.sizes if a[0] >= vd_bytes // 2]
    assert big == [(vd_bytes, (v, d), dtype)], big  # dW, and nothing else of its order
    elem = h.element_size()
    chunks = [a for a in mode.sizes if len(a[1]) == 2 and a[1][0] == n and a[1][1] != d]
    assert chunks and max(a[0] for a in chunks) <= max(budget, n * 32 * elem), chunks
    assert len(chunks) >= 2  # the budget forced several chunks (a freed chunk's address may be reused: not counted)
    ref = _run(linear_logprob_reference, h.detach().double(), w.detach().double(), t, gl, None)
    _close(w.grad, ref[3], 2e-5 if dtype == torch.float32 else 2e-2, "dW")
    _close(h.grad, ref[2], 2e-5 if dtype == torch.float32 else 2e-2, "dh")


def test_bad_input_errors_name_the_problem():
    h, w, t, *_ = _data(8, 16, 20)
    with pytest.raises(ValueError, match="targets"):
        fused_linear_logprob(h, w, t[:5])
    with pytest.raises(ValueError, match="outside vocab"):
        fused_linear_logprob(h, w, torch.full((8,), 25))
    with pytest.raises(ValueError, match="dtype"):
        fused_linear_logprob(h, w.double(), t)


def _tp2_vs_megatron(n, d, v, temperatures):
    """Each of 2 ranks holds half the vocab; compare with megatron's vocab_parallel_cross_entropy."""
    from megatron.core import parallel_state as ps

    from megatron_tulu.parallel import ParallelDims, init_distributed

    init_distributed(ParallelDims(tp=2, world=2))
    group = ps.get_tensor_model_parallel_group()
    # one process launch for all temperatures: spawning + importing megatron dominates this test's time
    return {temp: _tp2_check(group, n, d, v, temp) for temp in temperatures}


def _tp2_check(group, n, d, v, temperature):
    import torch.distributed as dist
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
    from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

    rank = dist.get_rank(group)
    h, w, t, gl, ge = _data(n, d, v, torch.float32, seed=7, ignore=(2,))
    vl = v // 2
    start = rank * vl
    w_local = w[start:start + vl].contiguous()
    valid = (t != -100).float()

    # megatron: loss = lse - target logit on the local logits shard; dh all-reduced by its copy region
    hm = h.clone().requires_grad_()
    wm = w_local.clone().requires_grad_()
    logits = (copy_to_tensor_model_parallel_region(hm) @ wm.t()) / temperature
    meg = -vocab_parallel_cross_entropy(logits.clone(), t.clamp(min=0)) * valid
    (meg * gl.float()).sum().backward()

    ho = h.clone().requires_grad_()
    wo = w_local.clone().requires_grad_()
    lp, ent = fused_linear_logprob(ho, wo, t, temperature=temperature, with_entropy=True, tp_group=group,
                                   vocab_start=start)
    (lp * gl.float()).sum().backward()
    lp_err = (lp - meg.detach()).abs().max().item()
    dh_err = (ho.grad - hm.grad).abs().max().item()
    dw_err = (wo.grad - wm.grad).abs().max().item()

    # entropy (megatron has none): against the single-process fp64 reference on the full vocab
    full = linear_logprob_reference(h.double(), w.double(), t, temperature=temperature, with_entropy=True)
    ent_err = (ent.double() - full[1]).abs().max().item()
    lp_full_err = (lp.double() - full[0]).abs().max().item()

    # entropy gradient under TP against the torch reference under TP
    he, we = h.clone().requires_grad_(), w_local.clone().requires_grad_()
    _, e1 = fused_linear_logprob(he, we, t, temperature=temperature, with_entropy=True, tp_group=group, vocab_start=start)
    (e1 * ge.float()).sum().backward()
    hr, wr = h.clone().requires_grad_(), w_local.clone().requires_grad_()
    _, e2 = linear_logprob_reference(hr, wr, t, temperature=temperature, with_entropy=True, tp_group=group,
                                     vocab_start=start)
    (e2 * ge.float()).sum().backward()
    ent_grad_err = max((he.grad - hr.grad).abs().max().item(), (we.grad - wr.grad).abs().max().item())
    return dict(lp=lp_err, dh=dh_err, dw=dw_err, ent=ent_err, lp_full=lp_full_err, ent_grad=ent_grad_err)


@pytest.mark.slow
def test_tp2_vocab_parallel_matches_megatron():
    results = run_distributed(_tp2_vs_megatron, world_size=2, args=(24, 16, 100, (1.0, 0.6)), timeout_s=240)
    for rank, by_temp in enumerate(results):
        assert set(by_temp) == {1.0, 0.6}
        for temp, errs in by_temp.items():
            for name, err in errs.items():
                assert err < 2e-5, f"rank {rank}, temperature {temp}: {name} max abs err {err:.3g}"
