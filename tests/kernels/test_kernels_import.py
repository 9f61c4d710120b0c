"""Our top-level ``kernels`` package must win over the PyPI package of the same name."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_is_ours():
    import kernels

    assert Path(kernels.__file__).resolve().parent == ROOT / "kernels"
    assert getattr(kernels, "MEGATRON_TULU_KERNELS", False) is True


def test_subpackages_export_the_public_api():
    from kernels.dpo_loss import dpo_loss_reference, fused_dpo_loss
    from kernels.fused_logprob import fused_linear_logprob, linear_logprob_reference

    for fn in (fused_linear_logprob, linear_logprob_reference, fused_dpo_loss, dpo_loss_reference):
        assert Path(fn.__code__.co_filename).resolve().is_relative_to(ROOT / "kernels")
