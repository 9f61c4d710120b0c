"""Benchmark: 8-gram decontamination of ~1M training rows against eval sets on a CPU.

Builds a synthetic training JSONL (SFT rows, words drawn from a 20k-word Zipf vocabulary, ~60 words a row) with
a known number of planted eval instances, runs ``megatron_tulu.data.decontaminate.decontaminate`` on it, checks
the planted instances are exactly the matched ones, and times a naive Python baseline (set of 8-word tuples) on
a slice of the rows to give a same-run rows/s ratio.

    python benchmarks/decontaminate.py [--rows 1000000] [--eval 1000] [--baseline-rows 50000] [--workdir /tmp/dc]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from megatron_tulu.data import decontaminate as dc  # noqa: E402


def make_data(workdir: Path, rows: int, n_eval: int, planted: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(20000)])
    p = 1.0 / np.arange(1, 20001) ** 1.05
    p /= p.sum()
    evals = [" ".join(words[rng.choice(20000, 40, p=p)]) for _ in range(n_eval)]
    plant_rows = set(rng.choice(rows, planted, replace=False).tolist())
    plant_iter = iter(range(planted))
    lens = rng.integers(20, 100, size=rows)
    flat = words[rng.choice(20000, int(lens.sum()), p=p)]
    offs = np.concatenate([[0], np.cumsum(lens)])
    train = workdir / "train.jsonl"
    with open(train, "w") as f:
        for i in range(rows):
            text = " ".join(flat[offs[i]: offs[i + 1]])
            if i in plant_rows:  # eval instance k copied (whole) into this row
                text += " " + evals[next(plant_iter)]
            f.write(json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]}) + "\n")
    ev = workdir / "eval.jsonl"
    with open(ev, "w") as f:
        for e in evals:
            f.write(json.dumps({"messages": [{"role": "user", "content": e}]}) + "\n")
    return train, ev


def naive_baseline(train: Path, ev: Path, limit: int, n: int = 8) -> dict:
    """The obvious implementation: a Python set of word 8-gram tuples over the first ``limit`` training rows.

    Runs in a forked child so its peak memory can be read separately (RUSAGE_CHILDREN).
    """
    import multiprocessing as mp
    import resource

    def work(q):
        c0, t0 = time.process_time(), time.perf_counter()
        grams = set()
        with open(train) as f:
            for i, line in enumerate(f):
                if i >= limit:
                    break
                w = re.findall(r"\w+", dc.row_text(json.loads(line)).lower())
                grams.update(tuple(w[j: j + n]) for j in range(len(w) - n + 1))
        for line in open(ev):
            w = re.findall(r"\w+", dc.row_text(json.loads(line), "prompt").lower())
            _ = [tuple(w[j: j + n]) in grams for j in range(len(w) - n + 1)]
        q.put({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0, "grams": len(grams)})

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=work, args=(q,))
    proc.start()
    out = q.get()
    proc.join()
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return out


def ours(train: Path, ev: Path, limit: int | None) -> dict:
    src = train
    if limit is not None:  # same slice as the baseline
        src = train.with_name(f"train_head{limit}.jsonl")
        if not src.exists():
            with open(train) as f, open(src, "w") as g:
                for i, line in enumerate(f):
                    if i >= limit:
                        break
                    g.write(line)
    c0, t0 = time.process_time(), time.perf_counter()
    rep = dc.decontaminate({"train": str(src)}, {"eval": str(ev)})
    return {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0, "result": rep["results"][0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--eval", type=int, default=1000)
    ap.add_argument("--planted", type=int, default=30)
    ap.add_argument("--baseline-rows", type=int, default=50_000)
    ap.add_argument("--workdir", default="/tmp/dc_bench")
    a = ap.parse_args()
    wd = Path(a.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, ev = wd / "train.jsonl", wd / "eval.jsonl"
    meta = wd / "meta.json"
    want = {"rows": a.rows, "eval": a.eval, "planted": a.planted}
    if not (meta.exists() and json.loads(meta.read_text()) == want):
        train, ev = make_data(wd, a.rows, a.eval, a.planted)
        meta.write_text(json.dumps(want))
    t_gen = time.perf_counter() - t0
    import resource

    full = ours(train, ev, None)
    r = full["result"]
    assert r["matched"] == a.planted, r  # every planted instance found, nothing else
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    k = min(a.baseline_rows, a.rows)
    ours_k = ours(train, ev, k)
    naive_k = naive_baseline(train, ev, k)
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1), "python": platform.python_version(),
        "numpy": np.__version__, "rows": a.rows, "train_mb": round(train.stat().st_size / 2**20), "eval": a.eval,
        "planted": a.planted, "matched": r["matched"], "data_s": round(t_gen, 1),
        "full": {"wall_s": round(full["wall_s"], 1), "cpu_s": round(full["cpu_s"], 1),
                 "rows_per_cpu_s": round(a.rows / full["cpu_s"]), "peak_rss_gib": round(peak, 2)},
        f"slice_{k}": {"ours_cpu_s": round(ours_k["cpu_s"], 2), "naive_cpu_s": round(naive_k["cpu_s"], 2),
                       "cpu_speedup_vs_naive": round(naive_k["cpu_s"] / ours_k["cpu_s"], 2),
                       "naive_peak_rss_gib": round(naive_k["peak_rss_gib"], 2), "naive_8grams": naive_k["grams"]},
    }, indent=2))


if __name__ == "__main__":
    main()
