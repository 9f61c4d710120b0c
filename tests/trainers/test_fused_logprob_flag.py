"""model.use_fused_logprob: the Triton kernel path (interpreter mode on CPU) gives the reference training curve."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(tmp: Path, data: Path, fused: bool) -> list[tuple[float, float]]:
    run_dir = tmp / f"fused_{fused}"
    cmd = [sys.executable, "-m", "launch.sft", "--config", "sft/tiny", f"data.root={data}", f"run_dir={run_dir}",
           "train.max_steps=2", "train.seq_length=128", "train.packing=false", "train.global_batch_size=2",
           "train.micro_batch_size=1", "logging.progress_bar=false", "logging.tensorboard=false",
           "checkpoint.export_hf=false", f"model.use_fused_logprob={str(fused).lower()}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(rec["loss"], rec["grad_norm"]) for rec in recs]


def test_fused_kernel_and_reference_give_the_same_curve(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "megatron_tulu.data.synthetic", "--out", str(data), "--scale", "ci"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    ref = _run(tmp_path, data, False)
    fused = _run(tmp_path, data, True)
    assert len(ref) == len(fused) == 2
    for (l0, g0), (l1, g1) in zip(ref, fused):
        assert l1 == pytest.approx(l0, rel=1e-5)
        assert g1 == pytest.approx(g0, rel=1e-4)
