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


def naive_baseline(train: Path, ev: Path, limit: int, n: int = 8) -> float:
    """Rows/s of the obvious implementation: a Python set of word 8-gram tuples over the training rows."""
    t0 = time.perf_counter()
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
    return limit / (time.perf_counter() - t0)


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
    train, ev = make_data(wd, a.rows, a.eval, a.planted)
    t_gen = time.perf_counter() - t0
    import psutil

    t0 = time.perf_counter()
    rep = dc.decontaminate({"train": str(train)}, {"eval": str(ev)})
    t_dc = time.perf_counter() - t0
    rss = psutil.Process().memory_info().rss / 2**30
    r = rep["results"][0]
    assert r["matched"] == a.planted, r  # every planted instance found, nothing else
    base = naive_baseline(train, ev, min(a.baseline_rows, a.rows))
    ours = a.rows / t_dc
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "rows": a.rows, "train_mb": round(train.stat().st_size / 2**20), "eval": a.eval, "planted": a.planted,
        "matched": r["matched"], "gen_s": round(t_gen, 1), "decontaminate_s": round(t_dc, 1),
        "rows_per_s": round(ours), "naive_rows_per_s": round(base), "speedup_vs_naive": round(ours / base, 2),
        "rss_gib": round(rss, 2)}, indent=2))


if __name__ == "__main__":
    main()
