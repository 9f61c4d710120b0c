"""Bad input gets a clear error naming the field/key, and a failed conversion never leaves a partial output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from foundation_helpers import make_hf_llama, read_hf_tensors
from megatron_tulu.checkpoint.convert import main as convert
from megatron_tulu.checkpoint.hf_io import HFReader, atomic_dir, preset_from_hf_config
from megatron_tulu.models.build import ModelOptions, check_divisibility, transformer_config
from megatron_tulu.models.presets import get_preset


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    # heads 8, kv groups 2, 4 layers
    return make_hf_llama(tmp_path_factory.mktemp("hf") / "m", layers=4, heads=8, kv_heads=2)


def _copy_with(src: Path, dst: Path, tensors: dict) -> Path:
    dst.mkdir(parents=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def _no_leftovers(out: Path):
    assert not out.exists(), f"{out} exists after a failed conversion"
    assert not list(out.parent.glob(f".{out.name}.*")), list(out.parent.iterdir())


def test_unknown_preset_names_it_and_lists_known():
    with pytest.raises(ValueError, match=r"unknown model preset 'llama2-7b'.*llama3\.1-8b"):
        get_preset("llama2-7b")


@pytest.mark.parametrize("tp,pp,field", [
    (3, 1, "num_attention_heads"),  # tiny: 4 heads
    (4, 1, "num_query_groups"),     # 4 heads divide, 2 KV groups do not
    (1, 3, "num_layers"),           # 4 layers
])
def test_tp_pp_that_do_not_divide_name_the_field(tp, pp, field):
    tiny = get_preset("tiny")
    with pytest.raises(ValueError, match=field):
        check_divisibility(tiny, tp, pp)
    with pytest.raises(ValueError, match=field):
        transformer_config(tiny, tp, pp, ModelOptions(impl="local", dtype="fp32"))


@pytest.mark.parametrize("tp,pp,field", [(3, 1, "num_attention_heads"), (4, 1, "num_query_groups"), (1, 3, "num_layers")])
def test_convert_cli_refuses_layout_naming_the_field(hf_dir, tmp_path, capsys, tp, pp, field):
    out = tmp_path / "out"
    assert convert(["hf-to-mcore", "--hf", str(hf_dir), "--out", str(out), "--tp", str(tp), "--pp", str(pp)]) == 2
    assert field in capsys.readouterr().err
    _no_leftovers(out)


def test_missing_safetensors_key_is_named_and_nothing_is_written(hf_dir, tmp_path, capsys):
    tensors = read_hf_tensors(hf_dir)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    bad = _copy_with(hf_dir, tmp_path / "bad", tensors)
    out = tmp_path / "out"
    assert convert(["hf-to-mcore", "--hf", str(bad), "--out", str(out), "--tp", "2", "--pp", "2"]) == 2
    assert "model.layers.1.mlp.up_proj.weight" in capsys.readouterr().err
    _no_leftovers(out)


def test_unexpected_safetensors_key_is_named(hf_dir, tmp_path, capsys):
    tensors = read_hf_tensors(hf_dir)
    tensors["model.layers.9.self_attn.q_proj.weight"] = torch.zeros(2, 2)
    bad = _copy_with(hf_dir, tmp_path / "bad", tensors)
    assert convert(["hf-to-mcore", "--hf", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "model.layers.9.self_attn.q_proj.weight" in capsys.readouterr().err


def test_wrong_shape_is_named_and_an_existing_output_survives_the_failure(hf_dir, tmp_path, capsys):
    tensors = read_hf_tensors(hf_dir)
    k = "model.layers.3.self_attn.k_proj.weight"  # last PP stage: the failure happens mid-write
    tensors[k] = tensors[k][:-1].clone()
    bad = _copy_with(hf_dir, tmp_path / "bad", tensors)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous good checkpoint")
    assert convert(["hf-to-mcore", "--hf", str(bad), "--out", str(out), "--tp", "2", "--pp", "2"]) == 2
    err = capsys.readouterr().err
    assert k in err and "shape" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "previous good checkpoint"
    assert not list(tmp_path.glob(".out.*"))


def test_mcore_to_hf_with_missing_rank_tensor_names_it_and_writes_nothing(hf_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    ckpt = tmp_path / "mcore"
    assert convert(["hf-to-mcore", "--hf", str(hf_dir), "--out", str(ckpt), "--tp", "2", "--pp", "2"]) == 0
    f = ckpt / "mp_rank_01_001" / "model.safetensors"
    state = load_file(str(f))
    del state["decoder.layers.1.mlp.linear_fc2.weight"]
    save_file(state, str(f))
    out = tmp_path / "back"
    assert convert(["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "decoder.layers.1.mlp.linear_fc2.weight" in err and "mp_rank_01_001" in err, err
    _no_leftovers(out)


def test_mcore_to_hf_on_a_non_checkpoint_dir_names_the_file(tmp_path, capsys):
    assert convert(["mcore-to-hf", "--ckpt", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "megatron_tulu_ckpt.json" in capsys.readouterr().err


def test_hf_dir_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        HFReader(tmp_path)


@pytest.mark.parametrize("patch,field", [
    ({"attention_bias": True}, "attention_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0}}, "low_freq_factor"),
    ({"model_type": "mistral"}, "model_type"),
    ({"head_dim": 7}, "head_dim"),
])
def test_unsupported_hf_config_names_the_field(hf_dir, patch, field):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.update(patch)
    with pytest.raises(ValueError, match=field):
        preset_from_hf_config(cfg)


def test_missing_hf_config_field_is_named(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    del cfg["intermediate_size"]
    with pytest.raises(ValueError, match="intermediate_size"):
        preset_from_hf_config(cfg)


def test_atomic_dir_leaves_nothing_on_failure_and_renames_on_success(tmp_path):
    final = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("midway")
    _no_leftovers(final)
    with atomic_dir(final) as tmp:
        (tmp / "whole.bin").write_bytes(b"y")
    assert (final / "whole.bin").read_bytes() == b"y"
    assert not list(tmp_path.glob(".ckpt.*"))
