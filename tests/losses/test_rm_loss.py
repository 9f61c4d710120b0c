"""The Bradley-Terry reward-model loss against hand-computed numbers (python floats)."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_tulu.losses.rm import bt_loss


def _nls(x):  # -log sigmoid(x), the textbook way
    return math.log(1 + math.exp(-x))


RC, RR = [1.0, -0.5, 2.0], [0.0, 0.5, 2.0]  # pair 2 is a tie (counts as wrong)


def test_plain_bradley_terry():
    loss, m = bt_loss(torch.tensor(RC), torch.tensor(RR))
    want = (_nls(1.0) + _nls(-1.0) + _nls(0.0)) / 3  # 0.31326 + 1.31326 + 0.69315 = 2.31967 / 3
    assert loss.item() == pytest.approx(want, abs=1e-6) and want == pytest.approx(0.773223, abs=1e-6)
    assert m["accuracy"].item() == pytest.approx(1 / 3)
    assert m["chosen_score"].item() == pytest.approx(2.5 / 3) and m["rejected_score"].item() == pytest.approx(2.5 / 3)
    assert m["margin"].item() == pytest.approx(0.0)


def test_margin_and_centering():
    margin = torch.tensor([0.5, 0.0, 1.0])
    loss, m = bt_loss(torch.tensor(RC), torch.tensor(RR), margin=margin, center_coef=0.01)
    bt = (_nls(0.5) + _nls(-1.0) + _nls(-1.0)) / 3
    center = 0.01 * (1.0 ** 2 + 0.0 ** 2 + 4.0 ** 2) / 3  # (r_c + r_r)^2: 1, 0, 16
    assert loss.item() == pytest.approx(bt + center, abs=1e-6)
    assert m["margin"].item() == pytest.approx(0.0)  # the metric is the raw r_c - r_r


def test_gradient_and_shapes():
    rc = torch.tensor([0.3], requires_grad=True)
    rr = torch.tensor([0.1], requires_grad=True)
    bt_loss(rc, rr)[0].backward()
    s = 1 / (1 + math.exp(-0.2))  # d/dr_c -log sig(r_c - r_r) = -(1 - sig)
    assert rc.grad.item() == pytest.approx(-(1 - s)) and rr.grad.item() == pytest.approx(1 - s)
    loss, _ = bt_loss(torch.tensor([1.0], dtype=torch.bfloat16), torch.tensor([0.0], dtype=torch.bfloat16))
    assert loss.dtype == torch.float32
    with pytest.raises(ValueError, match=r"must both be \[B\]"):
        bt_loss(torch.zeros(2, 1), torch.zeros(2, 1))
