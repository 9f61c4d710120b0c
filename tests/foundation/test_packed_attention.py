"""Packed SFT rows on the real megatron model: a document's logits do not depend on its row-mates.

``tests/data/test_packing.py`` checks the mask itself; this checks the model reads it with the meaning the
trainer gives it (True = masked) and that per-document position ids restart, by comparing against each
document run alone. The unmasked run of the same row is the control that shows the check can fail.
"""

import torch

import foundation_helpers as fh


def test_packed_row_logits_equal_each_document_alone(tmp_path):
    from megatron_tulu.models.presets import get_preset
    from megatron_tulu.testing import run_distributed

    preset = get_preset("tiny").with_(vocab_size=300)
    hf_dir = fh.make_hf_from_preset(tmp_path / "hf", preset, seed=5)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (7, 11, 5)]
    [(packed_err, unmasked_err)] = run_distributed(fh.rank_packed_vs_separate, world_size=1,
                                                   args=(str(hf_dir), docs, 32), timeout_s=300)
    assert packed_err < 1e-4, packed_err
    assert unmasked_err > 1e-2, unmasked_err  # without the mask later documents see earlier ones


def test_packed_rows_never_take_the_te_spec(monkeypatch, caplog):
    """megatron gives TE's attention the dense mask with the ``causal`` mask type, for which TE ignores it: packed
    documents would attend to each other. With document masks ``auto`` resolves to the local spec even where TE
    and a GPU are present (and says so), and an explicit ``te`` is refused naming both fields."""
    import logging

    import pytest

    from megatron_tulu.models import build

    monkeypatch.setattr(build, "have_transformer_engine", lambda: True)
    monkeypatch.setattr(build.platform, "has_gpu", lambda: True)
    assert build.resolve_impl("auto") == "te"
    with caplog.at_level(logging.WARNING, logger=build.__name__):
        assert build.resolve_impl("auto", document_masks=True) == "local"
    assert "ignores" in caplog.text
    with pytest.raises(ValueError, match=r"model.impl='te' with train.packing=true"):
        build.resolve_impl("te", document_masks=True)
    assert build.resolve_impl("te") == "te"
