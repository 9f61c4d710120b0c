"""Model + optimizer for training: preset -> GPTModel -> initial weights -> megatron DDP -> DistributedOptimizer."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from megatron_tulu.models.pipeline_split import PipelineSplit
from megatron_tulu.models.presets import LlamaPreset, get_preset
from megatron_tulu.trainers.config import ModelConfig

log = logging.getLogger(__name__)


def resolve_preset(cfg: ModelConfig, tokenizer_vocab: int | None = None) -> LlamaPreset:
    """The model shape: a named preset, or the shape of ``init_hf`` (``preset: hf``); vocab from the tokenizer
    for ``tiny`` (whose embedding is sized to the synthetic tokenizer) or when ``vocab_size`` is given."""
    if cfg.preset == "hf":
        if not cfg.init_hf:
            raise ValueError("model.preset=hf needs model.init_hf (the HF directory to take the shape from)")
        import json

        from megatron_tulu.checkpoint.hf_io import preset_from_hf_config

        return preset_from_hf_config(json.loads((Path(cfg.init_hf) / "config.json").read_text()), name="hf")
    preset = get_preset(cfg.preset)
    if cfg.vocab_size:
        preset = preset.with_(vocab_size=int(cfg.vocab_size))
    elif cfg.init_hf:
        preset = checkpoint_vocab(preset, cfg.init_hf)
    elif cfg.preset == "tiny" and tokenizer_vocab:
        preset = preset.with_(vocab_size=int(tokenizer_vocab))
    if tokenizer_vocab and tokenizer_vocab > preset.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer_vocab} ids but model vocab_size is {preset.vocab_size}")
    return preset


def checkpoint_vocab(preset: LlamaPreset, hf_dir: str) -> LlamaPreset:
    """``preset`` with the vocabulary of the HF checkpoint it is initialised from. The released Tülu 3 models keep
    Llama 3.1's shapes but have ``vocab_size`` 128264 (``<pad>`` added at 128256, rounded up to a multiple of 8);
    any other shape difference is an error naming the fields."""
    import json

    from megatron_tulu.checkpoint.hf_io import preset_from_hf_config

    config = Path(hf_dir) / "config.json"
    if not config.is_file():
        return preset  # load_hf_into_model names the missing file
    ckpt = preset_from_hf_config(json.loads(config.read_text()), name=preset.name)
    diff = {k: v for k, v in preset.shape_diff(ckpt).items() if k != "vocab_size"}  # the vocab is taken below
    if diff:
        raise ValueError(f"model.init_hf={hf_dir}: shape differs from model.preset={preset.name!r} {diff} "
                         "(preset, checkpoint); use model.preset=hf to take the checkpoint's shape")
    if ckpt.vocab_size != preset.vocab_size:
        log.info("model.init_hf=%s: vocab_size %d (preset %s has %d)", hf_dir, ckpt.vocab_size, preset.name,
                 preset.vocab_size)
        preset = preset.with_(vocab_size=ckpt.vocab_size)
    return preset


def trainer_pipeline_split(trainer) -> PipelineSplit:
    """The trainer's layer split over pipeline ranks and virtual stages (``parallel.pp/vpp/pp_account_embedding_loss``)."""
    return PipelineSplit(pp=trainer.dims.pp, vpp=trainer.dims.vpp,
                         account_embedding_loss=trainer.cfg.parallel.pp_account_embedding_loss)


def build_model_chunks(trainer, cfg: ModelConfig, preset: LlamaPreset, wrap_ddp: bool = True, customize=None,
                       split: PipelineSplit | None = None, head: str | None = None):
    """This rank's model chunks (one per virtual pipeline stage, the list megatron's schedules take), with
    initial weights. ``split``: the layer split (default: the trainer's, :func:`trainer_pipeline_split`).
    ``head``: the last stage's head (``models.llama.HEADS``; default ``hidden`` with ``model.use_fused_logprob``,
    else ``lm``); a ``scalar`` head loads the checkpoint's backbone only.

    ``customize(chunk)`` runs on each chunk after the weights are loaded and before DDP wrapping (e.g. loading a
    reward model's score head)."""
    from megatron_tulu.checkpoint.model_io import load_hf_into_model, load_rank_file
    from megatron_tulu.models.build import ModelOptions, build_model

    opts = ModelOptions(impl=cfg.impl, dtype=cfg.dtype, fp8=cfg.fp8, recompute=cfg.recompute,
                        recompute_layers=cfg.recompute_layers,
                        sequence_parallel=cfg.sequence_parallel,
                        document_masks=trainer.task.packed and trainer.dims.cp > 1,
                        head=head or ("hidden" if cfg.use_fused_logprob else "lm"))
    split = split or trainer_pipeline_split(trainer)
    stages = list(range(split.vpp)) if split.vpp > 1 else [None]
    chunks = [build_model(preset, trainer.dims.tp, split, opts, vp_stage=v) for v in stages]
    backbone_only = opts.head == "scalar"
    if cfg.init_hf:
        load_hf_into_model(chunks, cfg.init_hf, preset, backbone_only=backbone_only)
    elif cfg.init_mcore:
        from megatron_tulu.checkpoint import distributed as checkpointing

        if checkpointing.is_training_checkpoint(cfg.init_mcore):  # dist_checkpointing: any TP/PP it was saved at
            checkpointing.load_model_weights(cfg.init_mcore, chunks, backbone_only=backbone_only)
        else:  # the converter's per-rank files (same TP/PP)
            load_rank_file(chunks, cfg.init_mcore, backbone_only=backbone_only)
    for model in chunks:
        if customize is not None:
            customize(model)
    if not wrap_ddp:
        return chunks
    from megatron_tulu.models.training import wrap_ddp

    p = trainer.cfg.parallel
    return wrap_ddp(chunks, p.use_distributed_optimizer, preset.vocab_size, overlap_grad_reduce=p.overlap_grad_reduce)


def build_reference(trainer, cfg: ModelConfig, preset: LlamaPreset):
    """A frozen copy of the INITIAL policy (DPO's on-the-fly reference, RLVR's KL reference).

    From ``init_hf``/``init_mcore`` it loads those weights. From a random init it is rebuilt under the seeds the
    policy was built with (``train.seed`` and the model-parallel tracker's), in a forked RNG: a resume restores
    the RNG of the checkpoint, so a plain second build would give a different "initial" model after a resume
    than in the uninterrupted run."""
    from megatron_tulu import platform
    from megatron_tulu.models.training import freeze, model_parallel_rng_restored
    from megatron_tulu.parallel import seed_model_parallel_rng

    if cfg.init_hf or cfg.init_mcore:
        return freeze(build_model_chunks(trainer, cfg, preset, wrap_ddp=False))
    with model_parallel_rng_restored(), \
            torch.random.fork_rng(devices=[torch.cuda.current_device()] if platform.has_gpu() else []):
        platform.seed_everything(trainer.cfg.train.seed)
        seed_model_parallel_rng()
        return freeze(build_model_chunks(trainer, cfg, preset, wrap_ddp=False))


def build_optimizer(trainer, chunks):
    from megatron_tulu.models.training import megatron_optimizer

    return megatron_optimizer(chunks, trainer.cfg.optim, trainer.cfg.parallel.use_distributed_optimizer)


def build_trainable(trainer):
    preset = resolve_preset(trainer.cfg.model, trainer.task.vocab_size)
    trainer.preset = preset
    chunks = build_model_chunks(trainer, trainer.cfg.model, preset, head=trainer.task.head,
                                customize=trainer.task.customize_model)
    return chunks, build_optimizer(trainer, chunks)
