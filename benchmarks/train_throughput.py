"""Training throughput on one GPU: reduced-depth Llama 3.1 8B (full width), megatron-core forward + backward.

  # the measurement (one H100/H200): BF16 and TE FP8, seq 4096/8192, plain vs fused logprob head
  python benchmarks/train_throughput.py --layers 4 --seq 4096 8192 --precision bf16 fp8 --logprob plain fused \
      --json-out benchmarks/train_throughput_results.json
  # smoke on CPU (tiny preset, seconds): proves the script and its bookkeeping run
  python benchmarks/train_throughput.py --smoke

Per configuration: tokens/s, model TFLOP/s (FLOPs from ``megatron_tulu.plan.throughput.flops_per_token``:
6N + causal attention, N without the input embedding), MFU against the GPU's dense BF16 peak (also for FP8 runs,
so the two are comparable), and peak allocated memory. ``--json-out`` writes records the planner reads with
``python -m megatron_tulu.plan --calibration FILE``. FP8 needs Transformer Engine; without it FP8 rows are
recorded as "not measured" with the reason. The fused head uses ``kernels.fused_logprob.fused_linear_logprob``
(no [s, V] logits kept); the plain head computes logits and ``models.logprobs.vocab_parallel_logprobs``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository root goes first even when it is already on PYTHONPATH (gpu_session.py puts it there): the
# script's own folder, benchmarks/, is sys.path[0], and our top-level packages must win over anything in it.
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from megatron_tulu import platform  # noqa: E402
from megatron_tulu.models.presets import get_preset  # noqa: E402
from megatron_tulu.plan.hardware import GPUS  # noqa: E402
from megatron_tulu.plan.throughput import flops_per_token  # noqa: E402


def gpu_key() -> str | None:
    """Planner key of the local GPU (``h100-80gb``, ``h200``, ...) or None."""
    if not platform.has_gpu():
        return None
    name = torch.cuda.get_device_name().lower()
    for key in ("h200", "h100", "a100"):
        if key in name:
            return {"h100": "h100-80gb", "a100": "a100-80gb"}.get(key, key)
    return None


def _sync():
    if platform.has_gpu():
        torch.cuda.synchronize()


def row_key(preset, seq: int, precision: str, head: str, micro_batch: int) -> dict:
    """The fields that name a configuration (every row has them, measured or not)."""
    return {"model": preset.name, "layers": preset.num_layers, "seq": seq, "precision": precision, "head": head,
            "micro_batch": micro_batch}


def run_config(preset, seq: int, precision: str, head: str, steps: int, warmup: int, micro_batch: int) -> dict:
    from megatron_tulu.models.build import ModelOptions, build_model, have_transformer_engine
    from megatron_tulu.models.logprobs import vocab_parallel_logprobs

    row = row_key(preset, seq, precision, head, micro_batch)
    if precision == "fp8" and not (platform.has_gpu() and have_transformer_engine()):
        row["not_measured"] = "FP8 needs Transformer Engine on a GPU; `import transformer_engine` failed or no GPU"
        return row
    fused_impl = None
    if head == "fused":  # our own kernel: an ImportError here is a bug to see, not a row to skip
        if platform.has_gpu():
            from kernels.fused_logprob import fused_linear_logprob as fused_impl
        else:  # the Triton kernel needs a GPU; the smoke run exercises the same call through the reference
            from kernels.fused_logprob import linear_logprob_reference as fused_impl
        row["head_impl"] = fused_impl.__name__
    opts = ModelOptions(impl="auto", dtype="auto", fp8="hybrid" if precision == "fp8" else None,
                        head="hidden" if head == "fused" else "lm")
    model = build_model(preset, 1, 1, opts)
    row["params_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")  # CPU smoke runs fp32
    dev = platform.device()
    ids = torch.randint(0, preset.vocab_size, (micro_batch, seq + 1), device=dev)
    inp, tgt = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    pos = torch.arange(seq, device=dev).unsqueeze(0).expand(micro_batch, seq)

    def step():
        out = model(inp, pos, None)
        if head == "fused":
            h = out.reshape(-1, out.shape[-1])
            lp = fused_impl(h, model.output_layer.weight, tgt.reshape(-1), true_vocab_size=preset.vocab_size)
        else:
            lp = vocab_parallel_logprobs(out, tgt, true_vocab_size=preset.vocab_size)
        loss = -lp.float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    times = []
    if platform.has_gpu():
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        _sync()
        t0 = time.perf_counter()
        loss = step()
        _sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    tokens = micro_batch * seq
    flops = flops_per_token(preset, seq) * tokens
    row.update({"step_s": t, "tokens_per_s": tokens / t, "tflops": flops / t / 1e12, "loss": float(loss.detach()),
                "steps": steps, "warmup": warmup})
    key = gpu_key()
    if key:
        row["gpu"] = key
        row["mfu"] = row["tflops"] / GPUS[key].bf16_tflops
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    model = None  # frees the weights before empty_cache (``step`` shares this variable, so ``del`` would confuse linters)
    if platform.has_gpu():
        torch.cuda.empty_cache()
    return row


def measure_row(preset, seq: int, precision: str, head: str, steps: int, warmup: int, micro_batch: int) -> dict:
    """``run_config``, except that running out of GPU memory makes a row ("OOM at <GiB>") instead of ending the
    run: seq 8192 in BF16 on the local spec may not fit 80 GB, and the rows after it still can."""
    try:
        return run_config(preset, seq, precision, head, steps, warmup, micro_batch)
    except torch.OutOfMemoryError as e:
        peak = torch.cuda.max_memory_allocated() / 2**30 if platform.has_gpu() else float("nan")
        row = dict(row_key(preset, seq, precision, head, micro_batch), oom_gib=round(peak, 1),
                   not_measured=f"OOM at {peak:.1f} GiB ({str(e).splitlines()[0][:160]})")
    # out of the except block: the traceback (and the model its frames hold) is gone, so the memory can go too
    gc.collect()
    if platform.has_gpu():
        torch.cuda.empty_cache()
    return row


def environment() -> dict:
    import megatron.core

    env = {"date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
           "megatron_core": getattr(megatron.core, "__version__", "?"), "python": sys.version.split()[0],
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    try:
        import transformer_engine

        env["transformer_engine"] = transformer_engine.__version__
    except Exception as e:  # noqa: BLE001
        env["transformer_engine"] = f"not importable ({type(e).__name__})"
    env["device"] = torch.cuda.get_device_name() if platform.has_gpu() else "cpu"
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama3.1-8b")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers kept (full width)")
    ap.add_argument("--seq", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--precision", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    ap.add_argument("--logprob", nargs="+", default=["plain", "fused"], choices=["plain", "fused"])
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny preset on CPU, 1 step (checks the script runs)")
    ap.add_argument("--json-out")
    a = ap.parse_args(argv)
    from megatron_tulu.parallel import ParallelDims, destroy_distributed, init_distributed

    if a.smoke:
        platform.setup("cpu")
        preset = get_preset("tiny")
        a.seq, a.steps, a.warmup = [64], 1, 1
    else:
        platform.setup("auto")
        if not platform.has_gpu():
            print("train_throughput measures a GPU; no GPU here. Use --smoke to check the script on CPU.", file=sys.stderr)
            return 2
        preset = get_preset(a.model).with_(num_layers=a.layers)
    init_distributed(ParallelDims())
    torch.manual_seed(0)
    out = {"environment": environment(), "results": []}
    try:
        for seq in a.seq:
            for prec in a.precision:
                for head in a.logprob:
                    r = measure_row(preset, seq, prec, head, a.steps, a.warmup, a.micro_batch)
                    out["results"].append(r)
                    if a.json_out:  # after every row: a run cut short by its GPU lease keeps what it measured
                        Path(a.json_out).write_text(json.dumps(out, indent=1))
                    if "oom_gib" in r:
                        print(f"seq {seq} {prec} {head}: OOM at {r['oom_gib']} GiB")
                    elif "not_measured" in r:
                        print(f"seq {seq} {prec} {head}: NOT MEASURED ({r['not_measured']})")
                    else:
                        mfu = f", MFU {r['mfu']:.1%}" if "mfu" in r else ""
                        print(f"seq {seq} {prec} {head}: {r['tokens_per_s']:.0f} tok/s, {r['tflops']:.2f} TFLOP/s{mfu}, "
                              f"step {r['step_s'] * 1e3:.1f} ms, loss {r['loss']:.3f}")
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
