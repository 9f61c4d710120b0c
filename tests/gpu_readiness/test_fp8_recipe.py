"""``model.fp8`` builds a TransformerConfig with a current FP8 scaling recipe, not megatron-core's defaults.

megatron-core 0.16.1's TransformerConfig defaults are delayed scaling with an amax history of 1 and
``most_recent``: each step scales by the previous step's amax alone, the setting current practice moved away from
(Megatron-LM's Llama 3 H100 FP8 example uses history 1024 with ``max``; Megatron-Bridge's Llama 3 8B H100 FP8
config defaults to per-tensor current scaling, the recipe chosen here). The config is built on CPU with
``has_gpu`` faked (``transformer_config`` refuses FP8 without a GPU; TE is only needed once layers are built).
"""

from __future__ import annotations

import pytest

from megatron_tulu import platform
from megatron_tulu.models.build import ModelOptions, transformer_config
from megatron_tulu.models.presets import get_preset


@pytest.mark.parametrize("fmt", ["hybrid", "e4m3"])
def test_fp8_config_uses_current_scaling(monkeypatch, fmt):
    monkeypatch.setattr(platform, "has_gpu", lambda: True)
    preset = get_preset("llama3.1-8b").with_(num_layers=2)
    config = transformer_config(preset, 1, 1, ModelOptions(impl="te", dtype="bf16", fp8=fmt), impl="te")
    assert config.fp8 == fmt
    assert config.fp8_recipe == "tensorwise", (
        f"fp8 recipe {config.fp8_recipe!r} with amax history {config.fp8_amax_history_len} / "
        f"{config.fp8_amax_compute_algo!r} (megatron-core's defaults), expected per-tensor current scaling")


def test_no_fp8_leaves_megatron_defaults_alone():
    config = transformer_config(get_preset("llama3.1-8b").with_(num_layers=2), 1, 1,
                                ModelOptions(impl="local", dtype="fp32"))
    assert config.fp8 is None


def test_fp8_config_kwargs_names_bad_formats():
    from megatron_tulu.models.build import fp8_config_kwargs

    assert fp8_config_kwargs(None) == {}
    assert fp8_config_kwargs("hybrid") == {"fp8": "hybrid", "fp8_recipe": "tensorwise"}
    with pytest.raises(ValueError, match="hybrid"):
        fp8_config_kwargs("e5m2")
