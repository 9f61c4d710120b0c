"""Every GPU measurement of this repo in one time-boxed run, for a short lease on one H100/H200.

The GPU numbers the benchmark reports wait for (issues 11 and 12) come from one command, sized to fit a lease of
about ten minutes. It runs each step as a subprocess with its own timeout, cut further so the whole run ends
inside ``--total-s``. The kernel benchmark runs last and gets whatever time is left as its ``--budget-s``.
After every step, ``summary.json`` and the combined ``session.log`` are rewritten, so a lease that ends early
still returns what finished. Steps, in order:

1. ``env``: nvidia-smi and the versions of torch, triton, megatron-core, liger-kernel and transformer-engine.
2. ``gpu_tests``: ``pytest -m gpu`` over ``tests/gpu`` and the CUDA cases of ``tests/gpu_readiness`` (CPU CI
   skips them).
3. ``weight_sync``: ``benchmarks/weight_sync.py --pack`` for an 8B state, TP 1 and 2.
4. ``train``: ``benchmarks/train_throughput.py`` with 4 layers, seq 4096 and 8192, bf16 and fp8, plain and
   fused heads. FP8 rows say "not measured" without TE.
5. ``kernels``: ``benchmarks/kernel_bench.py`` with the target shape first, then the rest of the grid until the
   budget is spent.

The machine is assumed to hold Python, PyTorch and Triton and nothing else, and it has no package registry.
Everything else the steps import (:data:`CARRIED`: megatron-core and its numpy/packaging, liger-kernel, pytest and
its plugins) travels as wheels in ``.whl/``: fetch them here with ``bash scripts/fetch_gpu_wheels.sh`` (for the
GPU box's Python 3.12 by default) and carry ``.whl``. This script installs them with ``pip --target`` into a
scratch directory and puts that directory on the children's PYTHONPATH. The ``env`` step also checks for a C
compiler and ``Python.h``, without which Triton cannot build its launcher.

Each step runs in a process group of its own, and the whole group is killed when the step ends or times out, so a
pytest or torchrun grandchild cannot keep the GPU into the next step.

    python3 benchmarks/gpu_session.py --out "$OUT"          # on the GPU machine
    .venv/bin/python benchmarks/gpu_session.py --smoke --out /tmp/gpu_session   # CPU: the runner itself works

At most 8 files land in ``--out``: the device tool returns no more than that.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIN_STEP_S = 5.0  # a step given less time than this is not started: it could not finish anything useful
SITE = Path("/tmp/megatron_tulu_site")  # where carried wheels are installed on the GPU machine
KILL_GRACE_S = 3.0  # SIGTERM to a step's process group, then SIGKILL after this long

# What the steps import beyond Python, PyTorch and Triton, carried as wheels (--requirements lists them pinned).
# A package pyproject.toml pins takes that pin (one owner); the others are pinned here, at the versions the
# project's test environment runs.
CARRIED = ("megatron-core", "numpy", "packaging", "liger-kernel", "pytest", "pytest-timeout", "pluggy",
           "iniconfig", "pygments")
PINS_NOT_IN_PYPROJECT = {"packaging": "26.4", "pluggy": "1.7.0", "iniconfig": "2.3.1", "pygments": "2.21.0"}

ENV_PROBE = r"""
import importlib, platform, shutil, subprocess, torch
if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi"], timeout=30)
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("triton", "megatron.core", "liger_kernel", "transformer_engine", "transformers", "pytest", "numpy"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "(no __version__)"))
    except Exception as e:
        print(name, "NOT IMPORTABLE:", type(e).__name__, str(e).splitlines()[0][:120] if str(e) else "")
