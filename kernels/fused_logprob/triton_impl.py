"""Fused linear + log-softmax + gather (+ entropy) in Triton, vocab-parallel aware.

Forward: one program per (block of ``BLOCK_N`` tokens, vocab split) walks its vocab range in ``BLOCK_V`` tiles; each tile
of logits ``h @ W^T`` is built in fp32 registers by a K-loop over ``d`` and folded into an online
logsumexp (running max ``m``, running sum of ``exp(z - m)``), the target logit, and (for entropy) the running
sum of ``exp(z - m) * z``. The per-split partials ``[S, N]`` are merged in torch (the same algebra as the TP
merge). Nothing of size ``[N, V]`` is ever written.

Backward: the logits are recomputed chunk by chunk over the VOCAB (``cols`` rows of ``W`` at a time, sized so
the chunk's logit gradient ``[N, cols]`` fits a fixed memory budget); a second kernel writes ``dlogits`` for
the chunk only, then one matmul over all tokens writes that chunk's rows of ``dW`` directly (fp32 accumulation
inside the GEMM, rounded once) and another adds its share of ``dh``, taken in fp32 and never rounded to bf16,
into an fp32 ``[N, d]`` accumulator. So beyond ``dW`` itself nothing of size ``[V, d]`` is allocated (no fp32
weight-gradient accumulator), and the full-vocab gradient is never held for all tokens at once. Tokens per
micro-batch are far fewer than vocab rows, which is why the accumulator is on the ``dh`` side.

With ``tp_group``, the per-rank partials (max, sum-exp, target logit, entropy numerator) are combined by two
all-reduces (one MAX, one SUM of the stacked rescaled partials), the same algebra as megatron's
``vocab_parallel_cross_entropy``. ``hidden`` is taken to be replicated across the TP group, so ``dh`` is
all-reduced in backward (do NOT also wrap ``hidden`` in ``copy_to_tensor_model_parallel_region``).
Collectives use the group's own timeout (set when the group was created by ``megatron_tulu.parallel``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, D, s_hn, s_hd, s_wv, s_wd,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
                 UPCAST: tl.constexpr):
    # rows/cols arrive as int64 (see _fwd_kernel); ks is widened too, so index * stride never wraps at 2**31
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ks = (d0 + tl.arange(0, BLOCK_D)).to(tl.int64)
        kmask = ks < D
        a = tl.load(h_ptr + rows[:, None] * s_hn + ks[None, :] * s_hd, mask=row_mask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * s_wv + ks[:, None] * s_wd, mask=col_mask[None, :] & kmask[:, None], other=0.0)
        if UPCAST:  # Triton 3.9's interpreter returns garbage for bf16 tl.dot; upcast there (exact products)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _fwd_kernel(h_ptr, w_ptr, tgt_ptr, m_ptr, s_ptr, tz_ptr, ez_ptr,
                N, V, D, s_hn, s_hd, s_wv, s_wd, vocab_start, valid_v, inv_temp, ignore_index, v_per_split,
                WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                BLOCK_D: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    # program (token block, vocab split): partial online-logsumexp over vocab [v_lo, v_hi); the splits give
    # enough programs to fill the GPU when N is small, and are merged like TP shards (_merge_partials)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    v_lo = split * v_per_split
    v_hi = tl.minimum(V, v_lo + v_per_split)
    # int64 indices: row * stride (N*d) and col * stride (V*d) pass 2**31 at long-context / big-vocab sizes, and
    # an int32 product would wrap silently (tests/gpu_readiness/test_kernel_int64_offsets.py checks the TTIR)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=ignore_index)
    local_t = tgt - vocab_start
    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    tz = tl.zeros([BLOCK_N], dtype=tl.float32)
    ez = tl.zeros([BLOCK_N], dtype=tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        col_mask = cols < v_hi
        z = _logits_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, D, s_hn, s_hd, s_wv, s_wd,
                         BLOCK_N, BLOCK_V, BLOCK_D, IEEE, UPCAST) * inv_temp
        # cols beyond this shard, or beyond the true vocab (TP padding), take no probability mass
        live = col_mask & (cols < valid_v)
        z = tl.where(live[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, 1))
        # m_new is -inf only for a tile of pure padding seen before any live column; keep exp() finite there
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        e = tl.exp(z - m_safe[:, None])
        s = s * alpha + tl.sum(e, 1)
        if WITH_ENTROPY:
            ez = ez * alpha + tl.sum(e * tl.where(live[None, :], z, 0.0), 1)  # avoid 0 * -inf
        hit = (cols[None, :] == local_t[:, None]) & live[None, :]
        tz += tl.sum(tl.where(hit, z, 0.0), 1)
        m = m_new
    out = split.to(tl.int64) * N + rows
    tl.store(m_ptr + out, m, mask=row_mask)
    tl.store(s_ptr + out, s, mask=row_mask)
    tl.store(tz_ptr + out, tz, mask=row_mask)
    if WITH_ENTROPY:
        tl.store(ez_ptr + out, ez, mask=row_mask)


@triton.jit
def _bwd_dlogits_kernel(h_ptr, w_ptr, tgt_ptr, lse_ptr, ent_ptr, glp_ptr, gent_ptr, dz_ptr,
                        N, V, D, s_hn, s_hd, s_wv, s_wd, s_zn, s_zv, vocab_start, valid_v, inv_temp,
                        WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                        BLOCK_D: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # int64: see _fwd_kernel
    cols = pid_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < N
    col_mask = cols < V
    z = _logits_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, D, s_hn, s_hd, s_wv, s_wd,
                     BLOCK_N, BLOCK_V, BLOCK_D, IEEE, UPCAST) * inv_temp
    live = col_mask & (cols < valid_v)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    # upstream grads are already zero at ignored rows (the wrapper masks them)
    g = tl.load(glp_ptr + rows, mask=row_mask, other=0.0)
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)
    p = tl.where(live[None, :], tl.exp(z - lse[:, None]), 0.0)
    hit = (cols[None, :] == (tgt - vocab_start)[:, None]) & live[None, :]
    # d logp_t / dz_j = 1[j == t] - p_j
    dz = g[:, None] * (tl.where(hit, 1.0, 0.0) - p)
    if WITH_ENTROPY:
        # H = -sum p log p  =>  dH/dz_j = -p_j (log p_j + H) = -p_j (z_j - lse + H)
        ge = tl.load(gent_ptr + rows, mask=row_mask, other=0.0)
        ent = tl.load(ent_ptr + rows, mask=row_mask, other=0.0)
        zl = tl.where(live[None, :], z - lse[:, None] + ent[:, None], 0.0)
        dz -= ge[:, None] * p * zl
    dz = dz * inv_temp  # z = (h W^T) / T
    out = dz_ptr + rows[:, None] * s_zn + cols[None, :] * s_zv
    tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def _check_launchable(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not _INTERPRET:
        raise RuntimeError(
            "kernels.fused_logprob: Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before triton is "
            "imported; otherwise use the torch reference (linear_logprob_reference)"
        )


def _pick_blocks(device: torch.device, d: int) -> tuple[int, int, int]:
    if device.type == "cpu":  # interpreter: small tiles keep numpy emulation quick
        return 16, 32, 16
    return 64, 128, 64


def _num_splits(device: torch.device, n: int, v: int, block_n: int, block_v: int) -> int:
    """Vocab splits per token block: enough programs for ~2 waves on the GPU (1 split when N fills it)."""
    v_blocks = triton.cdiv(v, block_v)
    if device.type == "cpu":
        return min(2, v_blocks)  # exercise the merge path in interpreter tests
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(v_blocks, triton.cdiv(2 * sms, triton.cdiv(max(n, 1), block_n))))


def _merge_partials(m, s, tz, ez, group):
    """Merge ``[S, N]`` partial (max, sum exp(z-max), target logit, sum exp(z-max)*z) over dim 0 and, with
    ``group``, over the TP ranks (one MAX and one SUM all-reduce). Returns ``[N]`` tensors."""
    gmax = m.amax(0)
    if group is not None:
        dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=group)
    # a split/shard that saw only padding has m = -inf and contributes nothing
    scale = torch.where(torch.isinf(m), torch.zeros_like(m), torch.exp(m - gmax))
    parts = [(s * scale).sum(0), tz.sum(0)] + ([(ez * scale).sum(0)] if ez is not None else [])
    if group is not None:
        stacked = torch.stack(parts)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=group)
        parts = list(stacked.unbind(0))
    return gmax, parts[0], parts[1], (parts[2] if ez is not None else None)


def _addmm_fp32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` into the fp32 accumulator ``acc`` with the product itself never rounded to ``a``'s dtype:
    a bf16 ``[N, d]`` chunk product rounded before the add loses ~3 digits per vocab chunk, and those errors add up
    over the chunks instead of being made once at the end."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
    elif a.is_cuda:
        # bf16/fp16 GEMM with fp32 output (torch >= 2.8): fp32 accumulation inside cuBLAS, no rounding after. An
        # fp32 [N, d] temporary (dh-sized, per chunk, reused by the allocator); addmm with out_dtype into ``acc``
        # itself would avoid it, but some torch releases insist that ``self`` has the input dtype there.
        acc.add_(torch.mm(a, b, out_dtype=torch.float32))
    else:
        # CPU (interpreter tests) has no mixed-precision GEMM: upcast; a bf16 x bf16 product is exact in fp32
        acc.addmm_(a.float(), b.float())


def _chunk_cols(n: int, v: int, elem_bytes: int, block_v: int, budget_bytes: int) -> int:
    """Vocab columns per backward chunk: ``[n, cols]`` logit gradients fit ``budget_bytes`` (at least one tile)."""
    cols = (budget_bytes // max(1, n * elem_bytes)) // block_v * block_v
    return max(block_v, min(cols, triton.cdiv(v, block_v) * block_v))


class _FusedLinearLogprob(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, ignore_index, with_entropy, tp_group, vocab_start,
                true_vocab_size, bwd_budget_bytes):
        n, d = hidden.shape
        v = weight.shape[0]
        ieee = hidden.dtype == torch.float32
        bn, bv, bd = _pick_blocks(hidden.device, d)
        valid_v = v if true_vocab_size is None else max(0, min(v, true_vocab_size - vocab_start))
        splits = _num_splits(hidden.device, n, v, bn, bv)
        v_per_split = triton.cdiv(triton.cdiv(v, bv), splits) * bv
        f32 = dict(device=hidden.device, dtype=torch.float32)
        m = torch.full((splits, n), float("-inf"), **f32)
        s, tz = torch.zeros(splits, n, **f32), torch.zeros(splits, n, **f32)
        ez = torch.zeros(splits, n, **f32) if with_entropy else s
        inv_t = 1.0 / float(temperature)
        if n > 0:
            _fwd_kernel[(triton.cdiv(n, bn), splits)](
                hidden, weight, targets, m, s, tz, ez, n, v, d, hidden.stride(0), hidden.stride(1),
                weight.stride(0), weight.stride(1), vocab_start, valid_v, inv_t, ignore_index, v_per_split,
                WITH_ENTROPY=with_entropy, BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd, IEEE=ieee, UPCAST=_INTERPRET,
            )
        m, s, tz, ez = _merge_partials(m, s, tz, ez if with_entropy else None, None)
        if tp_group is not None:
            m, s, tz, ez = _merge_partials(m[None], s[None], tz[None], ez[None] if with_entropy else None, tp_group)
        valid = targets != ignore_index
        lse = m + torch.log(s)
        logprob = torch.where(valid, tz - lse, torch.zeros_like(lse))
        entropy = torch.where(valid, lse - ez / s, torch.zeros_like(lse)) if with_entropy else None
        ctx.save_for_backward(hidden, weight, targets, lse, entropy if with_entropy else lse)
        ctx.cfg = (inv_t, ignore_index, with_entropy, tp_group, vocab_start, valid_v, ieee, (bn, bv, bd),
                   bwd_budget_bytes)
        ctx.mark_non_differentiable(targets)
        return (logprob, entropy) if with_entropy else logprob

    @staticmethod
    def backward(ctx, g_lp, g_ent=None):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        inv_t, ignore_index, with_entropy, tp_group, vocab_start, valid_v, ieee, (bn, bv, bd), budget = ctx.cfg
        n, d = hidden.shape
        v = weight.shape[0]
        valid = (targets != ignore_index).float()
        g_lp = (g_lp.float() if g_lp is not None else torch.zeros_like(lse)) * valid
        g_ent = (g_ent.float() * valid).contiguous() if (with_entropy and g_ent is not None) else None
        use_ent = g_ent is not None
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # Vocab-outer: each chunk of vocab rows gets its logit gradient for ALL tokens, so its dW rows come from
        # one matmul over every token (fp32 accumulation inside cuBLAS, one rounding) written straight into dW:
        # no fp32 [V, d] accumulator and no [V, d] temporary. dh (small: tokens << vocab) sums over chunks in fp32.
        # no rows, or (on CPU, where the check is free) every row ignored: the gradients are exactly zero
        skip = n == 0 or (hidden.device.type == "cpu" and not bool((valid > 0).any()))
        # every dW row is written by exactly one chunk's matmul below, so it needs no zero-fill unless none runs
        dw = (torch.zeros_like(weight) if skip else torch.empty_like(weight)) if need_dw else None
        dh32 = torch.zeros(n, d, device=hidden.device, dtype=torch.float32) if need_dh else None
        # dlogits in the input dtype (bf16 on GPU) halves the chunk's memory, as Liger does; fp32 stays fp32. On CPU
        # the dh product upcasts the chunk to fp32 (_addmm_fp32_), so the chunk is sized for that copy there
        upcast = hidden.device.type == "cpu" and hidden.dtype != torch.float32
        cols = _chunk_cols(n, v, 4 if upcast else hidden.element_size(), bv, budget)
        for c0 in range(0, 0 if skip else v, cols):
            c1 = min(v, c0 + cols)
            w_c = weight[c0:c1]
            dz = torch.empty(n, c1 - c0, device=hidden.device, dtype=hidden.dtype)
            grid = (triton.cdiv(n, bn), triton.cdiv(c1 - c0, bv))
            _bwd_dlogits_kernel[grid](
                hidden, w_c, targets, lse, entropy, g_lp, g_ent if use_ent else g_lp, dz, n, c1 - c0, d,
                hidden.stride(0), hidden.stride(1), w_c.stride(0), w_c.stride(1), dz.stride(0), dz.stride(1),
                vocab_start + c0, max(0, min(c1, valid_v) - c0), inv_t,
                WITH_ENTROPY=use_ent, BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd, IEEE=ieee, UPCAST=_INTERPRET,
            )
            if need_dw:
                torch.mm(dz.t(), hidden, out=dw[c0:c1])
            if need_dh:
                _addmm_fp32_(dh32, dz, w_c)
        dh = dh32.to(hidden.dtype) if need_dh else None
        if need_dh and tp_group is not None:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=tp_group)
        return dh, dw, None, None, None, None, None, None, None, None


def fused_linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    with_entropy: bool = False,
    tp_group=None,
    vocab_start: int = 0,
    true_vocab_size: int | None = None,
    bwd_chunk_bytes: int = 256 * 2**20,
):
    """Per-token log p(target | hidden) under softmax(hidden @ weight^T / temperature), fused and chunked.

    Args:
        hidden: ``[N, d]`` float (bf16/fp16/fp32); replicated across ``tp_group`` when it is given.
        weight: ``[V_local, d]`` output-layer weight, or this rank's vocab shard (same dtype as ``hidden``).
        targets: ``[N]`` int64 global token ids; ``ignore_index`` rows give 0 and no gradient.
        temperature: logits are divided by it (rollout logprobs use the sampling temperature).
        ignore_index: target value marking rows to skip.
        with_entropy: also return the entropy ``[N]`` of the full distribution (differentiable).
        tp_group: TP process group whose ranks hold consecutive vocab shards; None = whole vocab here.
        vocab_start: global id of ``weight``'s first row.
        true_vocab_size: global ids at or above it are vocab padding and get no probability mass.
        bwd_chunk_bytes: memory budget for one backward chunk of logit gradients ``[N, cols]`` (vocab columns are
            sized to fit; a chunk is at least one vocab tile).
    Returns:
        logprob ``[N]`` fp32 (0 at ignored rows), or ``(logprob, entropy)`` when ``with_entropy``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"fused_linear_logprob: hidden [N,d] and weight [V,d] expected, got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"fused_linear_logprob: targets must be [N]={hidden.shape[0]}, got {tuple(targets.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"fused_linear_logprob: hidden dtype {hidden.dtype} != weight dtype {weight.dtype}")
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"fused_linear_logprob: dtype {hidden.dtype} unsupported (fp32/bf16/fp16; use the reference for fp64)")
    if temperature <= 0:
        raise ValueError(f"fused_linear_logprob: temperature must be > 0, got {temperature}")
    _check_launchable(hidden)
    targets = targets.long().contiguous()
    if tp_group is None and hidden.device.type == "cpu":
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= weight.shape[0]))
        if bool(bad.any()):
            raise ValueError(f"fused_linear_logprob: target id {int(targets[bad][0])} outside vocab [0, {weight.shape[0]})")
    return _FusedLinearLogprob.apply(hidden, weight, targets, float(temperature), int(ignore_index), bool(with_entropy),
                                     tp_group, int(vocab_start), true_vocab_size, int(bwd_chunk_bytes))
