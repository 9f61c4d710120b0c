"""GPU readiness §6: one OOM must not kill the rest of a benchmark (seq 8192 BF16 may not fit 80 GB)."""

import json
import subprocess
import sys

import pytest
from bench_loader import ROOT

# Runs train_throughput's main in a child (it sets up a process group) with run_config made to run out of
# memory on the plain head, as seq 8192 would on an 80 GB GPU.
DRIVER = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from bench_loader import load_benchmark
tt = load_benchmark("train_throughput")
real = tt.run_config
def run_config(preset, seq, precision, head, *args):
    if head == "plain":
        torch.empty(1 << 20)  # something allocated, then the allocator gives up
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.91 GiB")
    return real(preset, seq, precision, head, *args)
tt.run_config = run_config
sys.exit(tt.main(["--smoke", "--precision", "bf16", "--logprob", "plain", "fused", "--json-out", {out!r}]))
"""


@pytest.mark.slow
def test_an_oom_row_is_recorded_and_the_run_goes_on(tmp_path):
    out = tmp_path / "tt.json"
    code = DRIVER.format(tests=str(ROOT / "tests" / "gpu_readiness"), out=str(out))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    plain, fused = json.loads(out.read_text())["results"]
    assert plain["head"] == "plain" and plain["not_measured"].startswith("OOM at") and "oom_gib" in plain
    assert fused["head"] == "fused" and fused["tokens_per_s"] > 0  # the row after the OOM was measured
    assert "seq 64 bf16 plain: OOM at" in r.stdout and "seq 64 bf16 fused:" in r.stdout


def test_the_planner_calibrates_from_a_results_file_with_oom_and_not_measured_rows(tmp_path):
    from megatron_tulu.plan.throughput import load_calibration

    rows = [{"precision": "bf16", "gpu": "h100-80gb", "not_measured": "OOM at 79.3 GiB", "oom_gib": 79.3},
            {"precision": "fp8", "not_measured": "FP8 needs Transformer Engine"},
            {"precision": "bf16", "gpu": "h100-80gb", "mfu": 0.41}]
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"results": rows}))
    assert load_calibration(path, gpu="h100-80gb") == 0.41