# Triton compiles a small C launcher per kernel at first use: without a compiler or Python.h every kernel fails
import os, sysconfig
cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
print("C compiler", cc or "MISSING (Triton kernels cannot build their launcher)")
print("Python.h", header if os.path.exists(header) else f"MISSING at {header} (Triton kernels cannot build)")
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
        # ~10 s (imports, nvidia-smi); the cap only bounds a hang: 45 s was overrun once by the --smoke form in
        # make test, the imports sharing 2 cores with a vLLM test and a SLURM job
        dict(name="env", timeout=90, argv=[py, "-c", ENV_PROBE]),
        # the GPU-marked tests: tests/gpu, and the CUDA cases of the GPU-readiness checks (the fp32 dh product)
        dict(name="gpu_tests", timeout=120, argv=[py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                                                  "-m", "gpu", "tests/gpu",
                                                  "tests/gpu_readiness/test_fused_logprob_dh_accumulation.py"]),
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
             budget_margin_s=60 if gpu else 0, argv=bench("kernel_bench.py", [], "--md", "kernels_results.md")),
    ]


def requirements() -> list[str]:
    """``name==version`` for every package of :data:`CARRIED` (what ``scripts/fetch_gpu_wheels.sh`` downloads)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {}
    for spec in project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]:
        name, _, version = spec.partition("==")
        pinned[name.strip().lower()] = version.strip()
    pinned.update(PINS_NOT_IN_PYPROJECT)
    missing = [n for n in CARRIED if not pinned.get(n)]
    if missing:
        raise SystemExit(f"gpu_session: no exact pin for carried package(s) {missing} in pyproject.toml or "
                         "PINS_NOT_IN_PYPROJECT")
    return [f"{n}=={pinned[n]}" for n in CARRIED]


def install_wheels(wheel_dir: Path, log, site: Path = SITE) -> str | None:
    """pip-install carried wheels into ``site`` (no index, no deps); returns an error line or None."""
    wheels = sorted(str(p) for p in wheel_dir.glob("*.whl"))
    if not wheels:
        return f"no wheels in {wheel_dir}: {', '.join(CARRIED)} will be missing (scripts/fetch_gpu_wheels.sh)"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site), *wheels]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    log.write(f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}\n")
    return None if r.returncode == 0 else f"pip install of {len(wheels)} wheels failed (rc {r.returncode})"


def _kill_group(proc: subprocess.Popen) -> None:
    """End every process of ``proc``'s group (the step and whatever it started): SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is empty: nothing left holding the GPU
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):  # poll() reaps
            time.sleep(0.05)
    if proc.poll() is None:
        proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def run_step(argv: list[str], env: dict, log, timeout: float) -> int | None:
    """Run one step in a new process group; returns its exit code, or None if it ran past ``timeout``. Either
    way the group is killed after it, so no grandchild (pytest's, torchrun's workers) outlives the step."""
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        _kill_group(proc)


def run(out: Path, smoke: bool, total_s: float, wheel_dir: Path | None, site: Path = SITE) -> dict:
    """Run the steps; ``wheel_dir`` (None: none) is installed into ``site`` first and put on the steps' path."""
    out.mkdir(parents=True, exist_ok=True)
    t_end = time.monotonic() + total_s
    summary = {"smoke": smoke, "total_s": total_s, "steps": []}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(out / "session.log", "w") as log:
        if wheel_dir is not None:
            problem = install_wheels(wheel_dir, log, site)
            summary["wheels"] = problem or "installed"
            env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
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
                rc = run_step(argv, env, log, timeout)
                rec["status"] = (f"timed out after {timeout:.0f} s" if rc is None
                                 else "ok" if rc == 0 else f"failed (rc {rc})")
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
    ap.add_argument("--wheels", type=Path, default=None,
                    help="carried wheels to install first (default: .whl/ on a GPU run; none with --smoke)")
    ap.add_argument("--site", type=Path, default=SITE, help=f"where the wheels are installed (default {SITE})")
    ap.add_argument("--smoke", action="store_true", help="CPU: every step in its --smoke form (tests the runner)")
    ap.add_argument("--requirements", action="store_true",
                    help="print the carried packages as name==version lines (scripts/fetch_gpu_wheels.sh) and exit")
    a = ap.parse_args(argv)
    if a.requirements:
        print("\n".join(requirements()))
        return 0
    wheels = a.wheels if a.wheels is not None or a.smoke else REPO / ".whl"
    summary = run(a.out, a.smoke, a.total_s, wheels, a.site)
    print(f"[gpu_session] {'all steps ok' if summary['ok'] else 'SOME STEPS FAILED'}; see {a.out}/session.log")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
