"""Packed SFT rows on the real megatron model: a document's logits do not depend on its row-mates.

``tests/data/test_packing.py`` checks the mask itself; this checks the model reads it with the meaning the
trainer gives it (True = masked), by comparing against each document run alone, both as a dense mask (the
context-parallel path) and as THD ``cu_seqlens`` (the default path, the one TE honours; RoPE restarts per
document there). The unmasked run of the same row is the control that shows the check can fail.
"""

import pytest
import torch

import foundation_helpers as fh


@pytest.mark.slow
def test_packed_row_logits_equal_each_document_alone(tmp_path):
    from megatron_tulu.models.presets import get_preset
    from megatron_tulu.testing import run_distributed

    preset = get_preset("tiny").with_(vocab_size=300)
    hf_dir = fh.make_hf_from_preset(tmp_path / "hf", preset, seed=5)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (7, 11, 5)]
    [(packed_err, unmasked_err, thd_err)] = run_distributed(fh.rank_packed_vs_separate, world_size=1,
                                                            args=(str(hf_dir), docs, 32), timeout_s=300)
    assert packed_err < 1e-4, packed_err
    assert thd_err < 1e-4, thd_err
    assert unmasked_err > 1e-2, unmasked_err  # without the mask later documents see earlier ones


def test_packed_seq_params_offsets_rows_and_rejects_bad_boundaries():
    import pytest

    from megatron_tulu.models.packed import packed_seq_params

    p = packed_seq_params([[0, 3, 8], [0, 8]], 8)
    assert p.qkv_format == "thd" and p.cu_seqlens_q.tolist() == [0, 3, 8, 16] and p.max_seqlen_q == 8
    assert p.cu_seqlens_q.dtype == torch.int32
    with pytest.raises(ValueError, match=r"packed row 1: cu_seqlens \[0, 5\] must rise strictly from 0 to seq_len=8"):
        packed_seq_params([[0, 8], [0, 5]], 8)


def test_dense_document_masks_never_take_the_te_spec(monkeypatch, caplog):
    """megatron gives TE's attention a dense mask with the ``causal`` mask type, for which TE ignores it: packed
    documents would attend to each other. Packed rows go as THD, except under context parallelism, where they keep
    a dense mask: then ``auto`` resolves to the local spec even where TE and a GPU are present (and says so), and
    an explicit ``te`` is refused naming the fields."""
    import logging

    import pytest

    from megatron_tulu.models import build

    monkeypatch.setattr(build, "have_transformer_engine", lambda: True)
    monkeypatch.setattr(build.platform, "has_gpu", lambda: True)
    assert build.resolve_impl("auto") == "te"
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        assert build.resolve_impl("auto", document_masks=True) == "local"
    assert "ignores" in caplog.text
    with pytest.raises(ValueError, match=r"model.impl='te' with train.packing=true and parallel.cp > 1"):
        build.resolve_impl("te", document_masks=True)
    assert build.resolve_impl("te") == "te"
