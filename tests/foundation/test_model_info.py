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


# The CLI's main() for every preset below, in ONE process of its own (the megatron count starts a one-process megatron
# runtime and the CPU shim); one process, not one per preset, pays the ~5 s of imports once. Each preset's stdout is
# captured and parsed as the CLI's would be. ``python -m`` itself is run by the unknown-preset test below and by
# tests/slurm/test_dockerfile.py (the image's CMD and HEALTHCHECK run ``models.info tiny``).
_MAINS = """
import contextlib, io, json, sys
from megatron_tulu.models.info import main
out = {}
for name in sys.argv[1:]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main([name])
    out[name] = json.loads(stdout.getvalue()) if rc == 0 else rc
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def infos() -> dict:
    r = subprocess.run([sys.executable, "-c", _MAINS, *PUBLISHED, "tiny"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_info_params_equal_transformers_published_counts(infos, name):
    out = infos[name]
    assert out["params"] == PUBLISHED[name]  # megatron-core GPTModel built on meta
    assert out["params_hf"] == PUBLISHED[name]  # transformers' LlamaForCausalLM built on meta
    assert out["params_formula"] == PUBLISHED[name]
    assert get_preset(name).param_count() == PUBLISHED[name]
    assert out["num_query_groups"] == 8 and out["vocab_size"] == 128256 and out["tie_embeddings"] is False
    assert out["norm_eps"] == 1e-5 and out["rope_theta"] == 500000.0 and out["rope_scaling"] is True
    assert out["head_dim"] == 128


@pytest.mark.slow
def test_info_tiny_and_formula_agree_for_tied_and_gqa_variants(infos):
    out = infos["tiny"]
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
