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
