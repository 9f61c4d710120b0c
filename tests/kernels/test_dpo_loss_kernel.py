"""Fused DPO kernel (Triton interpreter on CPU) against its reference built on megatron_tulu.losses.dpo."""

from __future__ import annotations

import pytest
import torch

from kernels.dpo_loss import dpo_loss_reference, fused_dpo_loss


def _batch(b, t, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pol = -torch.rand(2 * b, t, generator=g, dtype=torch.float64) * 3
    ref = pol + 0.3 * torch.randn(2 * b, t, generator=g, dtype=torch.float64)
    mask = torch.zeros(2 * b, t, dtype=torch.bool)
    for r in range(2 * b):  # prompt of varying length, then a response of varying length, then padding
        start = int(torch.randint(1, 6, (1,), generator=g))
        end = int(torch.randint(start + 1, t + 1, (1,), generator=g))
        mask[r, start:end] = True
    return pol.to(dtype), ref.to(dtype), mask


def _both(fn_kw, pol, ref, mask, upstream=2.5):
    out = {}
    for name, fn, p in (("ours", fused_dpo_loss, pol.float()), ("ref", dpo_loss_reference, pol.double())):
        p = p.clone().requires_grad_()
        r = None if ref is None else (ref.float() if name == "ours" else ref.double())
        loss, metrics = fn(p, r, mask, **fn_kw)
        (upstream * loss).backward()
        out[name] = (loss.detach(), {k: v.detach() for k, v in metrics.items()}, p.grad)
    return out


# T = 45 and 70 are not multiples of the interpreter's 32-token block
@pytest.mark.parametrize("loss_type,beta,eps", [
    ("dpo", 0.1, 0.0), ("dpo", 0.5, 0.1), ("dpo_norm", 5.0, 0.0), ("dpo_norm", 5.0, 0.2),
    ("ipo", 0.5, 0.0), ("simpo", 2.0, 0.0), ("simpo", 2.0, 0.1),
])
def test_matches_reference(loss_type, beta, eps):
    pol, ref, mask = _batch(3, 45, seed=sum(map(ord, loss_type)))
    res = _both(dict(loss_type=loss_type, beta=beta, label_smoothing=eps), pol, ref, mask)
    (l1, m1, g1), (l2, m2, g2) = res["ours"], res["ref"]
    assert l1.dtype == torch.float32
    assert l1.item() == pytest.approx(l2.item(), rel=1e-5, abs=1e-6)
    assert set(m1) == set(m2)
    for k in m1:
        assert m1[k].item() == pytest.approx(m2[k].item(), rel=1e-5, abs=1e-5), k
    assert (g1.double() - g2).abs().max().item() < 1e-6 * max(1.0, g2.abs().max().item())
    assert g1[~mask].abs().max() == 0


def test_separate_rejected_tensors_of_other_length():
    pol, ref, mask = _batch(2, 70, seed=5)
    kw = dict(loss_type="dpo_norm", beta=5.0)
    stacked, _ = fused_dpo_loss(pol.float(), ref.float(), mask, **kw)
    # the same pairs given as separate tensors, the rejected ones trimmed to their last response token
    t_r = int(mask[2:].nonzero()[:, 1].max()) + 1
    pc = pol[:2].float().clone().requires_grad_()
    pr = pol[2:, :t_r].float().clone().requires_grad_()
    sep, _ = fused_dpo_loss(pc, ref[:2].float(), mask[:2], rejected_policy_logps=pr,
                            rejected_ref_logps=ref[2:, :t_r].float(), rejected_mask=mask[2:, :t_r], **kw)
    assert sep.item() == pytest.approx(stacked.item(), rel=1e-6)
    sep.backward()
    assert pc.grad.shape == (2, 70) and pr.grad.shape == (2, t_r)
    assert pr.grad.abs().sum() > 0


def test_bf16_logps():
    pol, ref, mask = _batch(4, 40, seed=9)
    p = pol.bfloat16().requires_grad_()
    loss, _ = fused_dpo_loss(p, ref.bfloat16(), mask, loss_type="dpo", beta=0.2)
    want, _ = dpo_loss_reference(pol.bfloat16().double(), ref.bfloat16().double(), mask, loss_type="dpo", beta=0.2)
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)
    loss.backward()
    assert p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad.float()).all()


def test_empty_response_gives_finite_values():
    pol, ref, mask = _batch(2, 20, seed=2)
    mask[1] = False  # a chosen response with no tokens: counted as one token of logp 0, not NaN
    for lt in ("dpo", "dpo_norm", "ipo", "simpo"):
        p = pol.float().clone().requires_grad_()
        loss, metrics = fused_dpo_loss(p, ref.float(), mask, loss_type=lt, beta=1.0)
        want, _ = dpo_loss_reference(pol, ref, mask, loss_type=lt, beta=1.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(p.grad).all()
        assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_bad_input_errors():
    pol, ref, mask = _batch(2, 16)
    with pytest.raises(ValueError, match="wpo"):
        fused_dpo_loss(pol.float(), ref.float(), mask, loss_type="wpo")
    with pytest.raises(ValueError, match="reference"):
        fused_dpo_loss(pol.float(), None, mask, loss_type="dpo")
    with pytest.raises(ValueError, match=r"\[2B, T\]"):
        fused_dpo_loss(pol[:3].float(), ref[:3].float(), mask[:3])
