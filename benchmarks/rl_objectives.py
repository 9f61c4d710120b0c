"""Every RLVR objective on the same tiny task, same budget, several seeds, beside a no-update control.

    python benchmarks/rl_objectives.py [--steps 30 --seeds 3 --out benchmarks/]

Setup (the one of ``tests/objectives/conftest.py``, with held-out prompts added):

* task: ``tests/trainers/rlvr_helpers.make_arith_data`` addition questions ("What is a + b?", gsm8k verifier),
  generated for ``--rl-prompts + --heldout`` distinct (a, b) pairs. The SFT data covers ALL of them (noisy labels:
  ``--correct-of-10`` of each prompt's 10 answers right, the rest near misses); RLVR trains on ``--rl-prompts`` of
  them; the other ``--heldout`` prompts are never seen by RL (they measure whether an RL gain transfers);
* policy: the tiny random Llama (``trainer_helpers.make_tiny_hf``) after ``--sft-steps`` SFT steps (one SFT policy,
  shared by every run: the seeds vary the RL run only: prompt order and sampling seeds);
* RL: TorchEngine (fp32), 4 prompts x 16 samples per step, 12-token responses, 2 optimizer steps per rollout batch
  (the second is off-policy, so clipping / IS weights act), lr 1e-4 constant, ``--steps`` steps; every objective
  with its preset's defaults (``rlvr.algorithm``); ``control`` = GRPO at lr 0 (the policy never moves);
* after training, on the engine holding the final weights: greedy (T=0) accuracy on the held-out prompts and on
  the RL prompts, and T=1 accuracy of 16 samples per held-out prompt.

All runs happen in ONE spawned process, one after another (process start-up is slow on 2 cores). Each run's result
is written to ``<work>/results/<name>_s<seed>.json`` as soon as it ends; the report is then built from them
(``--report-only`` rebuilds it from an earlier work dir).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "trainers"))  # rlvr_helpers / trainer_helpers (also in the child process)

OBJECTIVES = ["control", "ppo", "grpo", "dapo", "dr_grpo", "gspo", "cispo", "rloo"]
LAST_K = 10
"""Final reward = mean over the last LAST_K steps."""


# ------------------------------------------------------------------------------------------------------ data


def make_data(sft_src: Path, out: Path, n_rl: int, n_heldout: int, correct_of_10: int) -> tuple[Path, list[dict]]:
    """``make_arith_data`` over n_rl + n_heldout prompts; the RL file keeps n_rl of them (4 copies each, as
    make_arith_data), the rest go to ``heldout.jsonl``. Returns (data root, held-out rows)."""
    from rlvr_helpers import make_arith_data

    root = make_arith_data(sft_src, out, n_prompts=n_rl + n_heldout, correct_of_10=correct_of_10)
    rows = [json.loads(line) for line in (root / "rlvr_train.jsonl").read_text().splitlines() if line.strip()]
    questions = sorted({r["messages"][0]["content"] for r in rows})
    rl_q = set(random.Random(1).sample(questions, n_rl))
    rl_rows = [r for r in rows if r["messages"][0]["content"] in rl_q]
    heldout, seen = [], set()
    for r in rows:
        q = r["messages"][0]["content"]
        if q not in rl_q and q not in seen:
            seen.add(q)
            heldout.append(r)
    heldout.sort(key=lambda r: r["messages"][0]["content"])
    with open(root / "rlvr_train.jsonl", "w", encoding="utf-8") as f:
        for r in rl_rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    with open(root / "heldout.jsonl", "w", encoding="utf-8") as f:
        for r in heldout:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    return root, heldout


# --------------------------------------------------------------------------------------- child-process body


def _driver_class():
    from megatron_tulu.trainers.rlvr.loop import RLVRDriver

    class BenchDriver(RLVRDriver):
        """RLVRDriver that counts generated tokens (every round, dynamic-sampling refills included) and, before
        the engine is shut down, evaluates the final weights on held-out prompts."""

        heldout_rows: tuple = ()
        eval_samples = 16

        def _generate(self, indices, step, round_=0):
            out = super()._generate(indices, step, round_)
            self.gen_tokens = getattr(self, "gen_tokens", 0) + sum(len(r) for r in out["responses"])
            self.gen_responses = getattr(self, "gen_responses", 0) + len(out["responses"])
            return out

        def fit(self):
            from megatron_tulu.preemption import PreemptionWatcher

            watcher = PreemptionWatcher()
            self.setup()
            tr = self.policy
            self.engine_version = tr.step
            try:
                summary = tr.run_steps(self.rollout_step, save=self.save, watcher=watcher)
                summary["eval"] = self.evaluate_final()
                return summary
            finally:
                for _, f in self.ahead:
                    if f is not None:
                        f.cancel() or f.exception()
                if self.engine is not None:
                    self.engine.shutdown()

        def _accuracy(self, rows, temperature, n, seed):
            from megatron_tulu.data.chat import tokenize_prompt
            from megatron_tulu.rewards.batch import verify_batch
            from megatron_tulu.rollout.base import SamplingConfig

            tok, data = self.task.tokenizer, self.cfg.data
            prompts = [tokenize_prompt(r, tok, None, data.template, data.add_bos) for r in rows]
            sampling = SamplingConfig(temperature=temperature, max_new_tokens=self.o.max_new_tokens, n=n, seed=seed,
                                      stop_token_ids=[tok.eos_token_id])
            gens = self.engine.generate([p["prompt_ids"] for p in prompts], sampling)
            records, eos = [], []
            for p, g in zip(prompts, gens):
                for s in range(n):
                    records.append({"dataset": p["dataset"], "ground_truth": p["ground_truth"],
                                    "response": tok.decode(g.token_ids[s], skip_special_tokens=True)})
                    eos.append(g.finish_reasons[s] == "stop")
            verdicts, _ = verify_batch(records, workers=0, timeout_s=self.cfg.rewards.timeout_s,
                                        paper_compat=self.cfg.rewards.paper_compat)
            # the training reward: a response without EOS scores nothing (non-EOS penalty), so count it wrong
            ok = [bool(v) and e for v, e in zip(verdicts, eos)]
            return sum(ok) / len(ok), records[:2]

        def evaluate_final(self):
            import torch.distributed as dist

            if dist.get_rank() != 0:
                return {}
            t0 = time.time()
            # sanity: the held-out prompts are tokenised as the task tokenises its own prompts
            from megatron_tulu.data.chat import tokenize_prompt

            rl_rows, seen = [], set()
            for line in (Path(self.cfg.data.root) / "rlvr_train.jsonl").read_text().splitlines():
                r = json.loads(line)
                if r["messages"][0]["content"] not in seen:
                    seen.add(r["messages"][0]["content"])
                    rl_rows.append(r)
            mine = {tuple(tokenize_prompt(r, self.task.tokenizer, None, self.cfg.data.template,
                                          self.cfg.data.add_bos)["prompt_ids"]) for r in rl_rows}
            theirs = {tuple(p["prompt_ids"]) for p in self.task.prompts}
            assert mine == theirs, "held-out prompt tokenisation differs from the task's"
            res = {}
            res["heldout_greedy"], res["heldout_greedy_examples"] = self._accuracy(self.heldout_rows, 0.0, 1, 0)
            res["heldout_t1"], _ = self._accuracy(self.heldout_rows, 1.0, self.eval_samples, 12345)
            res["rl_prompts_greedy"], _ = self._accuracy(rl_rows, 0.0, 1, 0)
            res["eval_s"] = time.time() - t0
            return res

    return BenchDriver


def bench_jobs(jobs: list[tuple], results_dir: str, heldout_rows: list) -> list:
    """Child-process body: ``("sft", overrides, name)`` or ``("rlvr", overrides, name)`` one after another; each
    RL run's result goes to ``results_dir/<name>.json`` (metrics.jsonl stays in its run dir)."""
    import traceback

    from trainer_helpers import step_records

    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.fit import Trainer
    from megatron_tulu.trainers.rlvr import RLVRConfig
    from megatron_tulu.trainers.sft import SFTConfig, SFTTask

    Driver = _driver_class()
    Driver.heldout_rows = tuple(heldout_rows)
    out = []
    for kind, overrides, name in jobs:
        t0 = time.time()
        if kind == "sft":
            cfg = load_config(SFTConfig, "sft/tiny", overrides)
            s = Trainer(cfg, SFTTask(cfg)).fit()
            res = {"name": name, "wall_s": time.time() - t0, "summary_wall_s": s.get("wall_s")}
        else:
            cfg = load_config(RLVRConfig, "rlvr/tiny", overrides)
            d = Driver(cfg)
            try:
                s = d.fit()
                res = {"name": name, "wall_s": time.time() - t0, "eval": s.get("eval", {}),
                       "gen_tokens": getattr(d, "gen_tokens", 0), "gen_responses": getattr(d, "gen_responses", 0),
                       "steps": step_records(cfg.run_dir)}
            except Exception as e:  # noqa: BLE001 - reported, the other runs go on
                res = {"name": name, "wall_s": time.time() - t0, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()}
        Path(results_dir, f"{name}.json").write_text(json.dumps(res))
        print(f"[rl_objectives] {name}: {res['wall_s']:.1f} s" + (f" ERROR {res['error']}" if "error" in res else ""),
              file=sys.stderr, flush=True)
        out.append({k: v for k, v in res.items() if k != "steps"})
    return out


