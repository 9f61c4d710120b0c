"""GPU readiness §1: the GPU run's fused-head rows must run, and no benchmark may hide an ImportError of ours.

gpu_session.py puts the repository on PYTHONPATH; a module in benchmarks/ named like a top-level package
(benchmarks/kernels.py did) then wins over it in a benchmark script, whose own folder is sys.path[0].
"""

import json
import os
import subprocess
import sys

import pytest
from bench_loader import ROOT, load_benchmark


def test_no_benchmark_module_shadows_a_top_level_package():
    top_level = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    top_level |= {p.stem for p in ROOT.glob("*.py")}
    assert {"kernels", "megatron_tulu", "launch"} <= top_level
    shadowing = sorted(p.name for p in (ROOT / "benchmarks").iterdir()
                       if p.stem in top_level and (p.suffix == ".py" or p.is_dir()))
    assert not shadowing, f"benchmarks/ modules named like top-level packages: {shadowing}"


@pytest.mark.slow
def test_fused_head_rows_run_with_the_repository_on_pythonpath(tmp_path):
    """The way gpu_session.py runs train_throughput.py: PYTHONPATH holds the repository root."""
    out = tmp_path / "tt.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--smoke", "--precision", "bf16",
                        "--logprob", "fused", "--json-out", str(out)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NOT MEASURED" not in r.stdout, r.stdout
    (row,) = json.loads(out.read_text())["results"]
    assert row["head"] == "fused" and row["head_impl"] == "linear_logprob_reference" and row["tokens_per_s"] > 0


def _raises(exc):
    def method(h, w, t):
        raise exc
    return method


def test_kernel_grid_raises_our_import_errors_and_rows_external_ones(monkeypatch):
    kb = load_benchmark("kernel_bench")
    shapes = dict(d=(16,), v=(40,), n=(8,))
    monkeypatch.setattr(kb, "METHODS", {"liger": _raises(ModuleNotFoundError("no liger", name="liger_kernel"))})
    ((_, res),) = kb.bench_logprob(shapes, cuda=False, only=None)
    assert res["liger"]["err"] == "not installed (liger_kernel)"
    monkeypatch.setattr(kb, "METHODS", {"ours": _raises(ModuleNotFoundError("gone", name="kernels.fused_logprob"))})
    with pytest.raises(ModuleNotFoundError, match="gone"):
        kb.bench_logprob(shapes, cuda=False, only=None)
