"""Weight-sync benchmark: the part that is ours (gather TP shards, rename/reshape to HF, pack into buckets)
against a plain device copy of the same bytes, plus the per-bucket overhead of the broadcast protocol over gloo.

  # one GPU, 8B-sized state (goal: copy_time / ours_time >= 0.8)
  python benchmarks/weight_sync.py --pack --model llama3.1-8b --tp 1 2 --json-out benchmarks/weight_sync_gpu.json
  # CPU, two gloo processes, BucketSender -> BucketReceiver (the real classes) at several bucket sizes
  python benchmarks/weight_sync.py --gloo --repeats 3 --json-out benchmarks/weight_sync_cpu_gloo.json
  # smoke (CPU, tiny model, seconds)
  python benchmarks/weight_sync.py --smoke

Pack part: for every megatron parameter of the (single-stage) model, its ``tp`` shards (already on the device,
as after the TP all-gather) become ``checkpoint.mapping.mcore_to_hf_pieces`` and are written straight into the byte
buckets of ``rollout.weight_sync.BucketSender.pack`` -- the code the trainer runs before broadcasting. Also timed:
the older merge-then-copy path (``mcore_to_hf`` builds each HF tensor, then it is copied into its bucket). The
baseline is one ``dst.copy_(src)`` of a flat buffer with the same byte count. The NCCL broadcast itself is not
timed here (one GPU cannot hold a two-rank NCCL group); the planner estimates it from bus bandwidth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform as pyplatform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from megatron_tulu import platform  # noqa: E402
from megatron_tulu.models.presets import get_preset  # noqa: E402


def _sync():
    if platform.has_gpu():
        torch.cuda.synchronize()


def make_shards(preset, tp: int, device, dtype=torch.bfloat16) -> list[tuple[str, list[torch.Tensor]]]:
    """Random megatron TP shards (pp=1) with the exact shapes ``hf_to_mcore_shard`` produces."""
    from megatron_tulu.checkpoint.mapping import expected_hf_shape, hf_to_mcore_shard, rank_param_names

    def meta(name):
        return torch.empty(expected_hf_shape(name, preset), device="meta", dtype=dtype)

    out = []
    for _, name in rank_param_names(preset, 0, 1):
        shards = []
        for r in range(tp):
            shape = hf_to_mcore_shard(name, meta, preset, r, tp).shape
            shards.append(torch.empty(shape, device=device, dtype=dtype).normal_())
        out.append((name, shards))
    return out


def pack(preset, params, metas, bucket_bytes, device, lazy: bool = True) -> int:
    """Rename + pack into buckets with the trainer's own sender (``BucketSender.pack``, no broadcast); returns
    the bytes packed. ``lazy``: shard pieces written straight into the buckets (``mcore_to_hf_pieces``, what
    ``RLVRDriver.sync_weights`` does); else merged HF tensors first (``mcore_to_hf``, the old path)."""
    from megatron_tulu.checkpoint.mapping import mcore_to_hf, mcore_to_hf_pieces
    from megatron_tulu.rollout.weight_sync import BucketSender

    def items():
        for name, shards in params:
            if lazy:
                yield from ((t.name, t) for t in mcore_to_hf_pieces(name, shards, preset))
            else:
                yield from mcore_to_hf(name, shards, preset)

    sender = BucketSender(None, metas, bucket_bytes, device, timeout_s=0.0)
    return sum(buf.numel() for _, buf in sender.pack(items()))


def bench_pack(model: str, tp: int, bucket_mb: int, repeats: int, device, layers: int | None = None) -> dict:
    from megatron_tulu.checkpoint.mapping import mcore_to_hf_pieces
    from megatron_tulu.rollout.weight_sync import TensorMeta, plan_buckets

    preset = get_preset(model)
    if layers:
        preset = preset.with_(num_layers=layers)
    params = make_shards(preset, tp, device)
    dtype = str(params[0][1][0].dtype).removeprefix("torch.")
    # metadata once (the real protocol sends it once per model)
    metas = [TensorMeta(t.name, dtype, t.shape) for name, shards in params
             for t in mcore_to_hf_pieces(name, shards, preset)]
    nbytes = sum(m.nbytes for m in metas)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = {"ours": [], "merged_first": [], "copy": []}
    for _ in range(repeats + 1):  # first round warms up allocator and kernels
        for key in times:
            _sync()
            t0 = time.perf_counter()
            if key == "copy":
                dst.copy_(src)
            else:
                packed = pack(preset, params, metas, bucket_mb * 2**20, device, lazy=key == "ours")
            _sync()
            times[key].append(time.perf_counter() - t0)
    ours, merged, copy = (statistics.median(times[k][1:]) for k in ("ours", "merged_first", "copy"))
    return {"kind": "pack", "model": preset.name, "layers": preset.num_layers, "tp_shards": tp,
            "bucket_mb": bucket_mb, "buckets": len(plan_buckets(metas, bucket_mb * 2**20)), "bytes": nbytes,
            "packed_bytes_incl_alignment": packed, "ours_s": ours, "merged_first_s": merged, "plain_copy_s": copy,
            "ours_gbps": nbytes / ours / 1e9, "copy_gbps": nbytes / copy / 1e9, "ratio_copy_over_ours": copy / ours,
            "ratio_copy_over_merged_first": copy / merged, "repeats": repeats}


# ------------------------------------------------------------------------------------------ gloo protocol


def _gloo_rank(port: int, total_mb: int, bucket_sizes: list[int], tensor_kb: int, repeats: int, timeout_s: float):
    """One rank of the gloo measurement: rank 0 sends with BucketSender, rank 1 receives with BucketReceiver."""
    from megatron_tulu.rollout.weight_sync import (BucketReceiver, BucketSender, collective_with_timeout,
                                                   init_stateless_group, metas_of)

    rank = int(os.environ["RANK"])
    pg = init_stateless_group("127.0.0.1", port, rank, 2, "gloo", timeout_s)
    n = total_mb * 1024 // tensor_kb
    tensors = [torch.full((tensor_kb * 256,), float(i), dtype=torch.float32) for i in range(n)]
    metas = metas_of([(f"t{i}", t) for i, t in enumerate(tensors)])
    rows = []
    for bucket_kb in bucket_sizes:
        proto, raw = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            if rank == 0:
                sender = BucketSender(pg, metas, bucket_kb * 1024, torch.device("cpu"), timeout_s)
                sender.send(tensors)
                nb = len(sender.plan)
            else:
                recv = BucketReceiver(pg, metas, bucket_kb * 1024, torch.device("cpu"), timeout_s)
                got = list(recv.receive())
                # the payload must arrive intact, not just the byte count
                assert len(got) == n and float(got[-1][1][0]) == float(n - 1), "gloo payload corrupted"
                nb = len(recv.plan)
            proto.append(time.perf_counter() - t0)
            buf = torch.zeros(bucket_kb * 1024, dtype=torch.uint8)  # raw broadcasts of the same buckets
            t0 = time.perf_counter()
            for b in range(nb):
                collective_with_timeout(pg, "broadcast", buf, timeout_s, f"raw bucket {b}")
            raw.append(time.perf_counter() - t0)
        rows.append({"bucket_kb": bucket_kb, "buckets": nb, "protocol_s": statistics.median(proto),
                     "raw_broadcast_s": statistics.median(raw)})
    return rows


def bench_gloo(total_mb: int, bucket_sizes: list[int], tensor_kb: int, repeats: int) -> dict:
    from megatron_tulu.parallel import free_port
    from megatron_tulu.testing import run_distributed

    port = free_port()
    res = run_distributed(_gloo_rank, 2, args=(port, total_mb, bucket_sizes, tensor_kb, repeats, 120.0), timeout_s=600)
    rows = []
    for r0, r1 in zip(res[0], res[1]):
        t = max(r0["protocol_s"], r1["protocol_s"])
        raw = max(r0["raw_broadcast_s"], r1["raw_broadcast_s"])
        rows.append({"bucket_kb": r0["bucket_kb"], "buckets": r0["buckets"], "protocol_s": t, "raw_broadcast_s": raw,
                     "protocol_per_bucket_ms": 1e3 * t / r0["buckets"], "raw_per_bucket_ms": 1e3 * raw / r0["buckets"],
                     "protocol_gbps": total_mb * 2**20 / t / 1e9,
                     # what packing/unpacking adds per tensor on top of the raw broadcasts of the same buckets
                     "tensors_per_bucket": total_mb * 1024 // tensor_kb / r0["buckets"],
                     "extra_per_tensor_ms": 1e3 * (t - raw) / (total_mb * 1024 // tensor_kb)})
    # t_bucket = overhead + bytes / bw: least-squares over the bucket sizes.
    xs = [r["bucket_kb"] * 1024 for r in rows]
    fits = {}
    for key in ("protocol", "raw"):
        ys = [r[f"{key}_per_bucket_ms"] / 1e3 for r in rows]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        fits[key] = {"overhead_ms": 1e3 * (my - slope * mx), "gbps": (1 / slope / 1e9) if slope > 0 else None}
    return {"kind": "gloo", "total_mb": total_mb, "tensor_kb": tensor_kb, "repeats": repeats, "rows": rows,
            "protocol_fit": fits["protocol"], "raw_fit": fits["raw"]}


def environment() -> dict:
    env = {"date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "python": sys.version.split()[0],
           "torch": torch.__version__, "host_cpu": pyplatform.processor() or pyplatform.machine(),
           "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_avg_1m_at_start": round(os.getloadavg()[0], 1), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    if platform.has_gpu():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", action="store_true", help="time gather+rename+pack vs a plain copy")
    ap.add_argument("--gloo", action="store_true", help="time the bucket protocol over gloo on CPU (2 processes)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, both parts (proves the script runs)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu"], help="cpu forces the CPU for --pack")
    ap.add_argument("--model", default="llama3.1-8b")
    ap.add_argument("--layers", type=int, help="keep only this many decoder layers (full width; CPU-sized runs)")
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2], help="TP shards to gather from")
    ap.add_argument("--bucket-mb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gloo-mb", type=int, default=16, help="state size sent over gloo")
    ap.add_argument("--gloo-buckets-kb", type=int, nargs="+", default=[4, 16, 64, 256, 1024])
    ap.add_argument("--tensor-kb", type=int, default=4, help="size of each tensor in the gloo state (<= smallest bucket)")
    ap.add_argument("--json-out", help="write results here")
    a = ap.parse_args(argv)
    platform.setup("cpu" if (a.device == "cpu" or a.smoke) else "auto")
    if a.smoke:
        a.pack = a.gloo = True
        a.model, a.tp, a.bucket_mb, a.repeats = "tiny", [1, 2], 1, 1
        a.gloo_mb, a.gloo_buckets_kb, a.tensor_kb = 2, [64, 256], 16
    if not (a.pack or a.gloo):
        ap.error("choose --pack, --gloo or --smoke")
    results = {"environment": environment(), "results": []}
    if a.pack:
        if not platform.has_gpu() and not a.smoke and a.model != "tiny":
            print("note: no GPU; timing the pack on CPU (not the number the report asks for)", file=sys.stderr)
        for tp in a.tp:
            r = bench_pack(a.model, tp, a.bucket_mb, a.repeats, platform.device(), a.layers)
            r["device"] = "cuda" if platform.has_gpu() else "cpu"
            results["results"].append(r)
            print(f"pack {r['model']} tp={tp}: ours {r['ours_s'] * 1e3:.1f} ms ({r['ours_gbps']:.1f} GB/s), plain copy "
                  f"{r['plain_copy_s'] * 1e3:.1f} ms ({r['copy_gbps']:.1f} GB/s), ratio {r['ratio_copy_over_ours']:.2f} "
                  f"(merge-then-copy path: {r['merged_first_s'] * 1e3:.1f} ms, ratio {r['ratio_copy_over_merged_first']:.2f}) "
                  f"on {r['device']}, {r['buckets']} buckets")
    if a.gloo:
        g = bench_gloo(a.gloo_mb, a.gloo_buckets_kb, a.tensor_kb, a.repeats)
        results["results"].append(g)
        for r in g["rows"]:
            print(f"gloo {a.gloo_mb} MB in {r['buckets']} x {r['bucket_kb']} KB buckets: protocol "
                  f"{r['protocol_per_bucket_ms']:.3f} ms/bucket ({r['protocol_gbps']:.2f} GB/s), raw broadcast "
                  f"{r['raw_per_bucket_ms']:.3f} ms/bucket, pack+unpack {r['extra_per_tensor_ms']:.3f} ms/tensor")
        print(f"fit t_bucket = overhead + bytes/bw: protocol {g['protocol_fit']}, raw broadcast {g['raw_fit']}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
