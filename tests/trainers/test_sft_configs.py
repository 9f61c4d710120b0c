"""The SFT configs carry the Tülu 3 paper's hyper-parameters; overrides work; bad overrides fail with exit 2."""

from __future__ import annotations

import pytest

from megatron_tulu.config import load_config
from megatron_tulu.models.presets import get_preset
from megatron_tulu.trainers.sft import SFTConfig


@pytest.mark.parametrize("size,preset,lr", [("8b", "llama3.1-8b", 5e-6), ("70b", "llama3.1-70b", 2e-6),
                                            ("405b", "llama3.1-405b", 2e-6)])
def test_paper_hyperparameters(size, preset, lr):
    cfg = load_config(SFTConfig, f"sft/{size}")
    assert cfg.model.preset == preset and get_preset(preset)  # the preset exists
    assert cfg.optim.lr == lr
    assert cfg.train.epochs == 2.0 and cfg.train.max_steps == 0
    assert cfg.train.global_batch_size == 128
    assert cfg.train.seq_length == 4096
    assert cfg.train.loss_reduction == "sum" and cfg.train.packing
    assert cfg.optim.warmup_ratio == 0.03 and cfg.optim.min_lr_ratio == 0.0
    assert cfg.optim.weight_decay == 0.0 and (cfg.optim.beta1, cfg.optim.beta2) == (0.9, 0.999)
    assert cfg.model.dtype == "bf16" and cfg.model.fp8 is None
    assert cfg.data.tokenizer == cfg.model.init_hf  # ${model.init_hf} interpolation resolved
    # the layout must be able to hold the global batch on a whole number of micro-batches
    assert cfg.train.global_batch_size % cfg.train.micro_batch_size == 0


def test_tiny_and_pretrain_configs_load():
    sft = load_config(SFTConfig, "sft/tiny")
    pre = load_config(SFTConfig, "pretrain/tiny")
    assert sft.data_kind == "sft" and pre.data_kind == "text"
    assert sft.data.tokenizer == "runs/data/tokenizer"


def test_override_changes_field():
    cfg = load_config(SFTConfig, "sft/8b", ["optim.lr=1e-5", "parallel.tp=4", "data.root=/x", "train.max_steps=7"])
    assert cfg.optim.lr == 1e-5 and cfg.parallel.tp == 4 and cfg.train.max_steps == 7
    assert cfg.data.mixture["datasets"][0]["path"] == "/x/tulu-3-sft-mixture.jsonl"
    # the README's shorthand: model=NAME picks the preset
    assert load_config(SFTConfig, "sft/tiny", ["model=llama3.1-70b"]).model.preset == "llama3.1-70b"


def test_unknown_override_key_exits_2(capsys):
    from megatron_tulu.cli import stage_main
    from megatron_tulu.trainers.sft import SFTTask

    code = stage_main("launch.sft", SFTConfig, SFTTask, "sft/tiny", argv=["train.no_such_field=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no_such_field" in err and "sft/tiny" in err, err


def test_bad_value_type_exits_2(capsys):
    from megatron_tulu.cli import stage_main
    from megatron_tulu.trainers.sft import SFTTask

    assert stage_main("launch.sft", SFTConfig, SFTTask, "sft/tiny", argv=["train.max_steps=lots"]) == 2
    assert "max_steps" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["sft", "dpo", "rlvr"])
@pytest.mark.parametrize("size", ["8b", "70b", "405b"])
def test_shipped_layout_builds(stage, size):
    """Every shipped config's TP and pipeline split fit its model (405B's 126 layers over PP=8 only split with the
    embedding and loss counted as layers), so a cluster job cannot fail at model build on its layout."""
    from megatron_tulu.models.build import ModelOptions, transformer_config
    from megatron_tulu.models.pipeline_split import PipelineSplit
    from megatron_tulu.trainers.dpo import DPOConfig
    from megatron_tulu.trainers.rlvr import RLVRConfig

    cfg = load_config({"sft": SFTConfig, "dpo": DPOConfig, "rlvr": RLVRConfig}[stage], f"{stage}/{size}")
    p = cfg.parallel
    split = PipelineSplit(pp=p.pp, vpp=p.vpp, account_embedding_loss=p.pp_account_embedding_loss)
    config = transformer_config(get_preset(cfg.model.preset), p.tp, split, ModelOptions(impl="local", dtype="bf16"))
    assert config.pipeline_model_parallel_size == p.pp
    if p.vpp > 1:  # the interleaved schedule needs >= pp micro-batches per step at the smallest DP (1)
        assert cfg.train.global_batch_size // cfg.train.micro_batch_size >= p.pp


@pytest.mark.parametrize("recompute, layers, expect", [
    ("full", 0, ("full", "uniform", 1)),  # every layer, one at a time
    ("full", 5, ("full", "block", 5)),  # the first 5 layers of each pipeline chunk (Megatron-Bridge's 8B recipe)
    ("selective", 0, ("selective", None, None)),
])
def test_recompute_options_reach_megatron(recompute, layers, expect):
    from megatron_tulu.models.build import ModelOptions, transformer_config

    opts = ModelOptions(impl="local", dtype="bf16", recompute=recompute, recompute_layers=layers)
    config = transformer_config(get_preset("llama3.1-8b").with_(num_layers=8), 1, 1, opts)
    assert (config.recompute_granularity, config.recompute_method, config.recompute_num_layers) == expect


def test_recompute_layers_without_full_recompute_fails_naming_the_field():
    with pytest.raises(ValueError, match="model.recompute_layers"):
        load_config(SFTConfig, "sft/tiny", ["model.recompute_layers=2"])
    with pytest.raises(ValueError, match="model.recompute_layers"):
        load_config(SFTConfig, "sft/tiny", ["model.recompute=full", "model.recompute_layers=-1"])
