"""``models.pipeline_split`` against megatron-core's own layer placement (plain, interleaved, embedding and loss
counted as layers), and the errors for splits that do not divide. No processes: megatron's placement functions
take the pipeline rank as an argument."""

from __future__ import annotations

import pytest

from megatron_tulu.models.build import ModelOptions, check_divisibility, transformer_config
from megatron_tulu.models.pipeline_split import PipelineSplit
from megatron_tulu.models.presets import get_preset

CASES = [  # (preset, pp, vpp, account_embedding_loss)
    ("tiny", 2, 1, False), ("tiny", 2, 2, False), ("tiny", 4, 1, False), ("tiny", 2, 1, True),
    ("llama3.1-8b", 4, 2, False), ("llama3.1-8b", 2, 4, False), ("llama3.1-8b", 2, 1, True),
    ("llama3.1-70b", 4, 5, False), ("llama3.1-70b", 5, 2, False), ("llama3.1-70b", 2, 1, True),
    ("llama3.1-405b", 14, 1, False), ("llama3.1-405b", 8, 1, True), ("llama3.1-405b", 8, 8, True),
    ("llama3.1-405b", 4, 2, True),
]


@pytest.mark.parametrize("name,pp,vpp,account", CASES)
def test_layers_match_megatron(name, pp, vpp, account):
    _check_against_megatron(get_preset(name), PipelineSplit(pp=pp, vpp=vpp, account_embedding_loss=account))


# A model placed on another model's pipeline ranks (PPO value model): PipelineSplit.fit's uneven first/last sizes.
UNEVEN = [  # (preset, num_layers or None, policy split, expected layers per pipeline rank)
    ("llama3.1-8b", None, PipelineSplit(pp=14), [4] + [2] * 12 + [4]),  # 8B value model beside the 405B policy
    ("llama3.1-8b", None, PipelineSplit(pp=5), [4, 7, 7, 7, 7]),  # ... beside the 70B policy (TP8 x PP5)
    ("llama3.1-8b", None, PipelineSplit(pp=8, account_embedding_loss=True), [4] * 8),  # even: no accounting needed
    ("tiny", 3, PipelineSplit(pp=2), [1, 2]),
    ("tiny", 6, PipelineSplit(pp=2, vpp=2), [2, 4]),
]


@pytest.mark.parametrize("name,layers,policy,per_rank", UNEVEN)
def test_fitted_uneven_splits_match_megatron(name, layers, policy, per_rank):
    preset = get_preset(name) if layers is None else get_preset(name).with_(num_layers=layers)
    split = policy.fit(preset.num_layers)
    assert (split.pp, split.vpp) == (policy.pp, policy.vpp)
    assert split.rank_layer_counts(preset.num_layers) == per_rank
    _check_against_megatron(preset, split)


def test_fit_keeps_a_split_that_divides_and_refuses_impossible_ones():
    assert PipelineSplit(pp=4, vpp=2).fit(32) == PipelineSplit(pp=4, vpp=2)
    with pytest.raises(ValueError, match="3 layers cannot be split over pp=4"):
        PipelineSplit(pp=4).fit(3)
    with pytest.raises(ValueError, match="first/last rank the rest does not split evenly"):
        PipelineSplit(pp=4, first_layers=1, last_layers=1).validate(5)
    with pytest.raises(ValueError, match="positive multiples of vpp=2"):
        PipelineSplit(pp=2, vpp=2, first_layers=3).check_sizes()


def _check_against_megatron(preset, split):
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    pp, vpp = split.pp, split.vpp
    tp = 8 if preset.num_query_groups % 8 == 0 else 1
    config = transformer_config(preset, tp, split, ModelOptions(impl="local", dtype="fp32"))
    assert PipelineSplit.from_model_config(config) == split
    seen = []
    for pp_rank, vp in split.chunks():
        mine = split.layers(preset.num_layers, pp_rank, vp)
        vp_arg = vp if vpp > 1 else None
        offset = get_transformer_layer_offset(config, vp_stage=vp_arg, pp_rank=pp_rank)
        count = get_num_layers_to_build(config, vp_stage=vp_arg, pp_rank=pp_rank)
        assert (mine.start, len(mine)) == (offset, count), (pp_rank, vp, mine, offset, count)
        seen.extend(mine)
    # model order visits every layer exactly once, ascending: the HF export and weight-sync order
    assert seen == list(range(preset.num_layers))
    firsts = [c for c in split.chunks() if split.has_embedding(*c)]
    lasts = [c for c in split.chunks() if split.has_head(*c)]
    assert firsts == [(0, 0)] and lasts == [(pp - 1, vpp - 1)]


def test_interleaved_order_is_round_robin_over_ranks():
    split = PipelineSplit(pp=2, vpp=2)
    assert list(split.chunks()) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [list(split.layers(8, r, v)) for r, v in split.chunks()] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_405b_first_and_last_rank_hold_one_layer_fewer():
    split = PipelineSplit(pp=8, account_embedding_loss=True)
    sizes = [len(split.layers(126, r)) for r in range(8)]
    assert sizes == [15] + [16] * 6 + [15]


@pytest.mark.parametrize("tp,split,needle", [
    (1, PipelineSplit(pp=8), "8 model chunks do not divide model.num_layers=126 (preset 'llama3.1-405b'); "
                             "parallel.pp_account_embedding_loss=true would split it evenly"),
    (1, PipelineSplit(pp=8, vpp=3, account_embedding_loss=True), "pp=8 x vpp=3 = 24 model chunks do not divide "
                                                                 "model.num_layers=126 + 2 (embedding and loss)"),
    (1, PipelineSplit(pp=1, vpp=2), "parallel.vpp=2 needs parallel.pp > 1"),
    (1, PipelineSplit(pp=1, account_embedding_loss=True), "pp_account_embedding_loss needs parallel.pp > 1"),
])
def test_bad_splits_name_the_fields(tp, split, needle):
    with pytest.raises(ValueError) as e:
        check_divisibility(get_preset("llama3.1-405b"), tp, split)
    assert needle in str(e.value)
