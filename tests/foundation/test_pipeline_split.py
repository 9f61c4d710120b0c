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
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    preset = get_preset(name)
    split = PipelineSplit(pp=pp, vpp=vpp, account_embedding_loss=account)
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
