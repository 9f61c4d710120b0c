"""``python -m megatron_tulu.plan --model llama3.1-405b --gpus 256 --stage rlvr [--gpu h100-80gb] [--seq 4096]``

Prints the feasible layouts (fastest first) with memory per GPU and estimated step time, then the rejected
ones with the reason. ``--json`` prints everything as JSON instead.

RLVR models what the trainer does: ``--max-tokens-per-microbatch N`` packs the sequences' actual tokens (prompt +
responses drawn from ``--response-len-dist``) instead of padded ``--seq`` rows; ``--placement colocated`` puts an
engine on every trainer GPU (asleep while training, weights by CUDA IPC); ``--off-policy`` overlaps generation with
training (disaggregated). ``--goal-s`` says whether a layout meets a step-time goal and what the fastest one needs.
Constants: ``megatron_tulu.plan.hardware``; the comparison with published runs: benchmarks/planner_calibration.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_tulu.plan.hardware import GPUS
from megatron_tulu.plan.layouts import STAGES, PlanRequest, enumerate_layouts, plan_rlvr_layout
from megatron_tulu.plan.throughput import DEFAULT_MFU, load_calibration


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megatron_tulu.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama3.1-8b", help="preset name (megatron_tulu.models.presets)")
    p.add_argument("--gpus", type=int, required=True, help="total GPUs (RLVR: engines + trainers)")
    p.add_argument("--stage", default="sft", choices=STAGES)
    p.add_argument("--gpu", default="h100-80gb", choices=sorted(GPUS))
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--seq", type=int, default=4096, help="training sequence length")
    p.add_argument("--global-batch", type=int, default=128, help="sequences (DPO: pairs) per optimizer step")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--tp", type=int, help="pin trainer TP")
    p.add_argument("--pp", type=int, help="pin trainer PP")
    p.add_argument("--cp", type=int, help="pin trainer CP")
    p.add_argument("--recompute", choices=["none", "selective", "full"], help="pin activation recompute (default: "
                   "the lightest that fits)")
    p.add_argument("--recompute-layers", type=int, default=0, help="with full recompute: only the first N layers "
                   "of each pipeline chunk (model.recompute_layers, megatron's block method); 0: every layer")
    p.add_argument("--tp-comm-overlap", action="store_true", help="TP collectives overlapped with GEMMs (TE "
                   "userbuffers, as Megatron-Bridge's recipes; not enabled by this project's trainer)")
    p.add_argument("--vpp", type=int, default=1, help="virtual pipeline stages (interleaved 1F1B)")
    p.add_argument("--engine-tp", type=int, default=0, help="RLVR: vLLM TP per engine (0: search)")
    p.add_argument("--num-engines", type=int, default=0, help="RLVR: number of engines (0: search)")
    p.add_argument("--algorithm", default="grpo", choices=["grpo", "ppo"])
    p.add_argument("--value-model", default="", help="PPO value model preset (default: same as --model)")
    p.add_argument("--no-reference", action="store_true", help="no frozen reference model on the trainers")
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--response-len", type=int, default=1024, help="RLVR response tokens (without "
                   "--response-len-dist: every response)")
    p.add_argument("--response-len-dist", default="", help="RLVR response lengths: fixed:N, uniform:LO:HI, "
                   "exp:MEAN:MAX or MEAN:MAX (an exponential truncated at MAX with mean MEAN)")
    p.add_argument("--max-tokens-per-microbatch", type=int, default=0, help="train.max_tokens_per_microbatch: pack "
                   "the sequences' actual tokens into rows of at most N tokens (0: padded --seq rows)")
    p.add_argument("--mean-seq-len", type=int, default=0, help="DPO/RM/SFT with packing: mean tokens per sequence")
    p.add_argument("--train-global-batch", type=int, default=0, help="RLVR: sequences per optimizer step when a "
                   "rollout batch is split into several optimizer steps (0: one)")
    p.add_argument("--placement", default="disaggregated", choices=["disaggregated", "colocated"],
                   help="RLVR: engines on GPUs of their own, or on every trainer GPU (sleeping while it trains)")
    p.add_argument("--off-policy", action="store_true", help="RLVR: one-step off-policy: step = max(generate, train) "
                   "+ weight sync (disaggregated only)")
    p.add_argument("--offload-trainer", action="store_true", help="colocated: grads and optimizer state go to host "
                   "while the engine generates")
    p.add_argument("--sleep-level", type=int, default=1, choices=[1, 2], help="colocated: vLLM sleep level")
    p.add_argument("--reference-on-host", action="store_true", help="the frozen reference waits in host memory and is "
                   "copied in for its forward (no resident copy)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM's fraction of GPU memory")
    p.add_argument("--goal-s", type=float, default=0.0, help="say whether the fastest layout meets this step time")
    p.add_argument("--bf16-grads", action="store_true", help="reduce grads in bf16 (2 B/param instead of 4)")
    p.add_argument("--fp8", action="store_true", help="compute time against the FP8 peak")
    p.add_argument("--fused-logprob", action="store_true", help="no [s, V] logits kept (fused kernel)")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="assumed MFU (ignored with --calibration)")
    p.add_argument("--calibration", help="JSON results with measured 'mfu' (benchmarks/train_throughput.py --json-out)")
    p.add_argument("--reserve-gib", type=float, default=4.0, help="GiB/GPU kept free (context, NCCL, fragmentation)")
    p.add_argument("--top", type=int, default=8, help="feasible layouts to print")
    p.add_argument("--show-rejected", type=int, default=8, help="rejected layouts to print")
    p.add_argument("--json", action="store_true")
    p.add_argument("--roles", action="store_true",
                   help="RLVR: print plan_rlvr_layout's node roles/ranks as JSON for the pinned --engine-tp "
                        "--num-engines --tp --pp [--cp] (what the SLURM dry run shows)")
    return p.parse_args(argv)


def request_from_args(a: argparse.Namespace) -> PlanRequest:
    fixed = {k: getattr(a, k) for k in ("tp", "pp", "cp", "recompute") if getattr(a, k)}
    mfu = load_calibration(a.calibration, gpu=a.gpu, precision="fp8" if a.fp8 else "bf16") if a.calibration else a.mfu
    return PlanRequest(
        model=a.model, gpus=a.gpus, stage=a.stage, gpu=a.gpu, gpus_per_node=a.gpus_per_node, seq=a.seq,
        global_batch=a.global_batch, micro_batch=a.micro_batch, grad_dtype_bytes=2 if a.bf16_grads else 4,
        fp8=a.fp8, fused_logprob=a.fused_logprob, mfu=mfu, reserve_gib=a.reserve_gib, vpp=a.vpp, fixed=fixed,
        recompute_layers=a.recompute_layers, tp_comm_overlap=a.tp_comm_overlap,
        engine_tp=a.engine_tp, num_engines=a.num_engines, algorithm=a.algorithm, value_model=a.value_model,
        reference_model=not a.no_reference, prompt_len=a.prompt_len, response_len=a.response_len,
        response_len_dist=a.response_len_dist, max_tokens_per_microbatch=a.max_tokens_per_microbatch,
        mean_seq_len=a.mean_seq_len, train_global_batch=a.train_global_batch, placement=a.placement,
        off_policy=a.off_policy, offload_trainer=a.offload_trainer, sleep_level=a.sleep_level,
        reference_on_host=a.reference_on_host,
        gpu_memory_utilization=a.gpu_memory_utilization,
    )


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.roles:
        missing = [f for f in ("engine_tp", "num_engines", "tp", "pp") if not getattr(a, f)]
        if missing:
            print(f"error: --roles needs {', '.join('--' + m.replace('_', '-') for m in missing)}", file=sys.stderr)
            return 2
        try:
            out = plan_rlvr_layout(a.model, a.gpus, a.gpus_per_node, a.engine_tp, a.num_engines, a.tp, a.pp, a.cp or 1,
                                   gpu=a.gpu, seq=a.seq, global_batch=a.global_batch, algorithm=a.algorithm,
                                   value_model=a.value_model, reference_model=not a.no_reference)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(out, indent=1, default=str))
        return 0 if out["feasible"] else 1
    try:
        req = request_from_args(a)
        layouts = enumerate_layouts(req)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ok = [l for l in layouts if l.feasible]
    bad = [l for l in layouts if not l.feasible]
    if a.json:
        print(json.dumps({"request": req.__dict__, "feasible": [l.to_dict() for l in ok],
                          "rejected": [l.to_dict() for l in bad]}, indent=1, default=str))
        return 0 if ok else 1
    rows = (f"packed rows of <= {req.max_tokens_per_microbatch} tokens" if req.packed() else f"seq {req.seq}")
    print(f"{req.model} {req.stage} on {req.gpus} x {req.gpu}: {rows}, global batch {req.global_batch}, "
          f"MFU assumption {req.mfu:.2f}{' (calibrated)' if a.calibration else ''}"
          + (f", {req.placement}{' one-step off-policy' if req.off_policy else ''}, responses "
             f"{req.response_len_dist or req.response_len}" if req.stage == "rlvr" else ""))
    for item in req.unbuilt():
        print(f"not built in this project yet (estimated as the hardware would run it): {item}")
    print(f"{len(ok)} feasible / {len(layouts)} candidates. Memory in GiB per trainer GPU "
          "(W weights, G grads, O optimizer shard, R frozen ref, V value model, A activations none/sel/full).")
    for l in ok[: a.top]:
        m = l.memory_gib
        frac = l.time_s.get("train_detail", l.time_s).get("recomputed_layer_fraction", 1.0)
        partial = f" ({frac:.0%} of layers)" if l.recompute == "full" and frac < 1 else ""
        print(f"- {l.name()}: recompute={l.recompute}{partial} total={m['total_' + l.recompute]:.1f}/{m['capacity']:.1f} "
              f"W{m['weights']:.1f} G{m['grads']:.1f} O{m['optimizer']:.1f} R{m['frozen_ref']:.1f} "
              f"V{m['value_model']:.1f} A{m['act_none']:.1f}/{m['act_selective']:.1f}/{m['act_full']:.1f}")
        t = l.time_s
        if l.num_engines:
            e = l.engine_gib
            print(f"    engine GPU: weights {e['weights']:.1f} GiB, KV {e['kv_cache']:.1f} GiB = {e['kv_tokens']} tokens "
                  f"({e['max_concurrent_seqs']} seqs)")
            g = t["generate_detail"]
            phases = (f"max(generate {t['generate_s']:.1f}, train {t['train_s']:.1f})" if t["off_policy"] else
                      f"generate {t['generate_s']:.1f} + train {t['train_s']:.1f}")
            print(f"    step ~{t['total_s']:.1f}s = {phases} + weight sync {t['weight_sync_s']:.1f}; "
                  f"{l.tokens_per_s_per_gpu:.0f} tok/s/GPU")
            print(f"    generate: {g['per_engine']} seqs/engine, batch {g['concurrency']}, {g['decode_steps']} decode "
                  f"steps (longest response {g['max_response']}) x {g['decode_step_s'] * 1e3:.1f} ms + prefill "
                  f"{g['prefill_s']:.1f}s")
        else:
            print(f"    step ~{t['total_s']:.2f}s (compute {t['compute_s']:.2f}, bubble {t['bubble_s']:.2f}, "
                  f"TP {t['tp_s']:.2f}, PP {t['pp_s']:.2f}, CP {t['cp_s']:.2f}, DP {t['dp_s']:.2f}); "
                  f"{l.tokens_per_s_per_gpu:.0f} tok/s/GPU")
        for n in l.notes:
            print(f"    note: {n}")
    if a.goal_s:
        print(_goal_line(ok, a.goal_s, unbuilt=bool(req.unbuilt())))
    if bad and a.show_rejected:
        print(f"rejected ({len(bad)}; showing {min(len(bad), a.show_rejected)}):")
        for l in bad[: a.show_rejected]:
            print(f"- {l.name()}: {'; '.join(l.reasons)}")
    return 0 if ok else 1


def _goal_line(ok: list, goal_s: float, unbuilt: bool = False) -> str:
    """Whether the fastest feasible layout meets ``goal_s``, and if not, which phase holds it back. ``unbuilt``: the
    request assumes something this project does not run yet (``PlanRequest.unbuilt``), said in the verdict."""
    if not ok:
        return f"goal {goal_s:g} s: no feasible layout"
    best = ok[0]
    t = best.time_s["total_s"]
    if t <= goal_s:
        return (f"goal {goal_s:g} s: met by {best.name()} at ~{t:.1f} s ({goal_s - t:.1f} s to spare)"
                + (", with what is not built in this project yet (above)" if unbuilt else ""))
    phases = {k: best.time_s[k] for k in ("generate_s", "train_s", "weight_sync_s") if k in best.time_s} or \
        {k: best.time_s[k] for k in ("compute_s", "bubble_s", "tp_s", "pp_s", "cp_s", "dp_s")}
    worst = max(phases, key=phases.get)
    return (f"goal {goal_s:g} s: NOT met; fastest is {best.name()} at ~{t:.1f} s, {t - goal_s:.1f} s over; its largest "
            f"phase is {worst[:-2]} ({phases[worst]:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
