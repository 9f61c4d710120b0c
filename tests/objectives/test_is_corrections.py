"""Importance-sampling corrections of the engine/trainer mismatch (``rlvr.is_correction``): tis (token-level
truncated), masked (IcePop), sequence (geometric-mean ratio per response, truncated), and their ``mismatch/*``
metrics in ``make_experience``."""

import math

import pytest
import torch

from megatron_tulu.algorithms import IS_CORRECTIONS
from megatron_tulu.config import load_config
from megatron_tulu.trainers.rlvr import RLVRConfig, RLVROptions
from megatron_tulu.trainers.rlvr.experience import (
    Experience,
    make_experience,
    response_rows,
)

# log ρ = old - rollout per token: responses [0.5, -1.0, 2.5] and [0.1] (a one-token response)
OLD = torch.tensor([-1.0, -2.0, -0.5, -1.0])
ROLLOUT = torch.tensor([-1.5, -1.0, -3.0, -1.1])
SEQ_IDX = torch.tensor([0, 0, 0, 1])


def test_tis_truncates_each_token():
    w, m = IS_CORRECTIONS["tis"](OLD, ROLLOUT, SEQ_IDX, 2, high=2.0)
    torch.testing.assert_close(w, torch.tensor([math.exp(0.5), math.exp(-1.0), 2.0, math.exp(0.1)]))
    assert float(m["is_clipped_frac"]) == 0.25 and float(m["is_masked_frac"]) == 0
    with pytest.raises(ValueError, match="> 0"):
        IS_CORRECTIONS["tis"](OLD, ROLLOUT, SEQ_IDX, 2, high=0.0)


def test_masked_drops_tokens_outside_the_band():
    # ratios 1.65, 0.37, 12.2, 1.105 with [0.5, 5]: tokens 1 and 2 get weight 0
    w, m = IS_CORRECTIONS["masked"](OLD, ROLLOUT, SEQ_IDX, 2, low=0.5, high=5.0)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert float(m["is_masked_frac"]) == 0.5 and float(m["is_weight_mean"]) == 0.5
    with pytest.raises(ValueError, match="is_low"):
        IS_CORRECTIONS["masked"](OLD, ROLLOUT, SEQ_IDX, 2, low=1.5, high=5.0)


def test_sequence_uses_the_geometric_mean_ratio():
    w, m = IS_CORRECTIONS["sequence"](OLD, ROLLOUT, SEQ_IDX, 2, high=2.0)
    s0 = math.exp((0.5 - 1.0 + 2.5) / 3)  # exp(2/3) = 1.948 < 2: not truncated
    torch.testing.assert_close(w, torch.tensor([s0, s0, s0, math.exp(0.1)]))
    assert float(m["is_clipped_frac"]) == 0
    w, m = IS_CORRECTIONS["sequence"](OLD, ROLLOUT, SEQ_IDX, 2, high=1.5)
    torch.testing.assert_close(w, torch.tensor([1.5, 1.5, 1.5, math.exp(0.1)]))
    assert float(m["is_clipped_frac"]) == 0.75  # the tokens of the truncated response


@pytest.mark.parametrize("kind", ["tis", "masked", "sequence"])
def test_make_experience_logs_mismatch_metrics(kind):
    ids, targets, mask = response_rows([[5, 6], [5, 6]], [[10, 11, 12], [13]], pad_id=0)
    rows = Experience.rows(ids, targets, mask)
    m = mask.bool()
    old, rollout = torch.zeros(mask.shape), torch.zeros(mask.shape)
    old[m], rollout[m] = OLD, ROLLOUT
    o = RLVROptions(algorithm="grpo", samples_per_prompt=2, is_correction=kind, is_low=0.5,
                    is_high=5.0 if kind == "masked" else 2.0)
    exp, metrics = make_experience(rows, o, torch.tensor([10.0, 0.0]), torch.tensor([True, True]), old, old, rollout)
    w, expected = IS_CORRECTIONS[kind](OLD, ROLLOUT, SEQ_IDX, 2, low=o.is_low, high=o.is_high)
    torch.testing.assert_close(exp.is_weights, w)
    for k in ("is_weight_mean", "is_clipped_frac", "is_masked_frac"):
        assert metrics[f"mismatch/{k}"] == pytest.approx(float(expected[k]))
    none, metrics = make_experience(rows, RLVROptions(algorithm="grpo", samples_per_prompt=2),
                                    torch.tensor([10.0, 0.0]), torch.tensor([True, True]), old, old, rollout)
    assert none.is_weights is None and "mismatch/is_weight_mean" not in metrics


def test_config_validation():
    base = ["rlvr.algorithm=grpo", "rlvr.samples_per_prompt=2"]
    assert load_config(RLVRConfig, "rlvr/tiny", base + ["rlvr.is_correction=sequence"]).rlvr.is_high == 2.0
    with pytest.raises(ValueError, match="rlvr.is_correction"):
        load_config(RLVRConfig, "rlvr/tiny", base + ["rlvr.is_correction=icepop"])
    with pytest.raises(ValueError, match="rlvr.is_low"):
        load_config(RLVRConfig, "rlvr/tiny", base + ["rlvr.is_correction=masked", "rlvr.is_high=0.9"])
