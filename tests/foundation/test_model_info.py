"""``python -m megatron_tulu.models.info``: exact parameter counts (meta device) and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tulu.models.info import main, meta_param_count
from megatron_tulu.models.presets import get_preset

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = {"llama3.1-8b": 8_030_261_248, "llama3.1-70b": 70_553_706_496, "llama3.1-405b": 405_853_388_800}


def _info(name: str) -> dict:
    # its own process: the megatron count starts a one-process megatron runtime (and the CPU shim)
    r = subprocess.run([sys.executable, "-m", "megatron_tulu.models.info", name], cwd=ROOT, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_info_params_equal_transformers_published_counts(name):
    out = _info(name)
    assert out["params"] == PUBLISHED[name]  # megatron-core GPTModel built on meta
    assert out["params_hf"] == PUBLISHED[name]  # transformers' LlamaForCausalLM built on meta
    assert out["params_formula"] == PUBLISHED[name]
    assert get_preset(name).param_count() == PUBLISHED[name]
    assert out["num_query_groups"] == 8 and out["vocab_size"] == 128256 and out["tie_embeddings"] is False
    assert out["norm_eps"] == 1e-5 and out["rope_theta"] == 500000.0 and out["rope_scaling"] is True
    assert out["head_dim"] == 128


@pytest.mark.slow
def test_info_tiny_and_formula_agree_for_tied_and_gqa_variants():
    out = _info("tiny")
    tiny = get_preset("tiny")
    assert out["params"] == out["params_hf"] == tiny.param_count() and 0 < out["params"] < 20_000_000
    assert out["num_layers"] == tiny.num_layers and out["hidden_size"] == tiny.hidden_size
    for variant in (tiny.with_(tie_embeddings=True), tiny.with_(num_query_groups=4), tiny.with_(vocab_size=301)):
        assert meta_param_count(variant) == variant.param_count(), variant


def test_info_unknown_preset_exits_2_naming_it_and_the_known_ones():
    r = subprocess.run([sys.executable, "-m", "megatron_tulu.models.info", "llama9-1t"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r
    assert "llama9-1t" in r.stderr and "llama3.1-8b" in r.stderr and "tiny" in r.stderr, r.stderr
    assert r.stdout == ""


def test_info_usage_error_exits_2(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err
