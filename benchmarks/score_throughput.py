"""Throughput of the batch scoring CLI on a synthetic mixed file (gsm8k / math / ifeval).

Usage: python benchmarks/score_throughput.py [--n 10000] [--workers 2] [--seed 0] [--baseline]

Writes a deterministic JSONL file of mixed records (realistic response lengths, about half correct,
a few symbolic MATH answers that need sympy and a few adversarial ones), then times
``python -m megatron_tulu.rewards.score FILE --workers W`` end to end (process start-up included).
``--baseline`` also times ``--workers 0`` (in-process) and checks both runs give identical verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILLER = ("First we note the quantities given in the problem. Then we combine them step by step, "
          "checking each intermediate result carefully before moving on. ")

MATH_PAIRS = [  # (ground truth, equivalent form, wrong form)
    (r"\frac{1}{2}", "0.5", r"\frac{1}{3}"),
    (r"2\sqrt{2}", r"\sqrt{8}", r"3\sqrt{2}"),
    (r"\frac{\pi}{3}", r"\frac{2\pi}{6}", r"\frac{\pi}{4}"),
    ("12", "12.0", "13"),
    (r"-\frac{3}{4}", "-0.75", r"\frac{3}{4}"),
    (r"(1,2)", r"\left(1, 2\right)", "(2,1)"),
    (r"x^2+2x+1", r"(x+1)^2", r"x^2+1"),  # symbolic: sympy path
    (r"90^\circ", "90", "45"),
]

IFEVAL_TEMPLATES = [
    ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [None]}, "no commas at all here", "one, two"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 30, "relation": "at least"}]},
     FILLER * 2, "too short"),
    ({"instruction_id_list": ["detectable_format:number_bullet_lists", "startend:end_checker"],
      "kwargs": [{"num_bullets": 2}, {"end_phrase": "Is there anything else I can help with?"}]},
     "* one\n* two\nIs there anything else I can help with?", "* one\nIs there anything else I can help with?"),
    ({"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
     FILLER.lower(), FILLER),
    ({"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "de"}]},
     "Das Wetter ist heute sehr schön und wir gehen nach dem Mittagessen in den Park.", FILLER),
    ({"instruction_id_list": ["length_constraints:number_sentences", "detectable_format:title"],
      "kwargs": [{"num_sentences": 5, "relation": "less than"}, None]},
     "<<Title>>\nOne. Two. Three.", "No title. One. Two. Three. Four. Five."),
]


def make_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = ("gsm8k", "math", "ifeval")[i % 3]
        good = rng.random() < 0.5
        prose = FILLER * rng.randint(1, 4)
        if kind == "gsm8k":
            answer = rng.randint(-50, 5000)
            shown = answer if good else answer + rng.randint(1, 9)
            rec = {"dataset": "gsm8k", "response": f"{prose}So the total is ${shown:,}.", "ground_truth": str(answer)}
        elif kind == "math":
            gt, same, wrong = rng.choice(MATH_PAIRS)
            shown = same if good else wrong
            if rng.random() < 0.005:
                shown, good = "10^{10^{10^{10}}}", False  # adversarial
            style = rng.randint(0, 2)
            if style == 0:
                resp = f"{prose}Thus the answer is $\\boxed{{{shown}}}$."
            elif style == 1:
                resp = f"{prose}\nFinal Answer: The final answer is ${shown}$. I hope it is correct."
            else:
                resp = f"{prose}We conclude that the value is ${shown}$"
            rec = {"dataset": "math", "response": resp, "ground_truth": gt}
        else:
            truth, ok, bad = rng.choice(IFEVAL_TEMPLATES)
            rec = {"dataset": "ifeval", "response": ok if good else bad,
                   "ground_truth": truth if rng.random() < 0.5 else json.dumps(truth)}
        rec["id"] = i
        rec["expected"] = good  # what the generator intended; the benchmark reports disagreements
        out.append(rec)
    return out


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_cli(path: str, workers: int) -> tuple[float, float, list[dict], str]:
    """(wall seconds, CPU seconds of the CLI and its workers, output rows, its stderr summary)."""
    cpu0 = _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "megatron_tulu.rewards.score", path, "--workers", str(workers)],
                          capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    cpu = _children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"score CLI failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return seconds, cpu, rows, proc.stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true", help="also time --workers 0 and compare verdicts")
    args = parser.parse_args()
    records = make_records(args.n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mixed.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
              f"python {platform.python_version()}")
        load = os.getloadavg()[0]
        seconds, cpu, rows, summary = time_cli(path, args.workers)
        assert [r["id"] for r in rows] == list(range(args.n)), "output order differs from input order"
        verdicts = [r["correct"] for r in rows]
        wrong = {}
        for r in rows:
            if r["correct"] != r["expected"]:
                wrong[r["dataset"]] = wrong.get(r["dataset"], 0) + 1
        print(f"load average before: {load:.1f}")
        print(f"workers={args.workers}: {args.n} records in {seconds:.2f}s wall = {args.n / seconds:.0f} records/s; "
              f"CPU {cpu:.2f}s (user+sys, CLI + workers)")
        print(f"  {summary}")
        print(f"  verdicts differing from the generator's intent: {sum(wrong.values())} {wrong}")
        if args.baseline:
            base_s, base_cpu, base_rows, base_summary = time_cli(path, 0)
            base_verdicts = [r["correct"] for r in base_rows]
            print(f"workers=0 (in-process): {base_s:.2f}s wall = {args.n / base_s:.0f} records/s, CPU {base_cpu:.2f}s; "
                  f"speed-up x{base_s / seconds:.2f}; identical verdicts: {base_verdicts == verdicts}")
            print(f"  {base_summary}")
        # An RLVR step: one verify_batch call on a few hundred records from a long-lived process.
        sys.path.insert(0, str(REPO))
        from megatron_tulu.rewards import verify_batch

        step = records[:300]
        for call in range(3):
            start = time.perf_counter()
            _, metrics = verify_batch(step, workers=args.workers)
            print(f"verify_batch(300 records, workers={args.workers}) call {call}: "
                  f"{(time.perf_counter() - start) * 1000:.0f} ms (timeouts {metrics['timeouts']})")


if __name__ == "__main__":
    main()
