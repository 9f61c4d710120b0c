"""DAPO soft overlong punishment (Yu et al. 2025, §3.4): hand-worked values at and around the boundaries, the config
(preset fraction of ``max_new_tokens``, explicit length, off), and how it reaches the advantages in make_experience."""

import pytest
import torch

from megatron_tulu.algorithms import overlong_penalty, shape_rewards
from megatron_tulu.config import load_config
from megatron_tulu.trainers.rlvr import RLVRConfig, RLVROptions
from megatron_tulu.trainers.rlvr.experience import (
    Experience,
    make_experience,
    response_rows,
    response_scores,
)


def test_hand_values_at_the_boundaries():
    # L_max = 20, L_cache = 4: free up to 16, ramp (16 - |y|) / 4 over (16, 20], -1 beyond 20
    lengths = torch.tensor([0, 15, 16, 17, 18, 19, 20, 21, 100])
    want = torch.tensor([0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, 20, 4), want)
    torch.testing.assert_close(overlong_penalty(lengths, 20, 4, factor=0.5), want * 0.5)
    # the paper's numbers: L_max 20480, L_cache 4096 -> 16384 free, 18432 halfway, 20480 = -1
    paper = overlong_penalty(torch.tensor([16384, 16385, 18432, 20480, 20481]), 20480, 4096)
    torch.testing.assert_close(paper, torch.tensor([0.0, -1 / 4096, -0.5, -1.0, -1.0]))
    assert overlong_penalty(lengths, 20, 0).abs().sum() == 0  # off
    torch.testing.assert_close(overlong_penalty(torch.tensor([0, 10, 20]), 20, 20), torch.tensor([0.0, -0.5, -1.0]))
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(lengths, 20, 21)
    with pytest.raises(ValueError, match=r"\[S\]"):
        overlong_penalty(lengths.view(3, 3), 20, 4)


def test_config_preset_fraction_explicit_length_and_validation():
    o = load_config(RLVRConfig, "rlvr/tiny", ["rlvr.algorithm=dapo", "rlvr.samples_per_prompt=2",
                                              "rlvr.max_new_tokens=20"]).rlvr
    assert o.overlong_buffer == 4 and o.overlong_penalty_factor == 1.0  # 0.2 x L_max, the paper's 4096 / 20480
    assert RLVROptions(algorithm="grpo").overlong_buffer == 0  # off outside dapo
    assert RLVROptions(algorithm="grpo", overlong_buffer_len=8).overlong_buffer == 8  # settable alone
    assert RLVROptions(algorithm="dapo", overlong_buffer_len=0).overlong_buffer == 0
    with pytest.raises(ValueError, match=r"rlvr.overlong_buffer_len must be in \[0, rlvr.max_new_tokens=64\]"):
        load_config(RLVRConfig, "rlvr/tiny", ["rlvr.overlong_buffer_len=65"])
    with pytest.raises(ValueError, match="rlvr.overlong_penalty_factor"):
        load_config(RLVRConfig, "rlvr/tiny", ["rlvr.overlong_penalty_factor=-1"])


def test_penalty_is_added_after_the_non_eos_replacement():
    o = RLVROptions(algorithm="grpo", samples_per_prompt=2, max_new_tokens=8, overlong_buffer_len=4,
                    non_eos_penalty=-10.0)
    scores, eos, lengths = torch.tensor([10.0, 10.0, 0.0, 0.0]), torch.tensor([True, True, True, False]), \
        torch.tensor([4, 6, 2, 8])
    final, overlong = response_scores(o, scores, eos, lengths)
    torch.testing.assert_close(overlong, torch.tensor([0.0, -0.5, 0.0, -1.0]))
    torch.testing.assert_close(final, torch.tensor([10.0, 9.5, 0.0, -11.0]))
    # PPO's per-token rewards carry it on the last token too
    seq_idx = torch.tensor([0, 0, 1])
    tok, m = shape_rewards(torch.tensor([10.0, 0.0]), torch.zeros(3), torch.zeros(3), seq_idx, eos_found=torch.tensor(
        [True, False]), length_penalty=torch.tensor([-0.25, -1.0]))
    torch.testing.assert_close(tok, torch.tensor([0.0, 9.75, -11.0]))
    assert float(m["score_mean"]) == pytest.approx((9.75 - 11.0) / 2)


def test_make_experience_advantages_see_the_penalty():
    # one group of two correct responses, lengths 2 and 4 with L_max 4, L_cache 2: rewards 10 and 9 -> the
    # shorter one has the higher advantage; without the buffer the group has equal rewards and zero advantages
    prompts, responses = [[1, 2], [1, 2]], [[3, 4], [3, 4, 5, 6]]
    ids, targets, mask = response_rows(prompts, responses, 0)
    rows = Experience.rows(ids, targets, mask)
    logp = torch.zeros(ids.shape)
    args = (torch.tensor([10.0, 10.0]), torch.tensor([True, True]), logp, logp, logp)
    o = RLVROptions(algorithm="dapo", samples_per_prompt=2, max_new_tokens=4, overlong_buffer_len=2)
    exp, metrics = make_experience(rows, o, *args)
    adv = [float(exp.advantages[exp.seq_idx == i][0]) for i in range(2)]
    assert adv[0] > 0 > adv[1] and adv[0] == pytest.approx(-adv[1])
    assert metrics["reward/overlong_penalty_mean"] == pytest.approx(-0.5)
    assert metrics["reward/overlong_frac"] == pytest.approx(0.5)
    off, metrics = make_experience(rows, RLVROptions(algorithm="dapo", samples_per_prompt=2, max_new_tokens=4,
                                                     overlong_buffer_len=0), *args)
    assert off.advantages.abs().sum() == 0 and "reward/overlong_penalty_mean" not in metrics
