"""Candidate layouts: enumerate TP/PP/CP/DP (and the engine/trainer split for RLVR), check memory, estimate
step time, rank. :func:`plan_rlvr_layout` is the piece the SLURM dry run reuses to place roles on nodes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from megatron_tulu.models.pipeline_split import PipelineSplit
from megatron_tulu.models.presets import LlamaPreset, get_preset
from megatron_tulu.plan import memory as M
from megatron_tulu.plan import throughput as T
from megatron_tulu.plan.hardware import EFFICIENCY, get_gpu

STAGES = ("pretrain", "sft", "dpo", "rm", "rlvr")


def colocated_engine_tp_problem(engine_tp: int, ranks_per_node: int, nodes: int) -> str:
    """'' or why a colocated engine of ``engine_tp`` cannot tile a trainer of ``nodes`` x ``ranks_per_node``: a
    node's first rank starts that node's engines (``rollout.colocated_nodes``), so an engine's workers stay on one
    node. The one owner of that rule: the planner, the RLVR config check and the engine start ask here."""
    if nodes > 1 and ranks_per_node % engine_tp:
        return (f"rlvr.engine_placement=colocated over {nodes} nodes: rlvr.engine_tp={engine_tp} must divide the "
                f"{ranks_per_node} trainer ranks of a node (an engine's workers run on one node)")
    return ""


@dataclass
class PlanRequest:
    """What the user wants to run; every field maps to a ``python -m megatron_tulu.plan`` flag."""

    model: str = "llama3.1-8b"
    """Preset name (``megatron_tulu.models.presets``)."""
    gpus: int = 8
    """Total GPUs (for RLVR: engines + trainers)."""
    stage: str = "sft"
    """pretrain | sft | dpo | rm | rlvr: decides which models live on the trainer GPUs (dpo and rm: 2 sequences a pair)."""
    gpu: str = "h100-80gb"
    """Accelerator key from ``megatron_tulu.plan.hardware.GPUS``."""
    gpus_per_node: int = 8
    """GPUs per node; TP never crosses a node."""
    seq: int = 4096
    """Training sequence length (RLVR: prompt + response)."""
    global_batch: int = 128
    """Sequences per optimizer step (DPO: preference pairs; each pair is two sequences)."""
    micro_batch: int = 1
    """Sequences per micro-batch per GPU."""
    grad_dtype_bytes: int = 4
    """Gradient buffer dtype: 4 = fp32 (megatron default), 2 = bf16 reduction."""
    fp8: bool = False
    """Use the FP8 tensor-core peak for compute time (memory unchanged: master weights stay bf16/fp32)."""
    fused_logprob: bool = False
    """Fused linear+logprob kernel: no [s, V] logits kept for backward."""
    mfu: float = T.DEFAULT_MFU
    """Model-FLOPs utilisation assumed for compute time (replace with a measured one via --calibration)."""
    overlap: float = 0.7
    """Fraction of DP/CP communication hidden behind compute."""
    reserve_gib: float = 4.0
    """GiB per GPU kept free for the CUDA context, NCCL buffers and allocator fragmentation."""
    vpp: int = 1
    """Virtual pipeline stages per GPU (interleaved 1F1B)."""
    recompute_layers: int = 0
    """Full recompute of only the first N layers of each pipeline chunk (``model.recompute_layers``, megatron's
    block method); 0 = every layer. Applies whenever the layout's recompute mode is ``full``."""
    tp_comm_overlap: bool = False
    """TP collectives overlapped with the GEMMs (megatron ``tp_comm_overlap`` with TE userbuffers), hidden by
    ``overlap`` like DP/CP traffic. This project's trainer does not enable it (the published Megatron-Bridge
    recipes do), so its own layouts leave it off."""
    fixed: dict = field(default_factory=dict)
    """Pin some of tp/pp/cp/engine_tp/num_engines (e.g. {"tp": 8}); the rest are searched."""
    # RLVR only
    engine_tp: int = 0
    """vLLM tensor parallel per engine (0: smallest power of two whose weights leave room for KV)."""
    num_engines: int = 0
    """vLLM engines (0: search 1..4)."""
    algorithm: str = "grpo"
    """grpo (no value model) or ppo (adds a value model with its own optimizer state)."""
    value_model: str = ""
    """Preset of the PPO value model ('' = same as the policy)."""
    reference_model: bool = True
    """Keep a frozen reference copy on the trainers (DPO with ``ref_mode: on_the_fly``; RLVR with a KL penalty).
    DPO's default cached reference log-probs need no resident copy."""
    prompt_len: int = 1024
    """RLVR prompt tokens (for generation time)."""
    response_len: int = 1024
    """RLVR response tokens (for generation time)."""
    gpu_memory_utilization: float = 0.9
    """vLLM's fraction of GPU memory for weights + KV cache."""
    response_len_dist: str = ""
    """RLVR response lengths (``LengthDist.parse``: ``fixed:N``, ``uniform:LO:HI``, ``exp:MEAN:MAX`` / ``MEAN:MAX``);
    '' = every response ``response_len`` long."""
    max_tokens_per_microbatch: int = 0
    """``train.max_tokens_per_microbatch``: 0 = padded rows of ``seq`` tokens, ``micro_batch`` per micro-batch (as the
    trainer does without it); > 0 = packed THD rows of at most this many tokens, so the trainer computes the sequences'
    actual tokens (RLVR: prompt + response lengths; DPO/RM/SFT: ``mean_seq_len``)."""
    mean_seq_len: int = 0
    """DPO/RM/SFT with packing: mean tokens per sequence (0: ``seq``)."""
    train_global_batch: int = 0
    """RLVR: sequences per optimizer step when a rollout batch is split into several (NeMo-RL's T-GBS); 0 = one
    optimizer step per rollout batch."""
    placement: str = "disaggregated"
    """RLVR: ``disaggregated`` (engines on GPUs of their own; ``rlvr.engine_placement=ray``) or ``colocated`` (an engine
    on every trainer GPU, asleep while the trainer steps; weights by CUDA IPC; ``rlvr.engine_placement=colocated``)."""
    off_policy: bool = False
    """RLVR, disaggregated: one-step off-policy (``rlvr.async_steps=1``): generation of step n+1 overlaps training on
    step n, so a step takes max(generate, train) + weight sync."""
    offload_trainer: bool = False
    """Colocated: move the trainer's grads and optimizer state to host while the engine generates (more KV room, host
    traffic each step)."""
    sleep_level: int = 1
    """Colocated: vLLM sleep level while the trainer steps (1: weights to host and back; 2: weights dropped)."""
    reference_on_host: bool = False
    """The frozen reference waits in host memory and is copied in for its forward (NeMo-RL's megatron worker): no
    resident copy, twice its bytes over the host link per step."""

    def unbuilt(self) -> list[str]:
        """What this request assumes that this project's code does not run yet. The planner still estimates it
        (what the hardware would do: the published recipes it calibrates against use these), and says so."""
        out = []
        if self.tp_comm_overlap:
            out.append("TP communication overlap (--tp-comm-overlap: megatron's tp_comm_overlap with TE userbuffers; "
                       "the trainer does not enable it)")
        if self.stage == "rlvr" and self.offload_trainer:
            out.append("trainer grads/optimizer offloaded to host while generating (--offload-trainer)")
        if self.stage == "rlvr" and self.reference_on_host:
            out.append("a reference model kept in host memory (--reference-on-host)")
        return out

    def response_dist(self):
        return T.LengthDist.parse(self.response_len_dist) if self.response_len_dist else \
            T.LengthDist("fixed", self.response_len, self.response_len)

    def packed(self) -> bool:
        return self.max_tokens_per_microbatch > 0

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.algorithm not in ("grpo", "ppo"):
            raise ValueError(f"algorithm must be grpo or ppo, got {self.algorithm!r}")
        for name in ("gpus", "gpus_per_node", "seq", "global_batch", "micro_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"mfu must be in (0, 1], got {self.mfu}")
        if self.placement not in ("disaggregated", "colocated"):
            raise ValueError(f"placement must be disaggregated or colocated, got {self.placement!r}")
        if self.off_policy and self.placement == "colocated":
            raise ValueError("off_policy needs placement=disaggregated: a colocated engine cannot generate while its "
                             "GPU trains")
        if self.sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {self.sleep_level}")
        if self.train_global_batch and (self.train_global_batch < 1 or self.global_batch % self.train_global_batch):
            raise ValueError(f"train_global_batch {self.train_global_batch} must divide global_batch {self.global_batch}")
        if self.recompute_layers < 0:
            raise ValueError(f"recompute_layers must be >= 0, got {self.recompute_layers}")
        if "recompute" in self.fixed and self.fixed["recompute"] not in M.RECOMPUTE_MODES:
            raise ValueError(f"recompute must be one of {M.RECOMPUTE_MODES}, got {self.fixed['recompute']!r}")
        self.response_dist()
        get_preset(self.model)
        get_gpu(self.gpu)


@dataclass
class Layout:
    """One evaluated candidate."""

    tp: int
    pp: int
    cp: int
    dp: int
    trainer_gpus: int
    engine_tp: int = 0
    num_engines: int = 0
    feasible: bool = False
    reasons: list = field(default_factory=list)
    """Why it was rejected (empty when feasible)."""
    notes: list = field(default_factory=list)
    """Caveats that do not reject it (uneven pipeline split, ...)."""
    recompute: str = ""
    """Lightest recompute mode that fits ('' when none fits)."""
    memory_gib: dict = field(default_factory=dict)
    """Per-trainer-GPU breakdown; activations under every recompute mode."""
    engine_gib: dict = field(default_factory=dict)
    time_s: dict = field(default_factory=dict)
    tokens_per_s_per_gpu: float = 0.0
    placement: str = ""
    """RLVR: disaggregated or colocated."""

    def name(self) -> str:
        s = f"TP{self.tp} PP{self.pp} CP{self.cp} DP{self.dp}"
        if self.num_engines and self.placement == "colocated":
            s = f"{self.num_engines}x vLLM TP{self.engine_tp} colocated with trainer {s}"
        elif self.num_engines:
            s = f"{self.num_engines}x vLLM TP{self.engine_tp} + trainer {s}"
        return s

    def to_dict(self) -> dict:
        return asdict(self) | {"name": self.name()}


def _pow2_upto(n: int) -> list[int]:
    return [2**i for i in range(int(math.log2(n)) + 1)] if n >= 1 else []


def capacity_bytes(req: PlanRequest) -> float:
    return get_gpu(req.gpu).memory_bytes - req.reserve_gib * M.GIB


def evaluate_trainer(req: PlanRequest, preset: LlamaPreset, trainer_gpus: int, tp: int, pp: int, cp: int) -> Layout:
    """Memory and step time of one trainer layout on ``trainer_gpus`` GPUs."""
    gpu = get_gpu(req.gpu)
    lay = Layout(tp=tp, pp=pp, cp=cp, dp=0, trainer_gpus=trainer_gpus)
    mp = tp * pp * cp
    if trainer_gpus % mp:
        lay.reasons.append(f"{trainer_gpus} trainer GPUs not divisible by TP*PP*CP = {mp}")
        return lay
    dp = lay.dp = trainer_gpus // mp
    if tp > req.gpus_per_node:
        lay.reasons.append(f"TP{tp} crosses nodes of {req.gpus_per_node} GPUs")
    if preset.num_query_groups % tp or preset.num_attention_heads % tp:
        lay.reasons.append(f"TP{tp} does not divide {preset.num_query_groups} KV heads")
    if pp > preset.num_layers:
        lay.reasons.append(f"PP{pp} > {preset.num_layers} layers")
    row, mb = (req.max_tokens_per_microbatch, 1) if req.packed() else (req.seq, req.micro_batch)
    if row % (2 * cp) and cp > 1:
        lay.reasons.append(f"{'max_tokens_per_microbatch' if req.packed() else 'seq'} {row} not divisible by 2*CP = "
                           f"{2 * cp} (load-balanced ring attention)")
    seqs = req.global_batch * (2 if req.stage in ("dpo", "rm") else 1)  # a pair is two sequences
    if lay.reasons:
        return lay
    if seqs % (dp * mb):  # reported, but memory is still evaluated so both reasons show
        lay.reasons.append(f"global batch {seqs} sequences not divisible by DP*micro_batch = {dp * mb}")
    split = PipelineSplit(pp=pp, vpp=req.vpp)
    if not split.divides(preset.num_layers):  # the trainer builds even splits only
        if replace(split, account_embedding_loss=True).divides(preset.num_layers):
            lay.notes.append(f"{preset.num_layers} layers over {split.num_chunks} pipeline chunks is uneven: set "
                             "parallel.pp_account_embedding_loss=true (embedding and loss take a layer slot each)")
        else:
            lay.reasons.append(f"{preset.num_layers} layers (or {preset.num_layers + 2} with the embedding and loss "
                               f"counted) do not split evenly over PP{pp} x VPP{req.vpp}")
    # Optimizer steps per batch (RLVR may split a rollout batch), tokens computed, micro-batches per optimizer step.
    opt_steps = req.global_batch // req.train_global_batch if req.stage == "rlvr" and req.train_global_batch else 1
    mean_len, attn_len = _sequence_tokens(req)
    if req.packed():
        tokens = seqs * mean_len
        m = max(1, math.ceil(tokens / opt_steps / dp / row))
    else:
        tokens = seqs * req.seq
        m = max(1, seqs // opt_steps // (dp * mb))
    w, g, o = M.model_state(preset, tp, pp, dp * cp, req.grad_dtype_bytes)
    acts = {mode: M.activation_bytes(preset, seq=row, micro_batch=mb, tp=tp, pp=pp, cp=cp,
                                     num_microbatches=m, recompute=mode, vpp=req.vpp, fused_logprob=req.fused_logprob,
                                     recompute_layers=req.recompute_layers) for mode in M.RECOMPUTE_MODES}
    mem = M.TrainerMemory(weights=w, grads=g, optimizer=o, activations=acts)
    ref_bytes = 2.0 * M.params_per_gpu(preset, tp, pp) if req.stage in ("dpo", "rlvr") and req.reference_model else 0.0
    if not req.reference_on_host:  # DPO with a cached reference keeps none
        mem.frozen = ref_bytes
    vpreset = None
    if req.stage == "rlvr" and req.algorithm == "ppo":
        vpreset = get_preset(req.value_model) if req.value_model else preset
        try:  # on the policy's pipeline ranks, as the trainer places it (uneven first/last stages if need be)
            vsplit = split.fit(vpreset.num_layers)
        except ValueError as e:
            lay.reasons.append(f"value model {vpreset.name}: {e}")
            return lay
        mem.value_model = sum(M.model_state(vpreset, tp, pp, dp * cp, req.grad_dtype_bytes, split=vsplit,
                                            value_head=True))
    cap = capacity_bytes(req)
    for mode in [req.fixed["recompute"]] if "recompute" in req.fixed else M.RECOMPUTE_MODES:  # lightest that fits
        if mem.total(mode) <= cap:
            lay.recompute = mode
            break
    lay.memory_gib = {"weights": w / M.GIB, "grads": g / M.GIB, "optimizer": o / M.GIB, "frozen_ref": mem.frozen / M.GIB,
                      "value_model": mem.value_model / M.GIB,
                      **{f"act_{k}": v / M.GIB for k, v in acts.items()},
                      **{f"total_{k}": mem.total(k) / M.GIB for k in M.RECOMPUTE_MODES},
                      "capacity": cap / M.GIB}
    if not lay.recompute and "recompute" in req.fixed:
        lay.reasons.append(f"needs {mem.total(req.fixed['recompute']) / M.GIB:.1f} GiB/GPU with the pinned "
                           f"recompute={req.fixed['recompute']} > {cap / M.GIB:.1f} GiB usable on {gpu.name}")
    elif not lay.recompute:
        lay.reasons.append(f"needs {mem.total('full') / M.GIB:.1f} GiB/GPU even with full recompute "
                           f"(state {mem.state() / M.GIB:.1f} GiB) > {cap / M.GIB:.1f} GiB usable on {gpu.name}")
    if lay.reasons:
        return lay
    fpt = T.flops_per_token(preset, attn_len)
    flops, fwd_only = tokens * fpt, 0.0  # trained passes (recompute applies) and forward-only passes
    if req.stage == "dpo" and req.reference_model:
        fwd_only += tokens * fpt / 3  # reference forward
    if req.stage == "rlvr":
        fwd_only += tokens * fpt / 3 * (2 if req.reference_model else 1)  # old log-probs (+ reference) forward
        if vpreset is not None:
            vfpt = T.flops_per_token(vpreset, attn_len)
            flops += tokens * vfpt  # value fwd+bwd
            fwd_only += tokens * vfpt / 3  # value forward for the advantages
    recomputed = M.recomputed_fraction(lay.recompute, M.stage_layers(preset.num_layers, pp, req.vpp) // req.vpp,
                                       req.recompute_layers)
    comm = T.comm_volume(preset, seq=row, micro_batch=mb, num_microbatches=m, tp=tp, pp=pp, cp=cp, dp=dp,
                         recompute=lay.recompute, grad_dtype_bytes=req.grad_dtype_bytes, recomputed=recomputed)
    comm = {k: v * opt_steps for k, v in comm.items()}  # every optimizer step repeats them
    lay.time_s = T.train_step_time(flops, trainer_gpus, gpu, req.mfu, comm, tp=tp, pp=pp, cp=cp, num_microbatches=m,
                                   gpus_per_node=req.gpus_per_node, recompute=lay.recompute, fp8=req.fp8,
                                   overlap=req.overlap, vpp=req.vpp, forward_only_flops=fwd_only,
                                   recomputed=recomputed, tp_comm_overlap=req.tp_comm_overlap)
    lay.time_s["recomputed_layer_fraction"] = recomputed
    if req.reference_on_host and ref_bytes:
        lay.time_s["ref_swap_s"] = 2.0 * ref_bytes / (gpu.host_link_gbps * 1e9)
        lay.time_s["total_s"] += lay.time_s["ref_swap_s"]
    lay.time_s["comm_bytes_per_gpu"] = comm
    lay.time_s["tokens"] = tokens
    lay.time_s["optimizer_steps"] = opt_steps
    lay.time_s["microbatches_per_optimizer_step"] = m
    lay.feasible = True
    return lay


def _sequence_tokens(req: PlanRequest) -> tuple[float, float]:
    """(mean tokens the trainer computes per sequence, length for per-token attention FLOPs). Padded rows: ``seq``
    both. Packed: RLVR prompt + the response distribution's mean (attention at E[s^2]/E[s]); other stages
    ``mean_seq_len``."""
    if not req.packed():
        return float(req.seq), float(req.seq)
    if req.stage == "rlvr":
        return T.packed_seq_stats(req.prompt_len, req.response_dist())
    n = float(req.mean_seq_len or req.seq)
    return n, n


def evaluate_rlvr(req: PlanRequest, preset: LlamaPreset, engine_tp: int, num_engines: int, tp: int, pp: int, cp: int) -> Layout:
    """Disaggregated: engines on ``engine_tp * num_engines`` GPUs, trainers on the rest. Colocated: an engine on
    every trainer GPU (``engine_tp * num_engines == gpus``). Step = generate + train + sync, or, one-step
    off-policy, max(generate, train) + sync."""
    gpu = get_gpu(req.gpu)
    colocated = req.placement == "colocated"
    engine_gpus = engine_tp * num_engines
    trainer_gpus = req.gpus if colocated else req.gpus - engine_gpus
    if colocated and engine_gpus != req.gpus:
        lay = Layout(tp=tp, pp=pp, cp=cp, dp=0, trainer_gpus=trainer_gpus, engine_tp=engine_tp, num_engines=num_engines,
                     placement=req.placement)
        lay.reasons.append(f"colocated engines must cover all {req.gpus} GPUs, {num_engines} x TP{engine_tp} = "
                           f"{engine_gpus}")
        return lay
    if trainer_gpus < 1:
        lay = Layout(tp=tp, pp=pp, cp=cp, dp=0, trainer_gpus=trainer_gpus, engine_tp=engine_tp, num_engines=num_engines,
                     placement=req.placement)
        lay.reasons.append(f"engines use {engine_gpus} of {req.gpus} GPUs, none left to train")
        return lay
    lay = evaluate_trainer(req, preset, trainer_gpus, tp, pp, cp)
    lay.engine_tp, lay.num_engines, lay.placement = engine_tp, num_engines, req.placement
    if preset.num_attention_heads % engine_tp:
        lay.reasons.append(f"engine TP{engine_tp} does not divide {preset.num_attention_heads} heads")
    if engine_tp > req.gpus_per_node and engine_tp % req.gpus_per_node:
        lay.reasons.append(f"engine TP{engine_tp} spans nodes unevenly ({req.gpus_per_node} GPUs/node)")
    if engine_tp < req.gpus_per_node and req.gpus_per_node % engine_tp:
        lay.reasons.append(f"engine TP{engine_tp} does not tile a {req.gpus_per_node}-GPU node")
    nodes = -(-req.gpus // req.gpus_per_node)
    if colocated and colocated_engine_tp_problem(engine_tp, req.gpus_per_node, nodes):
        lay.reasons.append(f"colocated engine TP{engine_tp} would span nodes (a node's engines start there)")
    dist = req.response_dist()
    full_len = req.prompt_len + int(dist.hi)
    frac = req.gpu_memory_utilization
    offload = 0.0
    if colocated and lay.memory_gib:
        # While the engine generates, the trainer's state stays resident (all of it, or its bf16 weights and frozen
        # reference when grads + optimizer go to host); vLLM gets at most what is left.
        gib = lay.memory_gib
        offload = (gib["grads"] + gib["optimizer"] + gib["value_model"]) * M.GIB if req.offload_trainer else 0.0
        resident = sum(gib[k] for k in ("weights", "grads", "optimizer", "frozen_ref", "value_model")) * M.GIB - offload
        room = (capacity_bytes(req) - resident) / gpu.memory_bytes
        if room < frac:
            lay.notes.append(f"colocated: the trainer keeps {resident / M.GIB:.1f} GiB resident while generating, so vLLM "
                             f"gets {max(room, 0):.2f} of the GPU, not gpu_memory_utilization={frac:g}"
                             + ("" if req.offload_trainer else " (--offload-trainer frees grads and optimizer)"))
            frac = max(room, 0.0)
    em = M.engine_memory(preset, engine_tp, gpu.memory_bytes, full_len, frac,
                         runtime_overhead_bytes=EFFICIENCY.engine_runtime_overhead_gib * M.GIB)
    lay.engine_gib = {"weights": em.weights / M.GIB, "kv_cache": em.kv_cache / M.GIB, "kv_tokens": em.kv_tokens,
                      "max_concurrent_seqs": em.max_concurrent_seqs, "memory_fraction": frac}
    if em.kv_tokens < full_len:
        lay.reasons.append(f"vLLM TP{engine_tp}: weights {em.weights / M.GIB:.1f} GiB/GPU leave no KV cache for one "
                           f"{full_len}-token sequence at gpu_memory_utilization={frac:.2f}")
    if lay.reasons:
        lay.feasible = False
        return lay
    gen = T.generation_time(preset, gpu, engine_tp=engine_tp, num_engines=num_engines, num_sequences=req.global_batch,
                            prompt_len=req.prompt_len, response_len=req.response_len,
                            max_concurrent_seqs=em.max_concurrent_seqs, gpus_per_node=req.gpus_per_node,
                            response_dist=dist, kv_tokens=em.kv_tokens)
    if colocated:
        sync = T.colocated_sync_time(preset, gpu, engine_tp=engine_tp, trainer_tp=tp, trainer_pp=pp,
                                     offload_bytes_per_gpu=offload, sleep_level=req.sleep_level,
                                     nodes=nodes)
    else:
        sync = T.weight_sync_time(preset, gpu, tp, pp, cross_node=req.gpus > req.gpus_per_node)
    train = lay.time_s["total_s"]
    total = (max(gen["total_s"], train) if req.off_policy else gen["total_s"] + train) + sync["total_s"]
    lay.time_s = {"generate_s": gen["total_s"], "train_s": train, "weight_sync_s": sync["total_s"],
                  "train_detail": lay.time_s, "generate_detail": gen, "sync_detail": sync,
                  "off_policy": req.off_policy, "total_s": total}
    return lay


def _finish(req: PlanRequest, lay: Layout) -> Layout:
    if lay.feasible:
        seqs = req.global_batch * (2 if req.stage in ("dpo", "rm") else 1)  # a pair is two sequences
        lay.tokens_per_s_per_gpu = seqs * _sequence_tokens(req)[0] / lay.time_s["total_s"] / req.gpus
    return lay


def enumerate_layouts(req: PlanRequest) -> list[Layout]:
    """Every candidate (feasible first, fastest first; then the rejected ones with their reasons)."""
    req.validate()
    preset = get_preset(req.model)
    fx = req.fixed
    tps = [fx["tp"]] if "tp" in fx else [t for t in _pow2_upto(req.gpus_per_node)]
    cps = [fx["cp"]] if "cp" in fx else [1, 2, 4, 8]
    pps = [fx["pp"]] if "pp" in fx else sorted({p for p in range(1, preset.num_layers + 1)
                                                 if p <= 16 or preset.num_layers % p == 0} & set(range(1, 33)))
    out: list[Layout] = []
    if req.stage != "rlvr":
        for tp in tps:
            for pp in pps:
                for cp in cps:
                    if req.gpus % (tp * pp * cp) == 0:
                        out.append(_finish(req, evaluate_trainer(req, preset, req.gpus, tp, pp, cp)))
    else:
        etps = [fx.get("engine_tp") or req.engine_tp] if (fx.get("engine_tp") or req.engine_tp) else [1, 2, 4, 8, 16]
        nes = [fx.get("num_engines") or req.num_engines] if (fx.get("num_engines") or req.num_engines) else [1, 2, 4, 8]
        for etp in etps:
            for ne in ([req.gpus // etp] if req.placement == "colocated" else nes):
                if req.placement == "colocated" and (req.gpus % etp or ne < 1):
                    continue
                rest = req.gpus if req.placement == "colocated" else req.gpus - etp * ne
                for tp in tps:
                    for pp in pps:
                        for cp in cps:
                            if rest > 0 and rest % (tp * pp * cp) == 0:
                                out.append(_finish(req, evaluate_rlvr(req, preset, etp, ne, tp, pp, cp)))
    if not out:
        lay = Layout(tp=0, pp=0, cp=0, dp=0, trainer_gpus=req.gpus)
        lay.reasons.append(f"no TP/PP/CP combination tiles {req.gpus} GPUs")
        out.append(lay)
    # Feasible: fastest first. Rejected: closest to fitting first (structural rejections last).
    out.sort(key=lambda l: (not l.feasible, l.time_s.get("total_s", math.inf) if l.feasible
                            else l.memory_gib.get("total_full", math.inf)))
    return out


def evaluate(req: PlanRequest, tp: int, pp: int, cp: int = 1, engine_tp: int = 0, num_engines: int = 0) -> Layout:
    """Verdict for one explicit layout (what the tests and the dry run ask about)."""
    req.validate()
    preset = get_preset(req.model)
    if req.stage == "rlvr":
        return _finish(req, evaluate_rlvr(req, preset, engine_tp, num_engines, tp, pp, cp))
    return _finish(req, evaluate_trainer(req, preset, req.gpus, tp, pp, cp))


def plan_rlvr_layout(
    model: str, gpus_total: int, gpus_per_node: int, engine_tp: int, num_engines: int, trainer_tp: int,
    trainer_pp: int, trainer_cp: int = 1, **request_overrides,
) -> dict:
    """Place vLLM engines and the megatron trainer on nodes; raise ValueError when the counts do not add up.

    Engines take the first ``engine_tp * num_engines`` GPUs (global GPU index = node * gpus_per_node +
    local), an engine never straddles nodes unless its TP is a multiple of a node; trainers take the rest,
    with trainer ranks 0..T-1 in GPU order. Returns ``{"nodes": [{"node", "role", "engines", "trainer_ranks",
    "local_gpus"}], "engines": [{"id", "tp", "gpus"}], "trainer": {"gpus", "tp", "pp", "cp", "dp", "ranks"},
    "memory": <Layout.to_dict()>, "feasible": bool}``. ``role`` is engine, trainer or mixed.
    """
    if gpus_total % gpus_per_node:
        raise ValueError(f"gpus_total {gpus_total} is not a multiple of gpus_per_node {gpus_per_node}")
    for name, v in (("engine_tp", engine_tp), ("num_engines", num_engines), ("trainer_tp", trainer_tp),
                    ("trainer_pp", trainer_pp), ("trainer_cp", trainer_cp)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if engine_tp > gpus_per_node and engine_tp % gpus_per_node:
        raise ValueError(f"engine_tp {engine_tp} > gpus_per_node {gpus_per_node} must be a multiple of it")
    if engine_tp < gpus_per_node and gpus_per_node % engine_tp:
        raise ValueError(f"engine_tp {engine_tp} must divide gpus_per_node {gpus_per_node}")
    engine_gpus = engine_tp * num_engines
    trainer_gpus = gpus_total - engine_gpus
    mp = trainer_tp * trainer_pp * trainer_cp
    if trainer_gpus < 1:
        raise ValueError(f"engines need {engine_gpus} GPUs, leaving {trainer_gpus} of {gpus_total} for training")
    if trainer_gpus % mp:
        raise ValueError(f"{trainer_gpus} trainer GPUs (= {gpus_total} - {num_engines} engines x TP{engine_tp}) "
                         f"not divisible by trainer TP*PP*CP = {mp}")
    if trainer_tp > gpus_per_node:
        raise ValueError(f"trainer_tp {trainer_tp} > gpus_per_node {gpus_per_node}: TP must stay inside a node")
    for k in range(trainer_gpus // trainer_tp):  # TP groups are consecutive trainer ranks
        first, last = engine_gpus + k * trainer_tp, engine_gpus + (k + 1) * trainer_tp - 1
        if first // gpus_per_node != last // gpus_per_node:
            raise ValueError(f"trainer TP group {k} (GPUs {first}-{last}) would straddle nodes: make the engine "
                             f"GPUs ({engine_gpus}) a multiple of trainer_tp {trainer_tp} or of gpus_per_node")
    engines = [{"id": e, "tp": engine_tp, "gpus": list(range(e * engine_tp, (e + 1) * engine_tp))}
               for e in range(num_engines)]
    nodes = []
    for n in range(gpus_total // gpus_per_node):
        g = list(range(n * gpus_per_node, (n + 1) * gpus_per_node))
        e_ids = sorted({x // engine_tp for x in g if x < engine_gpus})
        t_ranks = [x - engine_gpus for x in g if x >= engine_gpus]
        role = "engine" if not t_ranks else "trainer" if not e_ids else "mixed"
        nodes.append({"node": n, "role": role, "engines": e_ids, "trainer_ranks": t_ranks,
                      "local_gpus": {"engine": [x % gpus_per_node for x in g if x < engine_gpus],
                                     "trainer": [x % gpus_per_node for x in g if x >= engine_gpus]}})
    assert sum(len(n["trainer_ranks"]) for n in nodes) == trainer_gpus
    assert sum(len(e["gpus"]) for e in engines) + trainer_gpus == gpus_total
    req = PlanRequest(model=model, gpus=gpus_total, stage="rlvr", gpus_per_node=gpus_per_node, **request_overrides)
    lay = evaluate(req, trainer_tp, trainer_pp, trainer_cp, engine_tp, num_engines)
    return {"nodes": nodes, "engines": engines,
            "trainer": {"gpus": trainer_gpus, "tp": trainer_tp, "pp": trainer_pp, "cp": trainer_cp,
                        "dp": trainer_gpus // mp, "ranks": list(range(trainer_gpus))},
            "memory": lay.to_dict(), "feasible": lay.feasible}
