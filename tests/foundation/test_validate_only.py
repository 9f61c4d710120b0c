"""``python -m launch.<stage> --config X --validate-only``: every shipped config loads and validates with no overrides
(it needs no data, tokenizer or checkpoint on disk), and a bad value exits non-zero naming the field, when the
config loads, before any process starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tulu.cli import stage_main
from megatron_tulu.config import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("pretrain", "sft", "dpo", "rlvr")
SHIPPED = sorted(f"{p.parent.name}/{p.stem}" for stage in STAGES for p in (CONFIG_DIR / stage).glob("*.yaml"))


def _schema(stage: str):
    if stage == "dpo":
        from megatron_tulu.trainers.dpo import DPOConfig
        return DPOConfig
    if stage == "rlvr":
        from megatron_tulu.trainers.rlvr import RLVRConfig
        return RLVRConfig
    from megatron_tulu.trainers.sft import SFTConfig
    return SFTConfig


def test_every_stage_and_size_ships_a_config():
    assert len(SHIPPED) >= 13 and {f"{s}/tiny" for s in STAGES} <= set(SHIPPED)
    assert {f"{s}/{size}" for s in ("sft", "dpo", "rlvr") for size in ("8b", "70b", "405b")} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_validates_with_no_overrides(name, capsys):
    stage = name.split("/")[0]
    rc = stage_main(f"launch.{stage}", _schema(stage), None, name, argv=["--config", name, "--validate-only"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.out.strip() == f"config {name}: valid ({_schema(stage).__name__})"


@pytest.mark.parametrize("override,field", [
    ("rlvr.algorithm=reinforce", "rlvr.algorithm"),
    ("rlvr.num_engines=2", "rlvr.engine_placement=ray"),
    ("rlvr.kl_kind=k4", "rlvr.kl_kind"),
    ("model.recompute=some", "model.recompute"),
    ("train.micro_batch_size=0", "train.micro_batch_size"),
])
def test_a_bad_value_exits_2_naming_the_field(override, field, capsys):
    from megatron_tulu.trainers.rlvr import RLVRConfig

    argv = ["--config", "rlvr/tiny", "--validate-only", "rlvr.engine_placement=local", override]
    assert stage_main("launch.rlvr", RLVRConfig, None, "rlvr/tiny", argv=argv) == 2
    assert field in capsys.readouterr().err


def test_the_layout_is_checked_against_nproc(capsys):
    from megatron_tulu.trainers.sft import SFTConfig

    argv = ["--config", "sft/tiny", "--validate-only", "--nproc", "3", "parallel.tp=2"]
    assert stage_main("launch.sft", SFTConfig, None, "sft/tiny", argv=argv) == 2
    assert "3 ranks do not split into parallel.tp x pp x cp = 2 x 1 x 1" in capsys.readouterr().err
    argv = ["--config", "sft/tiny", "--validate-only", "--nproc", "4", "parallel.tp=2"]
    assert stage_main("launch.sft", SFTConfig, None, "sft/tiny", argv=argv) == 0


def test_the_cli_validates_without_starting_anything(tmp_path):
    """As a user runs it, from a directory with no data, tokenizer or checkpoint (run_dir is never created)."""
    run_dir = tmp_path / "never"
    ok = subprocess.run([sys.executable, "-m", "launch.rlvr", "--config", "rlvr/405b", "--validate-only",
                         f"run_dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip() == "config rlvr/405b: valid (RLVRConfig)", ok.stderr
    bad = subprocess.run([sys.executable, "-m", "launch.dpo", "--config", "dpo/8b", "--validate-only",
                          "dpo.ref_mode=lazy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "dpo.ref_mode must be one of cached|on_the_fly, got 'lazy'" in bad.stderr
    assert not run_dir.exists()
