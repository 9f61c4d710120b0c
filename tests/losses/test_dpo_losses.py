"""DPO-family pure losses against independent hand formulas (python floats) on hand-built log-probs."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_tulu.losses.dpo import (
    DPO_LOSSES,
    NEEDS_REFERENCE,
    dpo_loss_from_token_logps,
    get_dpo_loss,
    sequence_logps,
)


def _ls(x):  # log sigmoid, the textbook way
    return -math.log(1 + math.exp(-x))


# Two pairs, prompt tokens masked out (first two positions), rejected responses of unequal lengths.
#                 prompt    response
POL = [[-9.0, -9.0, -1.0, -2.0, -0.5, 0.0],   # chosen 0: response len 3 (last is padding)
       [-9.0, -9.0, -0.2, -0.3, 0.0, 0.0],    # chosen 1: len 2
       [-9.0, -9.0, -2.0, -1.0, -3.0, -2.5],  # rejected 0: len 4
       [-9.0, -9.0, -4.0, 0.0, 0.0, 0.0]]     # rejected 1: len 1
REF = [[-7.0, -7.0, -1.5, -1.5, -1.0, 0.0],
       [-7.0, -7.0, -0.4, -0.4, 0.0, 0.0],
       [-7.0, -7.0, -1.0, -1.0, -2.0, -2.0],
       [-7.0, -7.0, -3.0, 0.0, 0.0, 0.0]]
LENS = [3, 2, 4, 1]


def _mask():
    m = torch.zeros(4, 6, dtype=torch.bool)
    for r, n in enumerate(LENS):
        m[r, 2:2 + n] = True
    return m


def _sums(rows):
    return [sum(rows[r][2:2 + LENS[r]]) for r in range(4)]


def _inputs():
    pol = torch.tensor(POL, dtype=torch.float64, requires_grad=True)
    ref = torch.tensor(REF, dtype=torch.float64)
    return pol, ref, _mask()


def test_sequence_logps_sum_and_mean_skip_prompt_and_padding():
    pol, _, mask = _inputs()
    assert sequence_logps(pol, mask, average=False).tolist() == pytest.approx(_sums(POL))
    assert sequence_logps(pol, mask, average=True).tolist() == pytest.approx([s / n for s, n in zip(_sums(POL), LENS)])
    empty = torch.zeros(1, 6, dtype=torch.bool)
    assert sequence_logps(pol[:1], empty, average=True).item() == 0.0  # no NaN for a row with no response


def _hand(kind, beta, eps, gamma=0.0):
    ps, rs = _sums(POL), _sums(REF)
    losses, cr, rr = [], [], []
    for i in range(2):
        c, r = i, i + 2
        pc, pr, rc, rrf = ps[c], ps[r], rs[c], rs[r]
        if kind in ("dpo_norm", "ipo", "simpo"):
            pc, pr, rc, rrf = pc / LENS[c], pr / LENS[r], rc / LENS[c], rrf / LENS[r]
        if kind == "simpo":
            x = beta * (pc - pr - gamma)
            losses.append(-(1 - eps) * _ls(x) - eps * _ls(-x))
            cr.append(beta * pc), rr.append(beta * pr)
            continue
        h = (pc - rc) - (pr - rrf)
        if kind == "ipo":
            losses.append((h - 1 / (2 * beta)) ** 2)
        else:
            x = beta * h
            loss = -(1 - eps) * _ls(x) - eps * _ls(-x)
            if kind == "wpo":
                w = min(1.0, math.exp(ps[c] / LENS[c] + ps[r] / LENS[r]))
                loss *= w
            losses.append(loss)
        cr.append(beta * (pc - rc)), rr.append(beta * (pr - rrf))
    return sum(losses) / 2, cr, rr


@pytest.mark.parametrize("kind,beta,eps", [
    ("dpo", 0.1, 0.0), ("dpo", 0.3, 0.2), ("dpo_norm", 5.0, 0.0), ("dpo_norm", 5.0, 0.1),
    ("ipo", 0.5, 0.0), ("simpo", 2.0, 0.0), ("simpo", 2.0, 0.15), ("wpo", 0.2, 0.1),
])
def test_loss_and_metrics_match_hand_formula(kind, beta, eps):
    pol, ref, mask = _inputs()
    gamma = 0.3
    loss, metrics = dpo_loss_from_token_logps(kind, pol, ref if NEEDS_REFERENCE[kind] else None, mask, beta=beta,
                                              label_smoothing=eps, gamma_beta_ratio=gamma)
    want, cr, rr = _hand(kind, beta, eps, gamma)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert metrics["rewards/chosen"].item() == pytest.approx(sum(cr) / 2, rel=1e-12)
    assert metrics["rewards/rejected"].item() == pytest.approx(sum(rr) / 2, rel=1e-12)
    assert metrics["rewards/margin"].item() == pytest.approx((sum(cr) - sum(rr)) / 2, rel=1e-12)
    assert metrics["rewards/accuracy"].item() == pytest.approx(sum(a > b for a, b in zip(cr, rr)) / 2)
    loss.backward()
    assert pol.grad[:, :2].abs().max() == 0, "prompt tokens must get no gradient"
    assert torch.isfinite(pol.grad).all()


def test_dpo_gradient_matches_hand_derivative():
    pol, ref, mask = _inputs()
    beta = 0.3
    loss, _ = dpo_loss_from_token_logps("dpo", pol, ref, mask, beta=beta)
    loss.backward()
    ps, rs = _sums(POL), _sums(REF)
    for i in range(2):
        h = (ps[i] - rs[i]) - (ps[i + 2] - rs[i + 2])
        # d/dpc mean_i[-log sig(beta h_i)] = -beta * sig(-beta h) / B, on every counted chosen token
        g = -beta * (1 / (1 + math.exp(beta * h))) / 2
        assert pol.grad[i, 2].item() == pytest.approx(g, rel=1e-12)
        assert pol.grad[i + 2, 2].item() == pytest.approx(-g, rel=1e-12)


def test_dpo_norm_gradient_is_divided_by_each_length():
    pol, ref, mask = _inputs()
    loss, _ = dpo_loss_from_token_logps("dpo_norm", pol, ref, mask, beta=5.0)
    loss.backward()
    # the per-token gradient of a row is (pair coefficient) / (its response length): unequal lengths matter
    c0, r0 = pol.grad[0, 2].item(), pol.grad[2, 2].item()
    assert c0 * LENS[0] == pytest.approx(-r0 * LENS[2], rel=1e-12)
    assert pol.grad[0, 5].item() == 0.0  # padding after the response


def test_registry_and_errors():
    assert set(DPO_LOSSES) == {"dpo", "dpo_norm", "ipo", "simpo", "wpo"}
    with pytest.raises(ValueError, match="unknown DPO loss_type 'kto'"):
        get_dpo_loss("kto")
    pol, _, mask = _inputs()
    with pytest.raises(ValueError, match="needs ref_chosen_logps"):
        dpo_loss_from_token_logps("dpo", pol, None, mask)
    with pytest.raises(ValueError, match="even"):
        dpo_loss_from_token_logps("dpo", pol[:3], pol[:3], mask[:3])
