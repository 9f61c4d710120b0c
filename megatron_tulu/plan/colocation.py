"""Does a vLLM engine fit on a GPU beside a trainer rank? (``rlvr.engine_placement=local`` or ``colocated`` on a GPU.)

A local engine lives in trainer rank 0's process and shares its GPU; colocated engines put an ``engine_tp`` share of
an engine on every trainer GPU. Either way vLLM takes ``rlvr.engine_memory_fraction`` of
the GPU's memory when it starts (its ``gpu_memory_utilization``: weights, activations and KV cache) and refuses to
start when that much is not free. So, with the planner's per-GPU numbers for the trainer's layout:

- generating: the trainer's resident state (weights, gradients, optimizer shard, frozen reference, value model)
  plus the engine's fraction must fit;
- training: the trainer's peak (state plus activations at its recompute mode) must fit beside the engine, unless
  the engine sleeps while the trainer steps (``rlvr.engine_sleep_level`` 1 or 2), when it holds next to nothing;
- the engine's fraction must leave it a KV cache for at least one prompt + response.

:func:`engine_beside_trainer_problems` returns what does not fit, each naming the fields to change; an empty list
means the layout fits. The driver calls it before any model is loaded, and the job plan (``--validate-only``, the
SLURM dry run) reports it for the cluster's GPU. The trainer numbers are the fullest GPU's (the planner's), so the
check holds for every colocated GPU.
"""

from __future__ import annotations

from megatron_tulu.models.presets import get_preset
from megatron_tulu.plan import memory as M
from megatron_tulu.plan.hardware import GPUSpec
from megatron_tulu.plan.layouts import PlanRequest, capacity_bytes, evaluate_trainer

STATE_PARTS = ("weights", "grads", "optimizer", "frozen_ref", "value_model")  # resident while the engine generates


def engine_beside_trainer_problems(cfg, gpu: GPUSpec, world_size: int) -> list[str]:
    """Problems of running ``cfg``'s (an ``RLVRConfig``) engines beside the trainer (on trainer rank 0's GPU for a
    local engine, on every trainer GPU when colocated), the trainer running on ``world_size`` ``gpu``s at
    ``cfg.parallel``'s layout. Empty when it fits."""
    o, p, t = cfg.rlvr, cfg.parallel, cfg.train
    where = "every trainer GPU" if o.engine_placement == "colocated" else "trainer rank 0's GPU"
    preset = get_preset(cfg.model.preset)
    seq = t.seq_length + o.max_new_tokens  # prompt + response
    req = PlanRequest(model=preset.name, gpus=world_size, stage="rlvr", gpu=gpu.name, seq=seq,
                      global_batch=t.global_batch_size * o.samples_per_prompt, micro_batch=t.micro_batch_size,
                      algorithm="ppo" if o.preset.uses_value_model else "grpo", reference_model=o.needs_reference,
                      value_model=o.value_model, vpp=p.vpp, fused_logprob=cfg.model.use_fused_logprob,
                      gpu_memory_utilization=o.engine_memory_fraction)
    lay = evaluate_trainer(req, preset, world_size, p.tp, p.pp, p.cp)
    if "weights" not in lay.memory_gib:  # the layout itself is refused (the trainer reports that on its own)
        return []
    gib = lay.memory_gib
    cap = capacity_bytes(req) / M.GIB
    state = sum(gib[k] for k in STATE_PARTS)
    peak = gib[f"total_{cfg.model.recompute or 'none'}"]
    engine = o.engine_memory_fraction * gpu.memory_bytes / M.GIB
    fields = f"rlvr.engine_memory_fraction={o.engine_memory_fraction:g}"
    problems = []
    if state + engine > cap:
        most = max(0.0, (cap - state) * M.GIB / gpu.memory_bytes)
        problems.append(f"while the engine generates, {where} holds {state:.1f} GiB of trainer state (weights, grads, "
                        f"optimizer, reference, value model) and {fields} asks {engine:.1f} GiB of the {gpu.name}: "
                        f"{state + engine:.1f} > {cap:.1f} GiB usable; "
                        + (f"lower rlvr.engine_memory_fraction to at most {most:.2f} or " if most >= 0.01 else
                           "no fraction fits beside that state (more trainer GPUs or another parallel.* layout), or ")
                        + "use rlvr.engine_placement=ray (engines on GPUs of their own)")
    if o.engine_sleep_level == 0 and peak + engine > cap:
        problems.append(f"while the trainer steps it peaks at {peak:.1f} GiB beside the awake engine's {engine:.1f} GiB "
                        f"({fields}): {peak + engine:.1f} > {cap:.1f} GiB usable; set rlvr.engine_sleep_level=2 "
                        "(the engine frees its memory while the trainer steps) or lower rlvr.engine_memory_fraction")
    elif peak > cap:
        problems.append(f"the trainer alone peaks at {peak:.1f} GiB > {cap:.1f} GiB usable (model.recompute, parallel.*)")
    engine_tokens = M.engine_memory(preset, o.engine_tp, gpu.memory_bytes, seq, o.engine_memory_fraction)
    if engine_tokens.max_concurrent_seqs < 1:
        problems.append(f"{fields} leaves vLLM no KV cache for one {seq}-token sequence "
                        f"after its {engine_tokens.weights / M.GIB:.1f} GiB of weights (engine TP {o.engine_tp})")
    return problems
