"""Every GPU measurement of this repo in one time-boxed run, for a short lease on one H100/H200.

The GPU numbers the benchmark reports wait for (issues 11 and 12) come from one command, sized to fit a lease of
about ten minutes. It runs each step as a subprocess with its own timeout, cut further so the whole run ends
inside ``--total-s``. The kernel benchmark runs last and gets whatever time is left as its ``--budget-s``.
After every step, ``summary.json`` and the combined ``session.log`` are rewritten, so a lease that ends early
still returns what finished. Steps, in order:

1. ``env``: nvidia-smi and the versions of torch, triton, megatron-core, liger-kernel and transformer-engine.
2. ``gpu_tests``: ``pytest tests/gpu`` (the GPU-marked tests; CPU CI skips them).
3. ``weight_sync``: ``benchmarks/weight_sync.py --pack`` for an 8B state, TP 1 and 2.
4. ``train``: ``benchmarks/train_throughput.py`` with 4 layers, seq 4096 and 8192, bf16 and fp8, plain and
   fused heads. FP8 rows say "not measured" without TE.
5. ``kernels``: ``benchmarks/kernels.py`` with the target shape first, then the rest of the grid until the
   budget is spent.

The machine has no package registry. megatron-core and liger-kernel travel as wheels in ``.whl/``: fetch them
here with ``bash scripts/fetch_gpu_wheels.sh`` and carry ``.whl``. This script installs them with
``pip --target`` into a scratch directory and puts that directory on the children's PYTHONPATH.

    python3 benchmarks/gpu_session.py --out "$OUT"          # on the GPU machine
    .venv/bin/python benchmarks/gpu_session.py --smoke --out /tmp/gpu_session   # CPU: the runner itself works

At most 8 files land in ``--out``: the device tool returns no more than that.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIN_STEP_S = 5.0  # a step given less time than this is not started: it could not finish anything useful
SITE = Path("/tmp/megatron_tulu_site")  # where carried wheels are installed on the GPU machine

ENV_PROBE = r"""
import importlib, platform, shutil, subprocess, torch
if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi"], timeout=30)
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("triton", "megatron.core", "liger_kernel", "transformer_engine", "transformers"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "(no __version__)"))
    except Exception as e:
        print(name, "NOT IMPORTABLE:", type(e).__name__, str(e).splitlines()[0][:120] if str(e) else "")
"""


def steps(out: Path, smoke: bool) -> list[dict]:
    """The ordered steps: name, argv, timeout in seconds (``None``: what is left), the files each writes, and for
    an open-ended step the flag that hands it its time budget (``budget_flag``, ``budget_margin_s``).
    ``smoke`` swaps each benchmark's GPU arguments for its ``--smoke`` (CPU) form; the runner is the same."""
    py = sys.executable
    gpu = not smoke

    def bench(script, gpu_args, out_flag, out_file):
        return [py, f"benchmarks/{script}", *(gpu_args if gpu else ["--smoke"]), out_flag, str(out / out_file)]

    return [
        dict(name="env", timeout=45, argv=[py, "-c", ENV_PROBE]),
        dict(name="gpu_tests", timeout=120, argv=[py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                                                  "tests/gpu"]),
        dict(name="weight_sync", timeout=75, files=["weight_sync_gpu.json"],
             argv=bench("weight_sync.py", ["--pack", "--model", "llama3.1-8b", "--tp", "1", "2"],
                        "--json-out", "weight_sync_gpu.json")),
        dict(name="train", timeout=120, files=["train_throughput_results.json"],
             argv=bench("train_throughput.py", ["--layers", "4", "--seq", "4096", "8192", "--precision", "bf16",
                                                "fp8", "--logprob", "plain", "fused"],
                        "--json-out", "train_throughput_results.json")),
        # the grid is open-ended: it gets what is left (``timeout=None``) and, as its --budget-s, that less a
        # margin to finish the shape in flight and write its report
        dict(name="kernels", timeout=None, files=["kernels_results.md"], budget_flag="--budget-s",
             budget_margin_s=60 if gpu else 0, argv=bench("kernels.py", [], "--md", "kernels_results.md")),
    ]


def install_wheels(wheel_dir: Path, log) -> str | None:
    """pip-install carried wheels into ``SITE`` (no index, no deps); returns an error line or None."""
    wheels = sorted(str(p) for p in wheel_dir.glob("*.whl"))
    if not wheels:
        return f"no wheels in {wheel_dir}: megatron-core and liger-kernel will be missing (scripts/fetch_gpu_wheels.sh)"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(SITE), *wheels]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    log.write(f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}\n")
    return None if r.returncode == 0 else f"pip install of {len(wheels)} wheels failed (rc {r.returncode})"


def run(out: Path, smoke: bool, total_s: float, wheel_dir: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t_end = time.monotonic() + total_s
    summary = {"smoke": smoke, "total_s": total_s, "steps": []}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out / "session.log", "w") as log:
        if not smoke:
            problem = install_wheels(wheel_dir, log)
            summary["wheels"] = problem or "installed"
            env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        for step in steps(out, smoke):
            left = t_end - time.monotonic()
            timeout = left if step["timeout"] is None else min(step["timeout"], left)
            argv = list(step["argv"])
            if "budget_flag" in step:
                argv += [step["budget_flag"], f"{max(0.0, timeout - step['budget_margin_s']):.0f}"]
            shown = [a if len(a) < 120 else a.strip().splitlines()[0] + " ..." for a in argv]  # the probe script
            rec = {"name": step["name"], "argv": shown, "timeout_s": round(timeout, 1)}
            if timeout < MIN_STEP_S:
                rec.update(rc=None, status="not run: --total-s spent")
            else:
                log.write(f"\n===== {step['name']} (timeout {timeout:.0f} s)\n$ {' '.join(argv)}\n")
                log.flush()
                t0 = time.monotonic()
                try:
                    rc = subprocess.run(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        timeout=timeout).returncode
                    rec["status"] = "ok" if rc == 0 else f"failed (rc {rc})"
                except subprocess.TimeoutExpired:
                    rc = None
                    rec["status"] = f"timed out after {timeout:.0f} s"
                rec.update(rc=rc, seconds=round(time.monotonic() - t0, 1),
                           files=[f for f in step.get("files", []) if (out / f).exists()])
                log.flush()
            summary["steps"].append(rec)
            print(f"[gpu_session] {rec['name']}: {rec['status']}"
                  + (f" in {rec['seconds']} s" if "seconds" in rec else ""), flush=True)
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
    summary["ok"] = all(s["rc"] == 0 for s in summary["steps"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_session_out")),
                    help="directory for summary.json, session.log and the benchmark outputs (default $OUT)")
    ap.add_argument("--total-s", type=float, default=480.0,
                    help="wall-clock budget for all steps together (leave the lease room for a rerun)")
    ap.add_argument("--wheels", type=Path, default=REPO / ".whl", help="carried wheels to install (GPU run only)")
    ap.add_argument("--smoke", action="store_true", help="CPU: every step in its --smoke form (tests the runner)")
    a = ap.parse_args(argv)
    summary = run(a.out, a.smoke, a.total_s, a.wheels)
    print(f"[gpu_session] {'all steps ok' if summary['ok'] else 'SOME STEPS FAILED'}; see {a.out}/session.log")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
