"""The thin wrappers the trainers call for megatron-core's training machinery: DDP, the (distributed) optimizer,
the pipeline schedule and the model-parallel RNG. With ``models.build`` they are the trainers' one seam to
megatron-core (``trainers/`` imports no ``megatron.core``)."""

from __future__ import annotations

import contextlib


def wrap_ddp(chunks: list, use_distributed_optimizer: bool, true_vocab_size: int,
             overlap_grad_reduce: bool = False) -> list:
    """megatron's ``DistributedDataParallel`` around each model chunk, fp32 gradient reduction, with the grad
    finalisation, ``no_sync`` and (overlapped reduction) ``grad_sync`` hooks the schedules call, as megatron's own
    training loop sets them. ``true_vocab_size`` (the tokenizer's, before padding) rides on each wrapper for the
    logprob code."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=overlap_grad_reduce,
                                            use_distributed_optimizer=use_distributed_optimizer)
    # as megatron's training loop: only the first chunk's buffer is bucketed (the others reduce in one piece)
    wrapped = [DistributedDataParallel(config=m.config, ddp_config=ddp_cfg, module=m, disable_bucketing=i > 0)
               for i, m in enumerate(chunks)]

    def one_or_list(hooks):
        return hooks[0] if len(hooks) == 1 else hooks

    no_sync = one_or_list([d.no_sync for d in wrapped])
    # overlapped: the pipeline schedules start each chunk's reduction after its last backward (megatron's
    # align_grad_reduce); finalize_model_grads waits for them
    grad_sync = one_or_list([d.start_grad_sync for d in wrapped]) if overlap_grad_reduce else None
    for m, ddp in zip(chunks, wrapped):
        m.config.finalize_model_grads_func = finalize_model_grads
        m.config.no_sync_func = no_sync
        m.config.grad_sync_func = grad_sync
        ddp.true_vocab_size = true_vocab_size
    return wrapped


def megatron_optimizer(chunks: list, optim, use_distributed_optimizer: bool):
    """megatron's Adam over the DDP-wrapped ``chunks`` (distributed: states sharded over data parallel), from the
    stage's ``OptimConfig`` ``optim``."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    cfg = OptimizerConfig(
        optimizer="adam", lr=optim.lr, min_lr=optim.lr * optim.min_lr_ratio, weight_decay=optim.weight_decay,
        adam_beta1=optim.beta1, adam_beta2=optim.beta2, adam_eps=optim.eps, clip_grad=optim.clip_grad,
        bf16=chunks[0].module.config.bf16 if hasattr(chunks[0], "module") else False,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    return get_megatron_optimizer(cfg, chunks)


def run_schedule(models: list, forward_step, data_iter, num_microbatches: int, seq_length: int,
                 micro_batch_size: int, forward_only: bool) -> list:
    """megatron's pipeline schedule for ``models`` (no pipelining, 1F1B or interleaved 1F1B, chosen by megatron
    from the layout); returns the last stage's per-micro-batch loss outputs."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=data_iter, model=models, num_microbatches=num_microbatches,
        seq_length=seq_length, micro_batch_size=micro_batch_size, forward_only=forward_only)


@contextlib.contextmanager
def model_parallel_rng_restored():
    """Inside: the model-parallel RNG tracker may be re-seeded; on exit its states are what they were."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    saved = tracker.get_states()
    try:
        yield
    finally:
        tracker.set_states(saved)


def freeze(chunks: list) -> list:
    """No gradients for any parameter of ``chunks`` (reference models)."""
    for chunk in chunks:
        for p in chunk.parameters():
            p.requires_grad_(False)
    return chunks

