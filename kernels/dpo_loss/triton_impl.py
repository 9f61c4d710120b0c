"""Fused DPO-family loss in Triton: sequence reductions, loss, metrics and gradient coefficients in one pass.

Layout: chosen and rejected are stacked along the batch, rows ``0..B-1`` chosen and ``B..2B-1`` the rejected
response of the same pairs (open-instruct's concatenated forward). ``fused_dpo_loss`` also accepts separate
rejected tensors and stacks them (padding the shorter with masked positions) before the kernel.

Forward: one program per pair reads the chosen and rejected rows of policy logps, reference logps and mask
once, reduces them to sums and token counts, and computes the pair's loss, rewards, and
``dL/d(policy token logp)`` coefficient for each of the two rows (the per-token gradient is that coefficient
times the mask, divided by the token count for length-normalised losses). Backward is one elementwise pass
``grad[r, t] = grad_out / B * coef[r] * mask[r, t]``. Reference logps get no gradient.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

LOSS_IDS = {"dpo": 0, "dpo_norm": 1, "ipo": 2, "simpo": 3}
"""Losses the kernel implements (``wpo`` only in the torch path, ``megatron_tulu.losses.dpo``)."""


@triton.jit
def _row_sums(p_ptr, r_ptr, m_ptr, row, T, s_p, s_r, s_m, HAS_REF: tl.constexpr, BLOCK_T: tl.constexpr):
    sp = tl.zeros([BLOCK_T], dtype=tl.float32)
    sr = tl.zeros([BLOCK_T], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_T], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        inb = ts < T
        m = tl.load(m_ptr + row * s_m + ts, mask=inb, other=0).to(tl.float32)
        live = m > 0
        p = tl.load(p_ptr + row * s_p + ts, mask=inb, other=0.0).to(tl.float32)
        sp += tl.where(live, p, 0.0)
        if HAS_REF:
            r = tl.load(r_ptr + row * s_r + ts, mask=inb, other=0.0).to(tl.float32)
            sr += tl.where(live, r, 0.0)
        cnt += tl.where(live, 1.0, 0.0)
    return tl.sum(sp, 0), tl.sum(sr, 0), tl.sum(cnt, 0)


@triton.jit
def _log_sigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _dpo_fwd_kernel(p_ptr, r_ptr, m_ptr, loss_ptr, rew_ptr, lp_ptr, coef_ptr, B, T, s_p, s_r, s_m,
                    beta, label_smoothing, gamma_beta_ratio,
                    LOSS: tl.constexpr, HAS_REF: tl.constexpr, BLOCK_T: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)  # int64 row: row * stride (2B*T) must not wrap at 2**31
    spc, src, nc = _row_sums(p_ptr, r_ptr, m_ptr, i, T, s_p, s_r, s_m, HAS_REF, BLOCK_T)
    spr, srr, nr = _row_sums(p_ptr, r_ptr, m_ptr, i + B, T, s_p, s_r, s_m, HAS_REF, BLOCK_T)
    # a row without response tokens counts as one token (contributes 0, never NaN), as sequence_logps does
    inv_c = 1.0 / tl.maximum(nc, 1.0)
    inv_r = 1.0 / tl.maximum(nr, 1.0)
    if LOSS == 0:  # plain DPO uses sums (kept as tensors so both branches have one type when compiled)
        inv_c = nc * 0.0 + 1.0
        inv_r = nr * 0.0 + 1.0
    pc = spc * inv_c
    pr = spr * inv_r
    rc = src * inv_c
    rr = srr * inv_r
    if LOSS == 3:
        logits = pc - pr - gamma_beta_ratio
        rew_c = beta * pc
        rew_r = beta * pr
    else:
        logits = (pc - rc) - (pr - rr)
        rew_c = beta * (pc - rc)
        rew_r = beta * (pr - rr)
    if LOSS == 2:
        h = logits - 1.0 / (2.0 * beta)
        loss = h * h
        dlogits = 2.0 * h
    else:
        x = beta * logits
        loss = -(1.0 - label_smoothing) * _log_sigmoid(x) - label_smoothing * _log_sigmoid(-x)
        # d/dx[-log sig(x)] = -sig(-x); d/dx[-log sig(-x)] = sig(x)
        dlogits = beta * (-(1.0 - label_smoothing) * tl.sigmoid(-x) + label_smoothing * tl.sigmoid(x))
    tl.store(loss_ptr + i, loss)
    tl.store(rew_ptr + i, rew_c)
    tl.store(rew_ptr + (B + i), rew_r)
    tl.store(lp_ptr + i, pc)
    tl.store(lp_ptr + (B + i), pr)
    tl.store(coef_ptr + i, dlogits * inv_c)
    tl.store(coef_ptr + (B + i), -dlogits * inv_r)


@triton.jit
def _dpo_bwd_kernel(coef_ptr, m_ptr, g_ptr, out_ptr, T, s_m, s_o, inv_b, BLOCK_T: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: see _dpo_fwd_kernel
    tb = tl.program_id(1)
    ts = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    inb = ts < T
    c = tl.load(coef_ptr + row) * tl.load(g_ptr) * inv_b
    m = tl.load(m_ptr + row * s_m + ts, mask=inb, other=0).to(tl.float32)
    g = tl.where(m > 0, c, 0.0)
    tl.store(out_ptr + row * s_o + ts, g.to(out_ptr.dtype.element_ty), mask=inb)


class _FusedDPO(torch.autograd.Function):
    @staticmethod
    def forward(ctx, policy, ref, mask, loss_id, beta, label_smoothing, gamma_beta_ratio):
        rows, t = policy.shape
        b = rows // 2
        f32 = dict(device=policy.device, dtype=torch.float32)
        losses, rew, lp, coef = torch.empty(b, **f32), torch.empty(rows, **f32), torch.empty(rows, **f32), torch.empty(rows, **f32)
        has_ref = ref is not None
        r = ref if has_ref else policy
        block_t = min(1024, triton.next_power_of_2(max(t, 16))) if policy.device.type != "cpu" else 32
        _dpo_fwd_kernel[(b,)](
            policy, r, mask, losses, rew, lp, coef, b, t, policy.stride(0), r.stride(0), mask.stride(0),
            float(beta), float(label_smoothing), float(gamma_beta_ratio),
            LOSS=loss_id, HAS_REF=has_ref, BLOCK_T=block_t,
        )
        ctx.save_for_backward(coef, mask)
        ctx.shape_dtype = (policy.shape, policy.dtype, block_t)
        loss = losses.mean()
        ctx.mark_non_differentiable(rew, lp)
        return loss, rew, lp

    @staticmethod
    def backward(ctx, g_loss, _g_rew, _g_lp):
        coef, mask = ctx.saved_tensors
        (rows, t), dtype, block_t = ctx.shape_dtype
        grad = torch.empty(rows, t, device=coef.device, dtype=dtype)
        g = g_loss.detach().float().reshape(1).contiguous()
        _dpo_bwd_kernel[(rows, triton.cdiv(t, block_t))](coef, mask, g, grad, t, mask.stride(0), grad.stride(0),
                                                        1.0 / (rows // 2), BLOCK_T=block_t)
        return grad, None, None, None, None, None, None


def _stack(chosen: torch.Tensor, rejected: torch.Tensor, fill) -> torch.Tensor:
    t = max(chosen.shape[1], rejected.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, t - x.shape[1]), value=fill)  # noqa: E731
    return torch.cat([pad(chosen), pad(rejected)], 0)


def fused_dpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    loss_type: str = "dpo",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    gamma_beta_ratio: float = 0.3,
    rejected_policy_logps: torch.Tensor | None = None,
    rejected_ref_logps: torch.Tensor | None = None,
    rejected_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO-family loss from per-token logps in one Triton pass (forward) plus one elementwise pass (backward).

    Args:
        policy_logps: ``[2B, T]`` per-token policy logps, chosen rows first then rejected (stacked layout);
            or ``[B, T]`` chosen only when ``rejected_*`` are given (separate layout).
        ref_logps: same shape, reference logps (constants; None only for ``simpo``).
        mask: same shape, bool/0-1, True at response tokens (prompt and padding False).
        loss_type: ``dpo`` (sums), ``dpo_norm`` / ``ipo`` / ``simpo`` (length-normalised means).
        beta, label_smoothing, gamma_beta_ratio: as in :mod:`megatron_tulu.losses.dpo`.
        rejected_policy_logps, rejected_ref_logps, rejected_mask: ``[B, T']`` separate rejected tensors.
    Returns:
        ``(loss, metrics)`` with the same metric names as :data:`megatron_tulu.losses.dpo.DPO_LOSSES`.
    """
    if loss_type not in LOSS_IDS:
        raise ValueError(f"fused_dpo_loss: loss_type {loss_type!r} not in the kernel {sorted(LOSS_IDS)}; "
                         "use megatron_tulu.losses.dpo for the others")
    if loss_type != "simpo" and (ref_logps is None or (rejected_policy_logps is not None and rejected_ref_logps is None)):
        raise ValueError(f"fused_dpo_loss: loss_type {loss_type!r} needs reference logps")
    if rejected_policy_logps is not None:
        if rejected_mask is None:
            raise ValueError("fused_dpo_loss: rejected_policy_logps given without rejected_mask")
        policy_logps = _stack(policy_logps, rejected_policy_logps, 0.0)
        mask = _stack(mask, rejected_mask, 0)
        if ref_logps is not None:
            ref_logps = _stack(ref_logps, rejected_ref_logps, 0.0)
    if policy_logps.dim() != 2 or policy_logps.shape[0] % 2 or mask.shape != policy_logps.shape:
        raise ValueError(f"fused_dpo_loss: policy_logps must be [2B, T] with a mask of the same shape, got "
                         f"{tuple(policy_logps.shape)} and mask {tuple(mask.shape)}")
    if ref_logps is not None and ref_logps.shape != policy_logps.shape:
        raise ValueError(f"fused_dpo_loss: ref_logps {tuple(ref_logps.shape)} != policy_logps {tuple(policy_logps.shape)}")
    if policy_logps.device.type == "cpu" and not _INTERPRET:
        raise RuntimeError("kernels.dpo_loss: Triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is "
                           "imported; otherwise use dpo_loss_reference")
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    policy_logps, mask = policy_logps.contiguous(), mask.contiguous()
    ref = ref_logps.detach().contiguous() if (ref_logps is not None and loss_type != "simpo") else None
    loss, rew, lp = _FusedDPO.apply(policy_logps, ref, mask, LOSS_IDS[loss_type], beta, label_smoothing, gamma_beta_ratio)
    b = policy_logps.shape[0] // 2
    cr, rr = rew[:b], rew[b:]
    metrics = {
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rr.mean(),
        "rewards/margin": (cr - rr).mean(),
        "rewards/accuracy": (cr > rr).float().mean(),
        "logps/chosen": lp[:b].mean(),
        "logps/rejected": lp[b:].mean(),
    }
    return loss, metrics
