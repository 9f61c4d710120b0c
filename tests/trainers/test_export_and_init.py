"""A training checkpoint on demand: exported to HF by the converter CLI (same tensors as the trainer's own export
at the end of the run), and used as the start of a new stage (``model.init_mcore``), same as its HF export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer_helpers import step_records

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    from megatron_tulu.checkpoint.hf_io import HFReader

    return dict(HFReader(hf_dir).items())


def test_export_training_checkpoint_on_demand_equals_end_of_run_export(one_rank_runs, tmp_path):
    run = one_rank_runs["export_run"]
    out = tmp_path / "exported"
    r = subprocess.run([sys.executable, "-m", "megatron_tulu.checkpoint.convert", "mcore-to-hf", "--ckpt", str(run),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ours, trainer = _tensors(out), _tensors(run / "hf")
    assert sorted(ours) == sorted(trainer)
    for k in trainer:
        assert torch.equal(ours[k], trainer[k]), k
    assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()
    # a directory that is no checkpoint is refused, naming it
    bad = subprocess.run([sys.executable, "-m", "megatron_tulu.checkpoint.convert", "mcore-to-hf", "--ckpt",
                          str(tmp_path), "--out", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and str(tmp_path) in bad.stderr and not (tmp_path / "x").exists()


def test_init_from_training_checkpoint_equals_init_from_its_export(one_rank_runs):
    from_mcore, from_hf = step_records(one_rank_runs["from_mcore"]), step_records(one_rank_runs["from_hf"])
    ref = step_records(one_rank_runs["ref"])
    assert from_mcore[1]["loss"] == pytest.approx(from_hf[1]["loss"], rel=1e-6)
    assert from_mcore[1]["grad_norm"] == pytest.approx(from_hf[1]["grad_norm"], rel=1e-5)
    assert abs(from_mcore[1]["loss"] - ref[1]["loss"]) > 1e-3 * ref[1]["loss"]  # it did start from trained weights
