"""``mapping.mcore_to_hf_pieces``: HF tensors as pieces of the TP shards, written with one copy per byte.

The weight-sync sender writes these pieces straight into its buckets (``BucketSender.pack``), and
``mcore_to_hf`` materialises them, so both must produce exactly the HF tensors that the shards came from.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from megatron_tulu.checkpoint import mapping
from megatron_tulu.models.presets import get_preset
from megatron_tulu.rollout.weight_sync import BucketSender, metas_of

# GQA (4 KV groups of 2 heads each), a vocab that pads under TP, untied head
PRESET = get_preset("tiny").with_(num_layers=2, num_attention_heads=8, num_query_groups=4, vocab_size=509)


def _hf_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(mapping.expected_hf_shape(n, PRESET), generator=g)
            for _, glob in mapping.rank_param_names(PRESET, 0, 1) for n in mapping.hf_names_for(glob, PRESET)}


def _shards(hf, glob, tp):
    return [mapping.hf_to_mcore_shard(glob, hf.__getitem__, PRESET, r, tp) for r in range(tp)]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_pieces_cover_each_hf_tensor_once_and_rebuild_it_exactly(tp):
    hf = _hf_state()
    seen = set()
    for _, glob in mapping.rank_param_names(PRESET, 0, 1):
        for t in mapping.mcore_to_hf_pieces(glob, _shards(hf, glob, tp), PRESET):
            seen.add(t.name)
            assert t.shape == tuple(hf[t.name].shape) and t.dtype == hf[t.name].dtype
            cover = torch.zeros(t.shape)
            for view_shape, index, src in t.pieces:
                cover.view(view_shape)[index] += 1
            assert torch.equal(cover, torch.ones(t.shape)), f"{t.name}: pieces overlap or leave gaps (tp={tp})"
            assert torch.equal(t.materialize(), hf[t.name]), t.name
    assert seen == set(hf)
    for glob in ("output_layer.weight", "decoder.layers.1.self_attention.linear_qkv.weight"):
        merged = dict(mapping.mcore_to_hf(glob, _shards(hf, glob, tp), PRESET))
        assert all(torch.equal(merged[n], hf[n]) and merged[n].is_contiguous() for n in merged)


def test_write_into_copies_each_byte_once_and_refuses_a_wrong_destination():
    class Copies(TorchDispatchMode):
        bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.copy_.default:
                Copies.bytes += args[1].numel() * args[1].element_size()
            return func(*args, **(kwargs or {}))

    hf = _hf_state(1)
    glob = "decoder.layers.0.self_attention.linear_qkv.weight"
    pieces = mapping.mcore_to_hf_pieces(glob, _shards(hf, glob, 2), PRESET)
    dsts = [torch.empty(t.shape) for t in pieces]
    with Copies():
        for t, dst in zip(pieces, dsts):
            t.write_into(dst)
    assert Copies.bytes == sum(t.nbytes for t in pieces)  # q, k, v: one copy each, no concatenated temporary
    assert all(torch.equal(dst, hf[t.name]) for t, dst in zip(pieces, dsts))
    with pytest.raises(ValueError, match="q_proj.*does not take"):
        pieces[0].write_into(torch.empty(pieces[0].shape, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="contiguous=False"):
        pieces[0].write_into(torch.empty(pieces[0].shape[::-1]).t())
    assert torch.equal(mapping.as_tensor(pieces[1]), hf[pieces[1].name])


def test_sender_packs_pieces_into_the_same_bytes_as_merged_tensors():
    hf = _hf_state(2)
    params = [(glob, _shards(hf, glob, 2)) for _, glob in mapping.rank_param_names(PRESET, 0, 1)]
    merged = [item for glob, shards in params for item in mapping.mcore_to_hf(glob, shards, PRESET)]
    lazy = [(t.name, t) for glob, shards in params for t in mapping.mcore_to_hf_pieces(glob, shards, PRESET)]
    metas = metas_of(merged)
    bucket = 40_000  # several buckets, the embedding (509 x 128 fp32 = 260 KB) alone in its own
    a = [buf.clone() for _, buf in BucketSender(None, metas, bucket, torch.device("cpu"), 0.0).pack(merged)]
    b = [buf.clone() for _, buf in BucketSender(None, metas, bucket, torch.device("cpu"), 0.0).pack(lazy)]
    assert len(a) == len(b) > 3 and all(torch.equal(x, y) for x, y in zip(a, b))
