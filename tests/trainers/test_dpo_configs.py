"""The DPO configs carry Tülu 3's DPO hyper-parameters and valid layouts; bad DPO settings fail at construction
with an error naming the field and the choices (no process group, no model needed)."""

from __future__ import annotations

import pytest

from megatron_tulu.config import load_config
from megatron_tulu.losses.dpo import DPO_LOSSES
from megatron_tulu.models.presets import get_preset
from megatron_tulu.trainers.dpo import DPOConfig, DPOTask

LAYOUTS = {  # size: (preset, lr, tp, pp, GPUs the layout is written for)
    "8b": ("llama3.1-8b", 5e-7, 1, 1, 8),
    "70b": ("llama3.1-70b", 2e-7, 8, 1, 64),
    "405b": ("llama3.1-405b", 2e-7, 8, 8, 256),
}


@pytest.mark.parametrize("size", sorted(LAYOUTS))
def test_tulu3_dpo_hyperparameters(size):
    preset, lr, tp, pp, gpus = LAYOUTS[size]
    cfg = load_config(DPOConfig, f"dpo/{size}")
    assert cfg.model.preset == preset and get_preset(preset)
    assert cfg.optim.lr == lr
    assert cfg.optim.warmup_ratio == 0.1 and cfg.optim.min_lr_ratio == 0.0 and cfg.optim.weight_decay == 0.0
    assert cfg.train.global_batch_size == 128 and cfg.train.epochs == 1.0 and cfg.train.max_steps == 0
    assert cfg.train.seq_length == 2048
    assert (cfg.dpo.loss_type, cfg.dpo.beta, cfg.dpo.label_smoothing) == ("dpo_norm", 5.0, 0.0)
    assert cfg.dpo.ref_mode == "cached"
    assert (cfg.parallel.tp, cfg.parallel.pp) == (tp, pp)
    assert cfg.model.dtype == "bf16" and cfg.model.init_hf
    assert cfg.data.tokenizer == cfg.model.init_hf
    # the global batch must fit a whole number of micro-batches on every DP rank of the intended layout
    dp = gpus // (tp * pp)
    assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * dp) == 0
    DPOTask(cfg)  # the layout/options pass the task's own checks (PP > 1 -> concatenated forward)
    if pp > 1:
        assert cfg.dpo.forward_mode == "concatenated"


def test_tiny_config_defaults():
    cfg = load_config(DPOConfig, "dpo/tiny")
    assert cfg.dpo.loss_type == "dpo_norm" and cfg.dpo.beta == 5.0
    assert cfg.data.eval_mixture, "dpo/tiny measures held-out preference accuracy"


@pytest.mark.parametrize("opts", [["dpo.forward_mode=separate"], ["dpo.forward_mode=concatenated", "dpo.ref_mode=on_the_fly"]])
def test_pipeline_parallel_needs_concatenated_cached(opts):
    with pytest.raises(ValueError, match=r"parallel\.pp > 1.*forward_mode=concatenated"):
        load_config(DPOConfig, "dpo/tiny", ["parallel.pp=2", *opts])


def test_unknown_loss_type_names_choices():
    cfg = load_config(DPOConfig, "dpo/tiny")
    cfg.dpo.loss_type = "kto"  # set in code: DPOTask checks it too
    with pytest.raises(ValueError) as e:
        DPOTask(cfg)
    msg = str(e.value)
    assert "'kto'" in msg and "loss_type" in msg
    assert all(name in msg for name in DPO_LOSSES), msg


@pytest.mark.parametrize("field,value", [("ref_mode", "lazy"), ("forward_mode", "interleaved")])
def test_unknown_modes_name_field(field, value):
    with pytest.raises(ValueError, match=rf"dpo\.{field}.*{value}"):
        load_config(DPOConfig, "dpo/tiny", [f"dpo.{field}={value}"])


def test_bad_override_exits_2(capsys):
    from megatron_tulu.cli import stage_main

    assert stage_main("launch.dpo", DPOConfig, DPOTask, "dpo/tiny", argv=["dpo.no_such_option=1"]) == 2
    assert "no_such_option" in capsys.readouterr().err


def test_reference_cache_fingerprint_sees_changed_weights_anywhere(tmp_path):
    """The reference-logp cache key must change when any tensor of the initial checkpoint changes, also in the
    middle of a large file (the fingerprint samples windows instead of reading 810 GB at 405B)."""
    from megatron_tulu.trainers.dpo import weights_fingerprint

    ckpt = tmp_path / "hf"
    ckpt.mkdir()
    blob = bytearray(range(256)) * (40 * 4096)  # 40 MiB "model.safetensors"
    (ckpt / "model.safetensors").write_bytes(blob)
    (ckpt / "config.json").write_text('{"hidden_size": 8}')
    base = weights_fingerprint(str(ckpt), seed=0)
    assert weights_fingerprint(str(ckpt), seed=0) == base  # deterministic
    for off in (0, 20 << 20, len(blob) - 1):  # start, middle, end of the weights
        changed = bytearray(blob)
        changed[off:off + 70_000] = bytes(70_000)  # a tensor's worth of new values
        (ckpt / "model.safetensors").write_bytes(changed)
        assert weights_fingerprint(str(ckpt), seed=0) != base, off
    (ckpt / "model.safetensors").write_bytes(blob)
    assert weights_fingerprint(str(ckpt), seed=0) == base
    # a random init is fixed by seed and model shape
    assert weights_fingerprint(None, 0, "tiny") != weights_fingerprint(None, 0, "llama3.1-8b")
    assert weights_fingerprint(None, 0, "tiny") != weights_fingerprint(None, 1, "tiny")
