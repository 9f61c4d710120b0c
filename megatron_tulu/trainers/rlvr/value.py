"""The PPO value model: its shape (``rlvr.value_model`` / ``value_init_hf`` / the policy's) and its ``Trainer`` on the
policy's ranks, with a ``ScalarHead`` (the reward model's head object) on the last stage."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_tulu.trainers.fit import Trainer
from megatron_tulu.trainers.rlvr.config import RLVRConfig
from megatron_tulu.trainers.rlvr.tasks import ValueTask


def build_value_trainer(policy: Trainer, cfg: RLVRConfig) -> Trainer:
    """The PPO value model on the policy's ranks: its shape from ``rlvr.value_model`` / ``value_init_hf`` / the
    policy (:func:`value_model_shape`), its layers over the policy's pipeline stages (uneven first/last stages when
    they do not divide), its weights from ``value_init_hf``, else from the policy's initial weights when it has the
    policy's shape, else random; a ``scalar`` head (``ScalarHead``, zero unless the reward model has a score head). Checkpointed under ``checkpoints_value/`` and
    resumed at the policy's step by the ``Trainer`` code every model uses."""
    from megatron_tulu.trainers.model_setup import build_model_chunks, build_optimizer, trainer_pipeline_split

    o = cfg.rlvr
    reader, preset = value_model_shape(o, cfg.model, policy.preset, policy.task.vocab_size)
    try:
        split = trainer_pipeline_split(policy).fit(preset.num_layers)
    except ValueError as e:
        raise ValueError(f"value model {preset.name!r} (rlvr.value_model / rlvr.value_init_hf) on the policy's "
                         f"pipeline stages (parallel.pp / parallel.vpp): {e}") from None
    same_shape = not preset.shape_diff(policy.preset)  # the policy's tensors fit it
    if dist.get_rank() == 0:
        init = (f"from {o.value_init_hf}" if reader else "from the policy's initial weights" if same_shape
                else "RANDOM (no rlvr.value_init_hf; Tülu 3 starts it from a reward model)")
        print(f"[megatron-tulu] value model: {preset.name} ({preset.param_count() / 1e9:.3g}B params, "
              f"{preset.num_layers} layers over pp={split.pp} x vpp={split.vpp}"
              f"{'' if split.is_even else f', {split.first_layers}/{split.last_layers} on the first/last rank'}), "
              f"initialised {init}", file=sys.stderr, flush=True)

    def load_reward_model(model):
        if reader is None:
            return
        from megatron_tulu.checkpoint.model_io import load_hf_into_model

        load_hf_into_model(model, reader, preset, backbone_only=True)  # TP/PP-sharded like any HF load
        if model.post_process and "score.weight" in reader.weight_map:
            with torch.no_grad():
                model.output_layer.weight.copy_(reader.get("score.weight").reshape(1, -1))

    model_cfg = cfg.model
    if reader is not None or not same_shape:
        model_cfg = dataclasses.replace(model_cfg, init_hf=None, init_mcore=None)

    def build(value: Trainer):
        chunks = build_model_chunks(value, model_cfg, preset, customize=load_reward_model, split=split, head="scalar")
        return chunks, build_optimizer(value, chunks)

    value = Trainer(cfg, ValueTask(cfg), preset=preset)
    value.ckpt_root = Path(cfg.run_dir) / "checkpoints_value"
    value.setup_beside(policy, build)
    return value


def _check_hf_dir(path: str) -> str:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"rlvr.value_init_hf={path}: no config.json (expected an HF model dir: a reward "
                                "model or a causal LM)")
    return path


def value_model_shape(o, model_cfg, policy, tokenizer_vocab: int | None = None):
    """``(reader of rlvr.value_init_hf or None, value-model preset)``.

    The shape is ``rlvr.value_model`` (a preset name) when set, else that of ``value_init_hf`` when given, else
    the policy's; when both are set they must agree. ``value_init_hf`` is a reward model
    (``LlamaForSequenceClassification``, num_labels=1: backbone and ``score`` head) or a causal LM (backbone under
    a zero head). The value model reads the policy's token ids, so its vocab must be the policy's."""
    from megatron_tulu.checkpoint.hf_io import HFReader, preset_from_hf_config
    from megatron_tulu.trainers.model_setup import resolve_preset

    reader = preset = None
    if o.value_model:
        preset = resolve_preset(dataclasses.replace(model_cfg, preset=o.value_model, init_hf=None), tokenizer_vocab)
    path = o.value_init_hf
    if path:
        reader = HFReader(_check_hf_dir(path))
        ckpt = preset_from_hf_config(reader.config, name=Path(path).name)
        if preset is not None and (diff := ckpt.shape_diff(preset)):
            raise ValueError(f"rlvr.value_init_hf={path}: shape differs from rlvr.value_model={o.value_model!r} "
                             f"{diff} (checkpoint, preset)")
        preset = preset or ckpt
        if "score.weight" in reader.weight_map:
            score_shape = tuple(reader.get("score.weight").shape)
            if score_shape != (1, preset.hidden_size):
                raise ValueError(f"rlvr.value_init_hf={path}: score.weight has shape {score_shape}, "
                                 f"expected (1, {preset.hidden_size}) (num_labels=1)")
    preset = preset or policy
    if preset.vocab_size != policy.vocab_size:
        what = f"rlvr.value_init_hf={path}" if path and not o.value_model else f"rlvr.value_model={o.value_model!r}"
        raise ValueError(f"{what}: vocab_size {preset.vocab_size} != the policy's {policy.vocab_size} (the value "
                         "model reads the policy's token ids: it needs the policy's tokenizer)")
    return reader, preset
