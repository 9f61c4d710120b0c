"""GPU readiness §5: the one-command GPU run works on a bare box (Python, PyTorch, Triton; no registry).

Proved here on this machine's Python: a fresh venv holding only torch and triton gets the carried wheel set,
installed the way gpu_session.py installs it, and runs gpu_session.py --smoke: every step, and the files it leaves
for the device tool (at most 8). The cp312 set for the GPU box is checked to resolve offline against itself plus
the box's torch and triton.
"""

import json
import os
import subprocess
import sys
import zipfile

import pytest
from bare_box import make_bare_venv
from bench_loader import ROOT

PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
BOX_PROVIDES = {"torch": "2.11.0", "triton": "3.6.0"}  # what the lent H100/H200 image holds (device KINDS.md)


def _fetch(python_version: str, dest) -> list[str]:
    """scripts/fetch_gpu_wheels.sh for ``python_version`` into ``dest``; returns the requirement lines."""
    r = subprocess.run(["bash", "scripts/fetch_gpu_wheels.sh", "--python", python_version, str(dest)], cwd=ROOT,
                       env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return (dest / "requirements.txt").read_text().split()


@pytest.mark.slow
def test_gpu_session_smoke_runs_in_a_venv_of_torch_and_the_carried_wheels(tmp_path):
    wheels = tmp_path / "whl"
    reqs = _fetch(PY_VERSION, wheels)
    assert len(list(wheels.glob("*.whl"))) == len(reqs)
    py = make_bare_venv(tmp_path)
    probe = subprocess.run([str(py), "-c", "import megatron.core"], capture_output=True, text=True)
    assert probe.returncode != 0  # the venv really lacks what the wheels bring
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(py), "benchmarks/gpu_session.py", "--smoke", "--wheels", str(wheels),
                        "--site", str(tmp_path / "site"), "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    log = (out / "session.log").read_text() if (out / "session.log").exists() else ""
    assert r.returncode == 0, r.stdout + r.stderr + log[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wheels"] == "installed" and summary["ok"]
    assert [s["name"] for s in summary["steps"]] == ["env", "gpu_tests", "weight_sync", "train", "kernels"]
    assert [s["status"] for s in summary["steps"]] == ["ok"] * 5
    assert "megatron.core 0.16.1" in log and "C compiler" in log and "Python.h" in log
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files  # the device tool brings back at most 8 files
    assert {"session.log", "summary.json", "kernels_results.md", "train_throughput_results.json",
            "weight_sync_gpu.json"} <= set(files)
    assert len(json.loads((out / "train_throughput_results.json").read_text())["results"]) >= 1
    assert len(json.loads((out / "weight_sync_gpu.json").read_text())["results"]) >= 1
    md = (out / "kernels_results.md").read_text()
    assert "| ours |" in md and "Fused DPO loss" in md
    assert "--budget-s" in md  # the runner handed the kernel grid the time it had left
    assert "torch" in log and "===== kernels" in log


def _stub_wheel(directory, name: str, version: str) -> None:
    """A metadata-only wheel standing for a package the GPU box already has (resolution needs its version)."""
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(directory / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


@pytest.mark.slow
def test_the_cp312_set_for_the_gpu_box_resolves_offline(tmp_path):
    wheels, box = tmp_path / "whl", tmp_path / "box"
    reqs = _fetch("3.12", wheels)
    assert {"megatron-core", "liger-kernel", "numpy", "packaging", "pytest"} <= {q.split("==")[0] for q in reqs}
    box.mkdir()
    for name, version in BOX_PROVIDES.items():
        _stub_wheel(box, name, version)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(wheels),
                        "--find-links", str(box), "--python-version", "3.12", "--implementation", "cp",
                        "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--ignore-installed",
                        "--target", str(tmp_path / "target"), "-r", str(wheels / "requirements.txt")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    would = r.stdout.split("Would install", 1)[1].split()
    installed = {w.rsplit("-", 1)[0].lower().replace("_", "-") for w in would}
    assert installed == {q.split("==")[0] for q in reqs} | set(BOX_PROVIDES)  # nothing else is needed
