"""``python -m launch.<stage> --config X --validate-only``: every shipped config loads and validates with no overrides
(it needs no data, tokenizer or checkpoint on disk), its job plan tiles its ``cluster`` allocation and agrees with
its SLURM script's ``#SBATCH`` header, and a bad value (or a layout that does not fit) exits non-zero naming the
field, when the config loads, before any process starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tulu.cli import stage_main
from megatron_tulu.config import CONFIG_DIR, load_config
from megatron_tulu.plan import jobs

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("pretrain", "sft", "dpo", "rm", "rlvr")
SHIPPED = sorted(f"{p.parent.name}/{p.stem}" for stage in STAGES for p in (CONFIG_DIR / stage).glob("*.yaml"))


def _schema(stage: str):
    if stage == "dpo":
        from megatron_tulu.trainers.dpo import DPOConfig
        return DPOConfig
    if stage == "rlvr":
        from megatron_tulu.trainers.rlvr import RLVRConfig
        return RLVRConfig
    if stage == "rm":
        from megatron_tulu.trainers.rm import RMConfig
        return RMConfig
    from megatron_tulu.trainers.sft import SFTConfig
    return SFTConfig


def test_every_stage_and_size_ships_a_config():
    assert len(SHIPPED) >= 13 and {f"{s}/tiny" for s in STAGES} <= set(SHIPPED)
    assert {f"{s}/{size}" for s in ("sft", "dpo", "rlvr") for size in ("8b", "70b", "405b")} <= set(SHIPPED)
    assert {f"rm/{size}" for size in jobs.STAGE_SIZES["rm"]} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_validates_with_no_overrides(name, capsys):
    stage = name.split("/")[0]
    rc = stage_main(f"launch.{stage}", _schema(stage), None, name, argv=["--config", name, "--validate-only"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.out.strip().startswith(f"config {name}: valid ({_schema(stage).__name__}; plan: ")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_job_plan_matches_its_slurm_script(name):
    """Every stage x size: the config's plan tiles its allocation, and the allocation is its script's header."""
    stage, size = name.split("/")
    cfg = load_config(_schema(stage), name)
    plan = jobs.build_plan(cfg, stage, name)
    assert plan["slots_total"] == plan["trainer"]["gpus"] + sum(len(e["gpus"]) for e in plan["engines"]) + plan["idle"]
    assert (plan["trainer"]["tp"], plan["trainer"]["pp"], plan["trainer"]["cp"]) == (
        cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.cp)
    # a recipe variant of a size (rlvr/8b_dapo) runs through its size's script: sbatch slurm/rlvr_8b.sh --config ...
    script = ROOT / "slurm" / f"{stage}_{size.split('_')[0]}.sh"
    if stage == "pretrain":  # no SLURM script: the plan alone
        assert not script.exists()
        return
    planned, header = jobs.config_allocation(cfg), jobs.slurm_allocation(script, environ={})
    assert (header.nodes, header.gpus_per_node, header.tasks_per_node) == (
        planned.nodes, planned.gpus_per_node, planned.tasks_per_node), f"{script.name} vs configs/{name}.yaml"
    assert plan["nodes_total"] == header.nodes and plan["slots_per_node"] == header.slots_per_node
    jobs.check_allocation(planned, header, name)  # the check DRY_RUN runs: silent when they agree
    if stage == "rlvr" and cfg.rlvr.engine_placement == "ray":
        assert len(plan["engines"]) == cfg.rlvr.num_engines
        assert all(e["tp"] == cfg.rlvr.engine_tp for e in plan["engines"])


def test_a_layout_that_does_not_fit_its_allocation_fails_validation(capsys):
    from megatron_tulu.trainers.sft import SFTConfig

    argv = ["--config", "sft/70b", "--validate-only", "parallel.tp=3"]
    assert stage_main("launch.sft", SFTConfig, None, "sft/70b", argv=argv) == 2
    assert "config 'sft/70b': 64 gpu slots not divisible by TP*PP*CP = 3" in capsys.readouterr().err
    # The allocation is an override like any other: 6 nodes x 8 = 48 slots do split into TP=3 x DP=16 ...
    argv = ["--config", "sft/70b", "--validate-only", "parallel.tp=3", "cluster.nodes=6"]
    assert stage_main("launch.sft", SFTConfig, None, "sft/70b", argv=argv) == 0
    assert "plan: 6 nodes x 8 GPUs, trainer TP=3 PP=1 CP=1 DP=16" in capsys.readouterr().out
    # ... and the global batch must split over the plan's DP (128 sequences over TP=8 on 3 nodes, DP=3, do not).
    argv = ["--config", "sft/70b", "--validate-only", "cluster.nodes=3"]
    assert stage_main("launch.sft", SFTConfig, None, "sft/70b", argv=argv) == 2
    assert "train.global_batch_size=128 is not a multiple of train.micro_batch_size x DP = 1 x 3" in (
        capsys.readouterr().err)


def test_the_job_plan_follows_config_overrides(capsys):
    from megatron_tulu.trainers.rlvr import RLVRConfig

    argv = ["--config", "rlvr/8b", "--validate-only", "parallel.tp=2", "rlvr.num_engines=4", "rlvr.engine_tp=2"]
    assert stage_main("launch.rlvr", RLVRConfig, None, "rlvr/8b", argv=argv) == 0
    assert "plan: 2 nodes x 8 GPUs, trainer TP=2 PP=1 CP=1 DP=4, 4 engines x TP=2" in capsys.readouterr().out
    argv = ["--config", "rlvr/8b", "--validate-only", "rlvr.num_engines=16"]  # engines take every GPU
    assert stage_main("launch.rlvr", RLVRConfig, None, "rlvr/8b", argv=argv) == 2
    assert "config 'rlvr/8b'" in capsys.readouterr().err


@pytest.mark.parametrize("override,field", [
    ("rlvr.algorithm=reinforce", "rlvr.algorithm"),
    ("rlvr.num_engines=2", "rlvr.engine_placement=ray"),
    ("rlvr.kl_kind=k4", "rlvr.kl_kind"),
    ("model.recompute=some", "model.recompute"),
    ("train.micro_batch_size=0", "train.micro_batch_size"),
    # not YAML (a bare ${...} in a flow mapping): named, not a parser traceback
    ("data.mixture.datasets=[{path: ${runs_root}/x.jsonl}]", "override 'data.mixture.datasets=[{path: ${runs_root}"),
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


@pytest.mark.slow
def test_the_cli_validates_without_starting_anything(tmp_path):
    """As a user runs it, from a directory with no data, tokenizer or checkpoint (run_dir is never created)."""
    run_dir = tmp_path / "never"
    ok = subprocess.run([sys.executable, "-m", "launch.rlvr", "--config", "rlvr/405b", "--validate-only",
                         f"run_dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == ("config rlvr/405b: valid (RLVRConfig; plan: 32 nodes x 8 GPUs, trainer TP=8 PP=14 "
                                 "CP=1 DP=2, 2 engines x TP=16)")
    bad = subprocess.run([sys.executable, "-m", "launch.dpo", "--config", "dpo/8b", "--validate-only",
                          "dpo.ref_mode=lazy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "dpo.ref_mode must be one of cached|on_the_fly, got 'lazy'" in bad.stderr
    assert not run_dir.exists()
