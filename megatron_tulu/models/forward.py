"""Forward passes through megatron's pipeline schedules (no-pipelining, 1F1B or interleaved 1F1B), for
eval/verify/logprobs, and :func:`schedule_inputs`, which the training step shares.
"""

from __future__ import annotations

import torch


def schedule_inputs(models: list, microbatches: list, forward_only: bool) -> tuple[list, object]:
    """``(micro-batches, data_iterator)`` to hand megatron's schedule for the model chunks ``models``.

    One chunk: an iterator over the micro-batches. Several chunks (interleaved 1F1B): one iterator per chunk over
    the same micro-batches, since every chunk consumes all of them in order (only the first chunk reads the
    tokens, only the last the labels). The interleaved schedule runs micro-batches in groups of at least ``pp``
    per virtual stage: ``pp`` (depth-first, megatron's default) when they divide evenly, else all of them in one
    group. A forward-only pass with fewer than ``pp`` micro-batches is padded by repeating the last one; the
    caller keeps only the first ``len(microbatches)`` results. Training batches are never padded: the trainer
    refuses such a layout up front.
    """
    if len(models) == 1:
        return microbatches, iter(microbatches)
    from megatron.core import parallel_state as ps

    pp = ps.get_pipeline_model_parallel_world_size()
    if len(microbatches) < pp:
        if not forward_only:
            raise ValueError(f"interleaved pipeline: {len(microbatches)} micro-batches per step, need >= pp={pp}")
        microbatches = list(microbatches) + [microbatches[-1]] * (pp - len(microbatches))
    group = pp if len(microbatches) % pp == 0 else len(microbatches)
    for m in models:
        m.config.microbatch_group_size_per_vp_stage = group
    return microbatches, [iter(microbatches) for _ in models]


def schedule_shape(models, batch: dict) -> tuple[int, int]:
    """``(seq_length, micro_batch_size)`` to hand megatron's schedule (its pipeline p2p buffers are
    ``[seq_length / cp, micro_batch_size, hidden]``) for a micro-batch ``batch`` of full rows ``input_ids [b, S]``:
    packed rows run as one THD sequence of ``b * S`` tokens (``models.packed``); context parallelism pads ``S``
    (``models.context_parallel``)."""
    from megatron_tulu.models.context_parallel import schedule_seq_length

    b, s = batch["input_ids"].shape
    if "cu_seqlens" in batch:
        return b * s, 1
    return schedule_seq_length(models, s), b


def forward_only_logits(model, input_ids: torch.Tensor, micro_batch_size: int | None = None) -> torch.Tensor | None:
    """Run ``input_ids [B, S]`` through the (possibly pipelined) model and return the last stage's
    vocab-parallel logits ``[B, S, V_local]`` (None on other pipeline stages). Collective over the model-
    parallel group; every rank passes the same ``input_ids``."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    b, s = input_ids.shape
    mbs = micro_batch_size or b
    if b % mbs:
        raise ValueError(f"batch {b} not divisible by micro_batch_size {mbs}")
    models = model if isinstance(model, list) else [model]
    n = b // mbs
    chunks, data_iter = schedule_inputs(models, list(input_ids.split(mbs)), forward_only=True)
    from megatron_tulu.models.context_parallel import gather_tokens, schedule_seq_length

    position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0)
    collected: list[torch.Tensor] = []

    def step(data_iter, model):
        ids = next(data_iter)
        out = model(ids, position_ids.expand_as(ids), None)

        def loss_fn(logits):
            collected.append(gather_tokens(logits.detach(), s))  # full rows under context parallelism
            return logits.sum() * 0.0, {}

        return out, loss_fn

    with torch.no_grad():
        get_forward_backward_func()(
            forward_step_func=step,
            data_iterator=data_iter,
            model=models,
            num_microbatches=len(chunks),
            seq_length=schedule_seq_length(models, s),
            micro_batch_size=mbs,
            forward_only=True,
        )
    if not collected:
        return None
    return torch.cat(collected[:n], dim=0)


def forward_only_map(model, microbatches: list[dict], forward, reduce) -> list[torch.Tensor]:
    """Forward-only pass over ``microbatches`` through the pipeline schedule.

    ``forward(model, batch) -> output`` runs on every stage; ``reduce(batch, output) -> tensor`` runs on the
    last stage and its results are returned there (an empty list on other stages).
    """
    from megatron_tulu.models.training import run_schedule

    collected: list[torch.Tensor] = []

    def step(data_iter, model):
        batch = next(data_iter)
        out = forward(model, batch)

        def loss_fn(output):
            collected.append(reduce(batch, output).detach())
            return output.sum() * 0.0, {}

        return out, loss_fn

    models = model if isinstance(model, list) else [model]
    n = len(microbatches)
    seq_length, micro_batch_size = schedule_shape(models, microbatches[0])
    microbatches, data_iter = schedule_inputs(models, microbatches, forward_only=True)
    with torch.no_grad():
        run_schedule(models, step, data_iter, len(microbatches), seq_length, micro_batch_size, forward_only=True)
    return collected[:n]
