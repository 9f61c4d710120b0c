"""Released Tülu 3 checkpoints: Llama 3.1 shapes with ``vocab_size`` 128264 (``<pad>`` at 128256). A named preset
initialised from one takes the checkpoint's vocabulary; any other shape difference is refused naming the fields;
conversion round-trips such a padded vocabulary bit-exactly (a small model with 256 + 8 rows stands in for it)."""

from __future__ import annotations

import json

import pytest
import torch

from foundation_helpers import make_hf_llama, read_hf_tensors
from megatron_tulu.checkpoint.hf_io import hf_config_from_preset
from megatron_tulu.models.presets import get_preset
from megatron_tulu.trainers.config import ModelConfig
from megatron_tulu.trainers.model_setup import resolve_preset

TULU3_VOCAB = 128264


def _config_dir(tmp_path, preset_name: str, **changes):
    """A checkpoint directory holding only the config.json of a released model (the preset's shape + ``changes``)."""
    d = tmp_path / preset_name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**hf_config_from_preset(get_preset(preset_name)), **changes}))
    return str(d)


@pytest.mark.parametrize("name", ["llama3.1-8b", "llama3.1-70b", "llama3.1-405b"])
def test_named_presets_take_the_released_tulu3_vocabulary(tmp_path, name):
    hf = _config_dir(tmp_path, name, vocab_size=TULU3_VOCAB)
    preset = resolve_preset(ModelConfig(preset=name, init_hf=hf), tokenizer_vocab=128257)  # + <pad>
    assert preset.vocab_size == TULU3_VOCAB and preset.hidden_size == get_preset(name).hidden_size
    assert resolve_preset(ModelConfig(preset=name)).vocab_size == 128256  # without a checkpoint: Llama 3.1's


def test_a_checkpoint_of_another_shape_is_refused_naming_the_fields(tmp_path):
    hf = _config_dir(tmp_path, "llama3.1-70b", vocab_size=TULU3_VOCAB)
    with pytest.raises(ValueError, match=r"shape differs from model.preset='llama3.1-8b'.*hidden_size.*\(4096, 8192\)"):
        resolve_preset(ModelConfig(preset="llama3.1-8b", init_hf=hf))


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_a_padded_vocabulary_round_trips_through_megatron_bit_exactly(tmp_path, tp, pp):
    from megatron_tulu.checkpoint.convert import main

    src = make_hf_llama(tmp_path / "hf", vocab=256 + 8, seed=3)  # a tokenizer of 257 ids, rows rounded up to 8
    assert main(["hf-to-mcore", "--hf", str(src), "--out", str(tmp_path / "mcore"), "--tp", str(tp), "--pp", str(pp)]) == 0
    assert main(["mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(tmp_path / "back")]) == 0
    want, got = read_hf_tensors(src), read_hf_tensors(tmp_path / "back")
    assert set(got) == set(want) and got["model.embed_tokens.weight"].shape[0] == 264
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((tmp_path / "back" / "config.json").read_text())["vocab_size"] == 264


def test_the_llama31_release_layout_converts(tmp_path):
    """As meta-llama/Llama-3.1-8B is published: sharded safetensors + index, rope_type llama3, generation_config.json
    and an `original/` folder of Meta's own format (ignored), converted and back bit-exactly."""
    from megatron_tulu.checkpoint.convert import main
    from megatron_tulu.checkpoint.hf_io import write_hf_dir

    src = make_hf_llama(tmp_path / "single", vocab=256 + 8, seed=4)
    config = json.loads((src / "config.json").read_text())
    rope = config.pop("rope_parameters")  # this transformers writes rope_parameters; the release has the older form
    config.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope)
    assert config["rope_scaling"]["rope_type"] == "llama3"
    want = read_hf_tensors(src)
    release = write_hf_dir(tmp_path / "Llama-3.1-8B", config, iter(want.items()), shard_bytes=60_000)
    (release / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": 128001,
                                                                 "do_sample": True, "temperature": 0.6, "top_p": 0.9}))
    original = release / "original"
    original.mkdir()
    torch.save({"tok_embeddings.weight": torch.zeros(2, 2)}, original / "consolidated.00.pth")
    (original / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2}))
    (original / "tokenizer.model").write_bytes(b"not read")
    assert len(set(json.loads((release / "model.safetensors.index.json").read_text())["weight_map"].values())) > 2
    assert main(["hf-to-mcore", "--hf", str(release), "--out", str(tmp_path / "mcore"), "--tp", "2", "--pp", "2"]) == 0
    assert main(["mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(tmp_path / "back")]) == 0
    got = read_hf_tensors(tmp_path / "back")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((tmp_path / "back" / "generation_config.json").read_text())["eos_token_id"] == 128001
