"""DRY_RUN plans of every slurm/ script: they print, and the GPU (or CPU-process) counts add up to the allocation."""

from __future__ import annotations

import dataclasses

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launch import cluster
from megatron_tulu.preemption import REQUEUE_EXIT_CODE

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "slurm").glob("*_*.sh"))
SCRIPTS = [s for s in SCRIPTS if not s.name.startswith("_")]
STAGE_SIZES = [(s, z) for s in cluster.STAGES for z in cluster.SIZES]


def _dry_run(script: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MT_"))}
    env.update(DRY_RUN="1", **(extra_env or {}))
    return subprocess.run(["bash", str(script.relative_to(ROOT))], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_every_stage_and_size_has_a_script():
    names = {s.name for s in SCRIPTS}
    assert names == {f"{s}_{z}.sh" for s, z in STAGE_SIZES}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_header_has_signal_requeue_time_and_logs(script):
    head = cluster.read_sbatch_header(script)
    assert re.fullmatch(r"USR1@\d+", head["signal"]), head
    assert "requeue" in head and head["open-mode"] == "append"  # a requeued run appends to its log
    assert re.fullmatch(r"\d+:\d\d:\d\d", head["time"])
    assert head["output"].startswith("logs/")
    alloc = cluster.allocation(script, environ={})
    if script.stem.endswith("tiny"):
        assert alloc.gpus_per_node == 0 and alloc.nodes == 1
    else:
        assert alloc.gpus_per_node == 8 and alloc.tasks_per_node == 8


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_dry_run_prints_a_plan_that_adds_up(script):
    stage, size = script.stem.split("_")
    r = _dry_run(script)
    assert r.returncode == 0, r.stderr + r.stdout
    alloc = cluster.allocation(script, environ={})
    total = alloc.nodes * alloc.slots_per_node
    m = re.search(r"total: engines (\d+) \+ trainers (\d+)(?: \+ idle (\d+))? = (\d+) \(allocation (\d+)\) OK",
                  r.stdout)
    assert m, r.stdout
    engines, trainers, idle, s, allocated = (int(x or 0) for x in m.groups())
    assert engines + trainers + idle == s == allocated == total
    assert (idle > 0) == ("WARNING" in r.stdout)
    m = re.search(r"trainer: (\d+) ranks, TP=(\d+) PP=(\d+) CP=(\d+) DP=(\d+)", r.stdout)
    n, tp, pp, cp, dp = map(int, m.groups())
    assert n == trainers == tp * pp * cp * dp
    assert f"-m launch.{stage} --config {stage}/{size}" in r.stdout
    assert "checkpoint.resume=auto" in r.stdout and "run_dir=" in r.stdout
    # The structured plan: every node's slots are used once, ranks cover 0..N-1, engines + trainers = allocation.
    plan = cluster.build_plan(stage, size, alloc)
    per_node = [sum(len(nd["local_gpus"].get(k, [])) for k in ("engine", "trainer", "idle")) for nd in plan["nodes"]]
    assert per_node == [alloc.slots_per_node] * alloc.nodes
    assert sum(len(e["gpus"]) for e in plan["engines"]) + plan["trainer"]["gpus"] + plan["idle"] == total
    if size != "tiny":
        assert "memory (planner): feasible=" in r.stdout
        assert plan["feasible"], (plan["memory"]["reasons"], script.name)


def test_rlvr_405b_is_the_tulu3_layout():
    r = _dry_run(ROOT / "slurm/rlvr_405b.sh")
    assert r.returncode == 0, r.stderr
    assert "on 32 nodes x 8 GPUs = 256 GPUs" in r.stdout
    plan = cluster.build_plan("rlvr", "405b", cluster.allocation(ROOT / "slurm/rlvr_405b.sh", environ={}))
    assert plan["engines"], "no vLLM engines placed"
    for e in plan["engines"]:
        assert e["tp"] == 16
        nodes = sorted({g // 8 for g in e["gpus"]})
        assert len(nodes) == 2 and nodes[1] == nodes[0] + 1, f"engine {e['id']} does not span two nodes: {nodes}"
    trainer_nodes = [n for n in plan["nodes"] if n["role"] == "trainer"]
    assert len(trainer_nodes) * 8 == plan["trainer"]["gpus"] == 256 - 16 * len(plan["engines"]) - plan["idle"]
    assert "vLLM TP=16" in r.stdout and "Ray head" in r.stdout


def test_layout_env_override_and_bad_layout_error():
    r = _dry_run(ROOT / "slurm/rlvr_405b.sh", {"MT_NUM_ENGINES": "1", "MT_PP": "15", "MT_CP": "2"})
    assert r.returncode == 0, r.stderr
    assert "engines 16 + trainers 240 = 256" in r.stdout and "PP=15" in r.stdout
    r = _dry_run(ROOT / "slurm/sft_8b.sh", {"MT_TP": "2", "MT_PP": "2"})
    assert "TP=2 PP=2 CP=1 DP=4" in r.stdout
    assert r.stdout.rstrip().endswith("parallel.tp=2 parallel.pp=2"), "the trainer gets the same layout"
    r = _dry_run(ROOT / "slurm/sft_8b.sh", {"MT_TP": "2", "MT_CP": "2"})
    assert "TP=2 PP=1 CP=2 DP=4" in r.stdout
    assert r.stdout.rstrip().endswith("parallel.tp=2 parallel.cp=2"), "the trainer gets the same layout"
    r = _dry_run(ROOT / "slurm/sft_70b.sh", {"MT_TP": "3"})
    assert r.returncode != 0 and "not divisible by TP*PP*CP" in r.stderr
    r = _dry_run(ROOT / "slurm/sft_8b.sh", {"MT_TP": "two"})
    assert r.returncode != 0 and "MT_TP='two' is not an integer" in r.stderr


def test_container_dry_run_shows_pyxis_args():
    r = _dry_run(ROOT / "slurm/sft_8b.sh", {"MT_CONTAINER_IMAGE": "/images/mt.sqsh", "MT_DATA_DIR": "/lustre/d"})
    assert r.returncode == 0, r.stderr
    assert "--container-image=/images/mt.sqsh" in r.stdout
    assert re.search(r"--container-mounts=\S*/lustre/d:/lustre/d", r.stdout)
    assert "data.root=/lustre/d" in r.stdout  # the trainer reads the mounted data dir
    assert "python -m launch.sft" in r.stdout  # the image's python, not the host venv


def test_sbatch_header_parse_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH -N 2\n")
    with pytest.raises(ValueError, match=r"bad.sh:3"):
        cluster.read_sbatch_header(bad)


def test_allocation_from_slurm_env_wins_over_header():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_PER_NODE": "h100:8",
           "SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_NODELIST": "gpu[01-03]"}
    a = cluster.allocation(ROOT / "slurm/sft_8b.sh", environ=env)
    assert (a.nodes, a.gpus_per_node, a.hosts) == (3, 8, ["gpu01", "gpu02", "gpu03"])


def test_requeue_code_matches_preemption_module():
    text = (ROOT / "slurm/_common.sh").read_text()
    m = re.search(r"^MT_REQUEUE_EXIT_CODE=(\d+)$", text, re.M)
    assert m and int(m.group(1)) == REQUEUE_EXIT_CODE


def test_ray_start_wrapper_retries_a_failed_start(tmp_path):
    counter = tmp_path / "n"
    # Fails on the first call, succeeds on the second: the wrapper retries and returns 0.
    script = f'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ "$n" -ge 1 ]'
    r = subprocess.run([sys.executable, "-m", "launch.cluster", "ray-start", "--attempts", "3", "--", "sh", "-c",
                        script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert counter.read_text().strip() == "2" and "(attempt 1/3)" in r.stderr
    r = subprocess.run([sys.executable, "-m", "launch.cluster", "ray-start", "--attempts", "2", "--", "false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "(attempt 2/2)" in r.stderr


def test_rlvr_job_roles_on_gpu_layouts(tmp_path):
    """Inside an RLVR job (`launch.cluster layout` / `ray-start --plan` / `exec-trainer`): the trainer srun step
    covers exactly the trainer nodes, each raylet offers Ray only its node's engine GPUs (none on trainer-only
    nodes), and on a node shared with an engine the trainers see their own GPUs first."""
    import shlex

    plan = cluster.build_plan("rlvr", "405b", cluster.allocation(ROOT / "slurm/rlvr_405b.sh", environ={}))
    line = cluster.write_layout(plan, tmp_path / "plan.json")
    assert cluster.read_layout(tmp_path / "plan.json")["trainer"] == plan["trainer"]
    args = shlex.split(line[len("MT_TRAINER_SRUN=("):-1])
    assert args[:3] == ["--nodes=28", "--ntasks=224", "--ntasks-per-node=8"]
    assert args[3] == "--nodelist=" + ",".join(f"node{i}" for i in range(4, 32))  # engines on nodes 0-3
    engine_node, trainer_node = plan["nodes"][0], plan["nodes"][4]
    assert cluster.ray_node_resources(plan, engine_node) == (["--num-gpus=8"], {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
    assert cluster.ray_node_resources(plan, trainer_node) == (["--num-gpus=0", "--num-cpus=0"], {"CUDA_VISIBLE_DEVICES": ""})
    assert cluster.node_of_this_host(plan, {"SLURMD_NODENAME": "node4"}) is trainer_node
    with pytest.raises(ValueError, match="not in the plan"):
        cluster.node_of_this_host(plan, {"SLURMD_NODENAME": "elsewhere"})

    one_node = dataclasses.replace(cluster.allocation(ROOT / "slurm/rlvr_8b.sh", environ={}), nodes=1, hosts=["node0"])
    mixed = cluster.build_plan("rlvr", "8b", one_node, environ={"MT_TP": "1", "MT_NUM_ENGINES": "1"})
    node = mixed["nodes"][0]  # one engine GPU + 7 trainer GPUs on one node
    res, env = cluster.ray_node_resources(mixed, node)
    assert res == [f"--num-gpus={len(node['local_gpus']['engine'])}"]
    trainer_gpus = cluster.trainer_env(mixed, node)["CUDA_VISIBLE_DEVICES"].split(",")
    assert len(trainer_gpus) == 7 and not set(trainer_gpus) & set(env["CUDA_VISIBLE_DEVICES"].split(","))
