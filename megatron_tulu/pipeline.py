"""The whole Tülu 3 recipe at tiny scale (the ``make demo`` main job):

synthetic suite + tokenizer -> pretrain (TP=2 over gloo) -> SFT -> on-policy preference pairs (prefgen: the SFT
policy's and the pretrained model's answers rated by the verifiers) -> reward model and DPO (both on the synthetic
pairs plus the on-policy ones) -> RLVR (PPO with its value model started from the reward model; GRPO by flag),
evaluating every policy stage on the held-out GSM8K-/MATH-/IFEval-like sets with the rollout engine and the
verifiers. Each stage is the real entry point (``launch/*.py``, same trainers and configs as at 405B), run as
its own process group. Finished stages are reused on a re-run (``--fresh`` starts over). Outputs in one run
directory: per-stage checkpoints and HF exports, metrics JSONL + TensorBoard, ``results.md`` and ``results.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from megatron_tulu.rollout.factory import resolve_engine_kind

TASKS = ["gsm8k", "math", "ifeval"]

# (stage, config, init from, nproc, overrides) -- the CI profile shrinks steps, not the code path.
PROFILES = {
    # full: ~11 min on an idle 2-core machine (benchmarks/demo.md). 400 pretrain + 200 SFT steps take SFT from
    # 5 % to ~50 % on clean GSM8K-like data. sft_chatty: half of the GSM8K-like SFT answers come from a chatty
    # teacher (a numeric remark after "#### N"), a habit SFT learns and RLVR's verifier reward removes (see
    # synthetic.chatty); without such a habit RLVR left held-out accuracy flat in every variant swept. DPO at
    # lr 5e-6 (1e-4 in dpo/tiny; 2e-5 cost 8 points of MATH) and RLVR at 5e-5 (1e-4 in rlvr/tiny): the larger
    # rates raised preference accuracy / train reward no more and cost held-out accuracy in the sweeps.
    "full": {"scale": "small", "pretrain": ["train.max_steps=400", "parallel.tp=2"], "sft": ["train.max_steps=200"],
             "prefgen": {"prompts": 512, "policy_n": 3, "onpolicy_fraction": 1.0},
             "rm": ["train.max_steps=100"],
             "dpo": ["train.max_steps=50", "optim.lr=5e-6"],
             "rlvr": ["train.max_steps=40", "rlvr.samples_per_prompt=4", "optim.lr=5e-5"],
             "eval_limit": 100, "nproc_pretrain": 2, "sft_chatty": 0.5},
    "ci": {"scale": "ci", "pretrain": ["train.max_steps=4", "parallel.tp=2", "train.global_batch_size=8"],
           "sft": ["train.max_steps=3", "train.global_batch_size=8"],
           "prefgen": {"prompts": 64, "max_prompts": 16, "policy_n": 2, "onpolicy_fraction": 1.0},
           "rm": ["train.max_steps=2", "train.global_batch_size=8"],
           "dpo": ["train.max_steps=2", "train.global_batch_size=8"],
           "rlvr": ["train.max_steps=2", "train.global_batch_size=8", "rlvr.max_new_tokens=16"], "eval_limit": 4,
           "nproc_pretrain": 2, "sft_chatty": 0.5},
}


# ----------------------------------------------------------------------------------------------- console progress
class MetricsTail:
    """New complete records of a growing ``metrics.jsonl``; starts at the file's current end (a resumed stage
    appends to the old file) and keeps a half-written last line for the next read."""

    def __init__(self, path: Path, from_start: bool = False):
        self.path = Path(path)
        self.pos = 0 if from_start or not self.path.exists() else self.path.stat().st_size
        self._partial = b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                chunk = f.read()
                self.pos = f.tell()
        except FileNotFoundError:
            return []
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        recs = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                recs.append(rec)
        return recs


def _fmt_duration(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _fmt_metrics(rec: dict) -> str:
    """The one or two numbers worth watching: per-token loss (pretrain/SFT), loss and preference accuracy (DPO),
    mean reward and verifier accuracy (RLVR)."""
    if "reward/score" in rec:
        out = f"reward {rec['reward/score']:.3g}"
        return out + (f" acc {rec['reward/accuracy']:.2f}" if "reward/accuracy" in rec else "")
    if "loss_per_token" in rec:
        return f"loss {rec['loss_per_token']:.3f}"
    if "loss" in rec:
        out = f"loss {rec['loss']:.4f}"
        return out + (f" acc {rec['rewards/accuracy']:.2f}" if "rewards/accuracy" in rec else "")
    return ""


def format_progress(stage: str, step: int | None, total: int | None, rec: dict | None, elapsed: float | None,
                    eta: float | None, status: str = "") -> str:
    """One console line: ``stage  step/total  metric  elapsed  ETA`` (or a status such as ``starting``)."""
    parts = [f"{stage:<8}"]
    if step is not None:
        width = len(str(total)) if total else 1
        parts.append(f"{step:>{width}}/{total}" if total else f"step {step}")
        if total:
            parts.append(f"{100 * min(step, total) / total:3.0f}%")
    if rec:
        m = _fmt_metrics(rec)
        if m:
            parts.append(m)
    if elapsed is not None:
        parts.append(_fmt_duration(elapsed))
    if eta is not None:
        parts.append(f"ETA {_fmt_duration(eta)}")
    if status:
        parts.append(status)
    return "  ".join(parts)


class StageProgress:
    """The console line of one stage. On a terminal it is rewritten in place (carriage return); otherwise a plain
    line is printed at every 10 % of the steps and when the stage ends."""

    def __init__(self, stage: str, total: int | None, stream: TextIO, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stage, self.total, self.stream, self.clock = stage, total, stream, clock
        self.tty = stream.isatty() if tty is None else tty
        self.t0 = clock()
        self.step: int | None = None
        self.rec: dict | None = None
        self._first: tuple[int, float] | None = None  # (step, time) of the first record seen: the rate excludes start-up
        self._last_t = self.t0
        self._decile = 0
        self._width = 0

    def update(self, recs: list[dict]) -> None:
        now = self.clock()
        for rec in recs:
            self.step, self.rec, self._last_t = int(rec["step"]), rec, now
            if self._first is None:
                self._first = (self.step, now)
        if recs and not self.tty and self.total and self.step is not None:
            decile = min(10, self.step * 10 // self.total)
            if decile > self._decile:
                self._decile = decile
                self._emit(self.line(), final=True)

    def eta(self) -> float | None:
        if not self.total or self._first is None or self.step is None or self.step <= self._first[0]:
            return None
        rate = (self.step - self._first[0]) / max(self._last_t - self._first[1], 1e-9)
        return max(0.0, (self.total - self.step) / rate - (self.clock() - self._last_t))

    def line(self, status: str = "") -> str:
        if not status and self.step is None:
            status = "starting"
        elif not status and self.total and self.step >= self.total:
            status = "saving checkpoint + HF export"
        return format_progress(self.stage, self.step, self.total, self.rec, self.clock() - self.t0,
                               None if status else self.eta(), status)

    def summary(self) -> str:
        """The line without a status or ETA: where training ended, and how long it took."""
        return format_progress(self.stage, self.step, self.total, self.rec, self.clock() - self.t0, None)

    def render(self, status: str = "") -> None:
        """Redraw the line in place (terminals only)."""
        if self.tty:
            self._emit(self.line(status), final=False)

    def finish(self, text: str) -> None:
        """The line's final state (kept on screen)."""
        self._emit(text, final=True)

    def _emit(self, text: str, final: bool) -> None:
        if self.tty:
            cols = shutil.get_terminal_size((120, 24)).columns - 1
            text = text[:cols]  # a wrapped line cannot be rewritten by a carriage return
            pad = " " * max(0, self._width - len(text))
            self._width = 0 if final else len(text)
            self.stream.write("\r" + text + pad + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _stage_total(overrides: list[str]) -> int | None:
    for ov in overrides:
        if ov.startswith("train.max_steps="):
            return int(ov.split("=", 1)[1])
    return None


def _run(cmd: list[str], log: Path, progress: StageProgress | None = None, metrics: Path | None = None,
         poll_s: float = 0.5, env: dict | None = None) -> None:
    """Run one stage command with its output in ``log``; while it runs, ``progress`` follows ``metrics``."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1", **(env or {}))
    tail = MetricsTail(metrics) if metrics is not None else None
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if progress is not None:
                    if tail is not None:
                        progress.update(tail.read())
                    progress.render()
        except BaseException:  # Ctrl-C or an error here: do not leave the stage running behind the console
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if progress is not None and tail is not None:
        progress.update(tail.read())
    if rc != 0:
        if progress is not None:
            progress.finish(progress.line(f"FAILED (exit code {rc}, see {log})"))
        tail_lines = "".join(Path(log).read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"stage command failed with exit code {rc}: {' '.join(cmd)}\n--- last lines of {log} ---\n{tail_lines}")


@contextlib.contextmanager
def console_to_log(log: Path):
    """Send everything this process (and every child it starts) writes to stdout/stderr into ``log``, at the file
    descriptor level, so library warnings and vLLM's start-up chatter stay out of the console; yields a stream on
    the real console for the progress lines."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        console.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in saved:
            os.close(f)
        console.close()


def run_pipeline(out: Path, profile: str = "full", fresh: bool = False, algorithm: str = "ppo", engine: str = "auto",
                 console: TextIO | None = None) -> dict:
    """Run (or reuse) every stage; ``console`` gets one progress line per stage, the results table and the paths of
    what was written (default: stdout). Each stage's own output goes to ``out/logs/<stage>.log``."""
    console = console or sys.stdout
    prof = PROFILES[profile]
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    data = out / "data"
    timings = {}
    engine = resolve_engine_kind(engine)
    # the evaluation engine lives in this process: keep vLLM's start-up chatter out of the demo's console
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    print(f"[demo] profile {profile}, engine {engine}, run directory {out} (per-stage logs in {logs}/)", file=console,
          flush=True)
    t0 = time.time()
    if not (data / "manifest.json").exists():
        bar = StageProgress("data", None, console)
        _run([sys.executable, "-m", "megatron_tulu.data.synthetic", "--out", str(data), "--scale", prof["scale"],
              "--sft-chatty", str(prof["sft_chatty"])], logs / "data.log", bar)
        bar.finish(format_progress("data", None, None, None, time.time() - t0, None,
                                   f"synthetic suite + tokenizer -> {data}"))
    else:
        print(format_progress("data", None, None, None, None, None, f"reused {data}"), file=console, flush=True)
    timings["data"] = time.time() - t0
    init = None
    results = {}
    eval_engine = None
    run = lambda stage, init, extra=(), evaluate=True: _run_stage(  # noqa: E731
        stage, out, data, prof, init, algorithm, engine, eval_engine, results, timings, logs, console, extra, evaluate)
    try:
        init, eval_engine = run("pretrain", None)
        sft_hf, eval_engine = run("sft", init)
        pairs = _run_prefgen(out, data, prof, engine, timings, logs, console)
        # RM and DPO both train on the synthetic pairs plus the on-policy ones, both from the SFT model
        mixture = _preference_mixture(data, pairs, prof["prefgen"]["onpolicy_fraction"])
        _, eval_engine = run("rm", sft_hf, [mixture], evaluate=False)
        init, eval_engine = run("dpo", sft_hf, [mixture])
        value_init = [f"rlvr.value_init_hf={out / 'rm' / 'hf'}"] if algorithm == "ppo" else []
        init, eval_engine = run("rlvr", init, value_init)
    finally:
        if eval_engine is not None:
            eval_engine.shutdown()
    timings["total"] = time.time() - t0
    pref = _pref_accuracy(out / "dpo")
    pref["rm"] = _pref_accuracy(out / "rm")
    pref["prefgen"] = json.loads((out / "prefgen" / "report.json").read_text())["counts"]
    table = results_table(results, pref)
    (out / "results.md").write_text(table + f"\n\nStage wall times (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}\n")
    plot(out, results)
    print(f"\nHeld-out accuracy (%) after each stage, {_fmt_duration(timings['total'])} in all:\n", file=console)
    print(table, file=console)
    print(f"\nresults: {out / 'results.md'}\nplot:    {out / 'results.png'}\n"
          f"per stage: {out}/<stage>/eval_tasks.json (accuracy, an example), metrics.jsonl, tb/, hf/ (HF export)\n"
          f"logs:    {logs}/", file=console, flush=True)
    return {"results": results, "timings": timings, "preference_accuracy": pref}


def _eval_engine(current, hf_dir: str, engine: str):
    """One rollout engine serves every stage's evaluation: started once, then loaded with each stage's HF export
    through the engine's weight update (the RLVR weight-sync path), instead of a new engine per stage."""
    if current is None:
        from megatron_tulu.eval.evaluate import ENGINE_TIMEOUT_S
        from megatron_tulu.rollout.factory import make_engine

        return make_engine(engine, hf_dir, timeout_s=ENGINE_TIMEOUT_S)
    from megatron_tulu.checkpoint.hf_io import HFReader

    current.update_weights(HFReader(hf_dir).items())
    return current


def _preference_mixture(data: Path, pairs: Path, onpolicy_fraction: float) -> str:
    """The synthetic pairs plus the on-policy ones (when prefgen made any)."""
    onpolicy = f", {{path: {pairs}, fraction: {onpolicy_fraction}}}" if pairs.stat().st_size else ""
    return f"data.mixture.datasets=[{{path: {data / 'pref_train.jsonl'}, fraction: 1.0}}{onpolicy}]"


def _run_prefgen(out: Path, data: Path, prof: dict, engine: str, timings: dict, logs: Path, console) -> Path:
    """On-policy pairs (unless they exist): the SFT policy (``policy_n`` answers per prompt) and the pretrained model
    (one) answer verifiable prompts, the verifiers rate them, the best and a worse answer become a pair."""
    run_dir, p = out / "prefgen", prof["prefgen"]
    t = time.time()
    if not (run_dir / "report.json").exists():
        bar = StageProgress("prefgen", None, console or sys.stdout)
        # prefgen/tiny names its prompts, eval sets, pool and policy under data_root and runs_root
        cmd = [sys.executable, "-m", "launch.prefgen", "--config", "prefgen/tiny", f"run_dir={run_dir}",
               f"data_root={data}", f"runs_root={out}", f"prompts.max_prompts={p.get('max_prompts', 'null')}",
               f"prompts.mixture.datasets=[{{path: {data / 'rlvr_train.jsonl'}, count: {p['prompts']}}}]",
               f"policy.n={p['policy_n']}", f"engine.kind={engine}"]
        # one vLLM engine per model in this process: the in-process engine starts in ~2 s instead of ~15 s
        _run(cmd, logs / "prefgen.log", bar, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
        timings["prefgen"] = time.time() - t
        counts = json.loads((run_dir / "report.json").read_text())["counts"]
        bar.finish(format_progress("prefgen", None, None, None, timings["prefgen"], None,
                                   f"{counts['pairs']} on-policy pairs from {counts['prompts']} prompts"))
    else:
        print(format_progress("prefgen", None, None, None, None, None, f"reused {run_dir / 'preferences.jsonl'}"),
              file=console, flush=True)
    return run_dir / "preferences.jsonl"


def _run_stage(stage, out, data, prof, init, algorithm, engine, eval_engine, results, timings, logs, console=None,
               extra=(), evaluate=True):
    """Train ``stage`` (unless its HF export exists) and evaluate it (unless its results exist or ``evaluate`` is
    off: the reward model is no policy)."""
    py = sys.executable
    run_dir = out / stage
    t = time.time()
    bar = StageProgress(stage, _stage_total(prof[stage]), console or sys.stdout)
    trained = not (run_dir / "hf" / "config.json").exists()
    if trained:
        # the progress is the console line above (read from metrics.jsonl), not a tqdm bar in the log file
        ov = [f"run_dir={run_dir}", f"data.root={data}", "logging.progress_bar=false", *prof[stage], *extra]
        if init:
            ov.append(f"model.init_hf={init}")
        if stage == "rlvr":
            ov += [f"rlvr.algorithm={algorithm}", f"rlvr.engine={engine}"]
            if algorithm == "grpo":
                ov.append("rlvr.samples_per_prompt=4")
        nproc = prof["nproc_pretrain"] if stage == "pretrain" else 0
        cmd = [py, "-m", f"launch.{stage}", "--config", f"{stage}/tiny"] + (["--nproc", str(nproc)] if nproc else []) + ov
        _run(cmd, logs / f"{stage}.log", bar, run_dir / "metrics.jsonl")
    timings[stage] = time.time() - t
    trained_line = bar.summary() if trained else ""  # frozen now: the evaluation's time is shown apart
    init = str(run_dir / "hf")
    if not evaluate:
        acc = _pref_accuracy(run_dir).get("after")
        bar.finish((trained_line or format_progress(stage, None, None, None, None, None, f"reused {run_dir / 'hf'}"))
                   + (f"  | held-out pair accuracy {acc:.2f}" if isinstance(acc, float) else ""))
        return init, eval_engine
    res_file = run_dir / "eval_tasks.json"
    if not res_file.exists():
        from megatron_tulu.eval.evaluate import evaluate

        bar.render("evaluating")
        t = time.time()
        eval_engine = _eval_engine(eval_engine, init, engine)
        res = evaluate(init, TASKS, str(data), tokenizer=str(data / "tokenizer"), engine=eval_engine,
                       limit=prof["eval_limit"])
        res_file.write_text(json.dumps(res, indent=2))
        timings[f"eval_{stage}"] = time.time() - t
        evals = f"| eval {_fmt_duration(timings[f'eval_{stage}'])}:"
    else:
        evals = "| eval:"
    results[stage] = json.loads(res_file.read_text())
    evals += "".join(f" {k} {100 * results[stage][k]['accuracy']:.1f}" for k in TASKS)
    if trained:
        bar.finish(f"{trained_line}  {evals}")
    else:
        bar.finish(format_progress(stage, None, None, None, None, None, f"reused {run_dir / 'hf'}  {evals}"))
    return init, eval_engine


def _pref_accuracy(run_dir: Path) -> dict:
    """Held-out preference accuracy of a DPO (implicit reward) or reward-model run at its first and last eval."""
    f = run_dir / "eval.jsonl"
    if not f.exists():
        return {}
    recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return {"before": recs[0].get("eval/accuracy"), "after": recs[-1].get("eval/accuracy")}


def results_table(results: dict, pref: dict) -> str:
    """Markdown table stage x task accuracy (like the Tülu 3 paper's), plus DPO preference accuracy."""
    lines = ["| stage | " + " | ".join(TASKS) + " | average |", "|---" * (len(TASKS) + 2) + "|"]
    for stage, res in results.items():
        accs = [res[t]["accuracy"] for t in TASKS]
        lines.append(f"| {stage} | " + " | ".join(f"{100 * a:.1f}" for a in accs) + f" | {100 * sum(accs) / len(accs):.1f} |")
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    if pref.get("prefgen"):
        c = pref["prefgen"]
        lines += ["", f"On-policy pairs (prefgen): {c['pairs']} from {c['prompts']} prompts "
                      f"({c.get('dropped_all_tied', 0)} prompts dropped: every answer rated the same)"]
    if pref.get("rm"):
        lines.append(f"Reward model held-out pairwise accuracy: before {fmt(pref['rm'].get('before'))} -> after "
                     f"{fmt(pref['rm'].get('after'))}")
    if "after" in pref:
        tie = " (at step 0 the policy is the reference: every margin is 0, a tie, counted wrong)" \
            if pref.get("before") == 0.0 else ""
        lines.append(f"DPO held-out preference accuracy: before {fmt(pref.get('before'))}{tie} -> after "
                     f"{fmt(pref.get('after'))}")
    return "\n".join(lines)


def plot(out: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for stage, key, ax in (("pretrain", "loss", axes[0]), ("sft", "loss", axes[0]), ("rlvr", "reward/score", axes[1])):
        f = out / stage / "metrics.jsonl"
        if f.exists():
            recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            ax.plot([r["step"] for r in recs if key in r], [r[key] for r in recs if key in r], label=f"{stage} {key}")
            ax.legend()
    axes[0].set_title("training loss")
    axes[1].set_title("RLVR verifier score")
    width = 0.8 / max(len(results), 1)
    for i, (stage, res) in enumerate(results.items()):
        axes[2].bar([j + i * width for j in range(len(TASKS))], [100 * res[t]["accuracy"] for t in TASKS], width, label=stage)
    axes[2].set_xticks([j + 0.4 - width / 2 for j in range(len(TASKS))], TASKS)
    axes[2].set_title("held-out accuracy (%) per stage")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--profile", default="full", choices=list(PROFILES))
    ap.add_argument("--fresh", action="store_true", help="start over instead of reusing finished stages")
    ap.add_argument("--algorithm", default="ppo", choices=["ppo", "grpo"])
    ap.add_argument("--engine", default="auto", choices=["auto", "vllm", "torch"])
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    # the console shows the progress lines; everything else this process prints (library warnings, the evaluation
    # engine's start-up) goes to logs/pipeline.log, and each stage's output to logs/<stage>.log
    with console_to_log(out / "logs" / "pipeline.log") as console:
        try:
            run_pipeline(out, args.profile, False, args.algorithm, args.engine, console=console)
        except Exception as e:  # noqa: BLE001 - the message (with the failed stage's log tail) is the report
            traceback.print_exc()  # into pipeline.log
            print(f"\n[demo] failed: {e}\n(this process's own output: {out / 'logs' / 'pipeline.log'})", file=console)
            return 1
    return 0
