"""Forward passes through megatron's pipeline schedules (no-pipelining or 1F1B), for eval/verify/logprobs.

Training uses the same schedule in ``trainers.step``; this module covers forward-only uses.
"""

from __future__ import annotations

import torch


def forward_only_logits(model, input_ids: torch.Tensor, micro_batch_size: int | None = None) -> torch.Tensor | None:
    """Run ``input_ids [B, S]`` through the (possibly pipelined) model and return the last stage's
    vocab-parallel logits ``[B, S, V_local]`` (None on other pipeline stages). Collective over the model-
    parallel group; every rank passes the same ``input_ids``."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    b, s = input_ids.shape
    mbs = micro_batch_size or b
    if b % mbs:
        raise ValueError(f"batch {b} not divisible by micro_batch_size {mbs}")
    chunks = list(input_ids.split(mbs))
    position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0)
    collected: list[torch.Tensor] = []

    def step(data_iter, model):
        ids = next(data_iter)
        out = model(ids, position_ids.expand_as(ids), None)

        def loss_fn(logits):
            collected.append(logits.detach())
            return logits.sum() * 0.0, {}

        return out, loss_fn

    models = model if isinstance(model, list) else [model]
    with torch.no_grad():
        get_forward_backward_func()(
            forward_step_func=step,
            data_iterator=iter(chunks),
            model=models,
            num_microbatches=len(chunks),
            seq_length=s,
            micro_batch_size=mbs,
            forward_only=True,
        )
    if not collected:
        return None
    return torch.cat(collected, dim=0)


def forward_only_map(model, microbatches: list[dict], forward, reduce) -> list[torch.Tensor]:
    """Forward-only pass over ``microbatches`` through the pipeline schedule.

    ``forward(model, batch) -> output`` runs on every stage; ``reduce(batch, output) -> tensor`` runs on the
    last stage and its results are returned there (an empty list on other stages).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    collected: list[torch.Tensor] = []

    def step(data_iter, model):
        batch = next(data_iter)
        out = forward(model, batch)

        def loss_fn(output):
            collected.append(reduce(batch, output).detach())
            return output.sum() * 0.0, {}

        return out, loss_fn

    models = model if isinstance(model, list) else [model]
    with torch.no_grad():
        get_forward_backward_func()(
            forward_step_func=step,
            data_iterator=iter(microbatches),
            model=models,
            num_microbatches=len(microbatches),
            seq_length=microbatches[0]["input_ids"].shape[1],
            micro_batch_size=microbatches[0]["input_ids"].shape[0],
            forward_only=True,
        )
    return collected