# ------------------------------------------------------------------------------------------------ report


def _ms(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def summarise(results_dir: Path, objectives: list[str], seeds: int) -> dict:
    table = {}
    for name in objectives:
        runs = []
        for s in range(seeds):
            p = results_dir / f"{name}_s{s}.json"
            if p.exists():
                runs.append(json.loads(p.read_text()))
        ok = [r for r in runs if "error" not in r]
        row = {"n": len(ok), "errors": [r["error"] for r in runs if "error" in r]}
        if not ok:
            table[name] = row
            continue
        curves = []
        for r in ok:
            steps = {int(k): v for k, v in r["steps"].items()}
            curves.append([steps[k].get("reward/gen_accuracy", float("nan")) for k in sorted(steps)])
        row["curves"] = curves

        def per_run(fn, ok=ok):
            return [fn(r) for r in ok]

        def step_mean(r, key, last=None):
            recs = [v for _, v in sorted(((int(k), v) for k, v in r["steps"].items()))]
            recs = recs[-last:] if last else recs
            vals = [x[key] for x in recs if key in x]
            return sum(vals) / len(vals) if vals else float("nan")

        def step_max(r, key):
            vals = [v[key] for v in r["steps"].values() if key in v]
            return max(vals) if vals else float("nan")

        row["final_acc"] = per_run(lambda r: step_mean(r, "reward/gen_accuracy", LAST_K))
        row["first_acc"] = per_run(lambda r: _ms([r["steps"][k]["reward/gen_accuracy"]
                                                  for k in sorted(r["steps"], key=int)[:LAST_K]])[0])
        row["final_score"] = per_run(lambda r: step_mean(r, "reward/score", LAST_K))
        row["eos_frac"] = per_run(lambda r: step_mean(r, "reward/eos_frac", LAST_K))
        row["heldout_greedy"] = per_run(lambda r: r["eval"].get("heldout_greedy"))
        row["heldout_t1"] = per_run(lambda r: r["eval"].get("heldout_t1"))
        row["rl_prompts_greedy"] = per_run(lambda r: r["eval"].get("rl_prompts_greedy"))
        row["wall_s"] = per_run(lambda r: r["wall_s"])
        row["eval_s"] = per_run(lambda r: r["eval"].get("eval_s", 0.0))
        row["gen_s"] = per_run(lambda r: sum(v.get("time/generate_s", 0.0) for v in r["steps"].values()))
        row["train_s"] = per_run(lambda r: sum(v.get("time/train_s", 0.0) for v in r["steps"].values()))
        row["gen_tokens"] = per_run(lambda r: r["gen_tokens"])
        row["gen_responses"] = per_run(lambda r: r["gen_responses"])
        row["mm_mean_abs"] = per_run(lambda r: step_mean(r, "mismatch/mean_abs_diff"))
        row["mm_max_abs"] = per_run(lambda r: step_max(r, "mismatch/max_abs_diff"))
        row["mm_kl"] = per_run(lambda r: step_mean(r, "mismatch/kl"))
        row["probe_max"] = per_run(lambda r: step_max(r, "sync/probe_max_abs_diff"))
        row["clipfrac"] = per_run(lambda r: step_mean(r, "clipfrac"))
        row["metric_keys"] = sorted({k for v in ok[0]["steps"].values() for k in v})
        table[name] = row
    return table


def plot(table: dict, out_png: Path, steps: int, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in table if n != "control" and table[n].get("curves")]
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), sharex=True, sharey=True, squeeze=False)

    def band(ax, curves, color, label):
        n = min(len(c) for c in curves)
        xs = list(range(1, n + 1))
        m = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
        sd = [_ms([c[i] for c in curves])[1] for i in range(n)]
        ax.plot(xs, m, color=color, label=label, lw=1.6)
        ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], color=color, alpha=0.2)

    for ax, name in zip(axes.flat, names):
        if table.get("control", {}).get("curves"):
            band(ax, table["control"]["curves"], "grey", "control (lr 0)")
        band(ax, table[name]["curves"], "C0", name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("RL step")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy of generated responses")
    fig.suptitle(f"Tiny arithmetic RLVR: per-step accuracy of all 64 generated responses (reward = 10 x accuracy "
                 f"when EOS), mean ± std over {seeds} seeds, {steps} steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def fmt(xs, digits=3):
    m, sd = _ms(xs)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def markdown_table(table: dict) -> str:
    head = ("| objective | final acc (last 10 steps) | gain vs first 10 | held-out greedy | held-out T=1 | "
            "RL prompts greedy | wall s / run | tokens generated | mismatch mean abs Δlogp | max abs Δlogp | "
            "mismatch KL | clipfrac |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in table.items():
        if not r.get("n"):
            lines.append(f"| {name} | failed: {r.get('errors')} |")
            continue
        gain = [a - b for a, b in zip(r["final_acc"], r["first_acc"])]
        tok_m, tok_sd = _ms(r["gen_tokens"])
        lines.append(
            f"| {name} | {fmt(r['final_acc'])} | {fmt(gain)} | {fmt(r['heldout_greedy'])} | {fmt(r['heldout_t1'])} | "
            f"{fmt(r['rl_prompts_greedy'])} | {fmt(r['wall_s'], 1)} | {tok_m:,.0f} ± {tok_sd:,.0f} | "
            f"{_ms(r['mm_mean_abs'])[0]:.2e} | {max(r['mm_max_abs']):.2e} | {_ms(r['mm_kl'])[0]:.2e} | "
            f"{fmt(r['clipfrac'])} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks"))
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    ap.add_argument("--work", default="/tmp/rl_objectives_work", help="data, run dirs and per-run results")
    ap.add_argument("--rl-prompts", type=int, default=8)
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--correct-of-10", type=int, default=5)
    ap.add_argument("--sft-steps", type=int, default=120)
    ap.add_argument("--samples", type=int, default=16, help="responses per prompt")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--name", default="rl_objectives", help="stem of the .md / .png / .json outputs")
    args = ap.parse_args()
    objectives = args.objectives.split(",")
    work, out = Path(args.work), Path(args.out)
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    t_all = time.time()
    if not args.report_only:
        from rlvr_helpers import rlvr_overrides
        from trainer_helpers import base_overrides, make_tiny_hf

        from megatron_tulu.data.synthetic import generate
        from megatron_tulu.data.tokenizer import load_tokenizer
        from megatron_tulu.testing import run_distributed

        syn = work / "synthetic"
        if not (syn / "tokenizer").exists():
            generate(syn, seed=0, scale="ci")
        tiny = work / "hf_init"
        if not (tiny / "config.json").exists():
            make_tiny_hf(tiny, len(load_tokenizer(syn / "tokenizer")))
        data, heldout = make_data(syn, work / "data", args.rl_prompts, args.heldout, args.correct_of_10)
        jobs = []
        sft_hf = work / "sft" / "hf"
        if not (sft_hf / "config.json").exists():
            jobs.append(("sft", base_overrides(data, work / "sft", **{
                "model.init_hf": tiny, "train.max_steps": args.sft_steps, "checkpoint.interval": 0,
                "checkpoint.export_hf": "true"}), "sft"))
        common = {"rlvr.samples_per_prompt": args.samples, "train.global_batch_size": args.prompts,
                  "train.micro_batch_size": args.prompts, "rlvr.max_new_tokens": args.max_new_tokens,
                  "rlvr.num_minibatches": 2, "checkpoint.interval": 0, "checkpoint.keep_last": 1,
                  "train.max_steps": args.steps}
        for seed in range(args.seeds):  # seed-major: a cut-short run still has every objective on seed 0
            for name in objectives:
                key = f"{name}_s{seed}"
                if (results / f"{key}.json").exists() and "error" not in json.loads((results / f"{key}.json").read_text()):
                    continue
                extra = {"rlvr.algorithm": "grpo", "optim.lr": "0.0"} if name == "control" else {"rlvr.algorithm": name}
                run_dir = work / "runs" / key
                if run_dir.exists():
                    import shutil

                    shutil.rmtree(run_dir)
                jobs.append(("rlvr", rlvr_overrides(data, sft_hf, run_dir, **{
                    **common, "train.seed": 1234 + 1000 * seed, **extra}), key))
        print(f"[rl_objectives] {len(jobs)} jobs in one process", file=sys.stderr, flush=True)
        run_distributed(bench_jobs, 1, args=(jobs, str(results), heldout), timeout_s=6 * 3600)
    table = summarise(results, objectives, args.seeds)
    (out / f"{args.name}.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items()} for k, v in table.items()}, indent=1))
    plot(table, out / f"{args.name}.png", args.steps, args.seeds)
    print(markdown_table(table))
    print(f"[rl_objectives] total {time.time() - t_all:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
