"""DRY_RUN plans of every slurm/ script: they print, the GPU (or CPU-process) counts add up to the allocation, and
the allocation is the config's (a script header, or SLURM inside a job, that disagrees fails naming both numbers)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tulu.plan import jobs, ray_cluster
from megatron_tulu.preemption import REQUEUE_EXIT_CODE

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "slurm").glob("*_*.sh"))
SCRIPTS = [s for s in SCRIPTS if not s.name.startswith("_")]
STAGE_SIZES = [(s, z) for s in jobs.STAGES for z in jobs.STAGE_SIZES[s]]


def _dry_run(script: Path, extra_env: dict | None = None, args: tuple = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MT_"))}
    env.update(DRY_RUN="1", **(extra_env or {}))
    path = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script)
    return subprocess.run(["bash", path, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _config(stage: str, size: str, overrides: tuple = ()):
    return jobs.load_stage_config(stage, f"{stage}/{size}", overrides)


def _plan(stage: str, size: str, alloc: jobs.Allocation | None = None, overrides: tuple = ()) -> dict:
    """The plan of ``configs/<stage>/<size>.yaml`` (with ``overrides``) on ``alloc`` (default: its own)."""
    return jobs.build_plan(_config(stage, size, overrides), stage, f"{stage}/{size}", alloc)


def test_every_stage_and_size_has_a_script():
    names = {s.name for s in SCRIPTS}
    assert names == {f"{s}_{z}.sh" for s, z in STAGE_SIZES}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_header_has_signal_requeue_time_and_logs(script):
    head = jobs.read_sbatch_header(script)
    assert re.fullmatch(r"USR1@\d+", head["signal"]), head
    assert "requeue" in head and head["open-mode"] == "append"  # a requeued run appends to its log
    assert re.fullmatch(r"\d+:\d\d:\d\d", head["time"])
    assert head["output"].startswith("logs/")
    alloc = jobs.slurm_allocation(script, environ={})
    stage, size = script.stem.split("_")
    if size == "tiny":
        assert alloc.gpus_per_node == 0 and alloc.nodes == 1
    else:  # one task per GPU; a prefgen task is a worker driving its engine's engine.tp GPUs
        gpus_per_task = jobs.gpus_per_task(jobs.load_stage_config(stage, f"{stage}/{size}"))
        assert alloc.gpus_per_node == 8 and alloc.tasks_per_node == 8 // gpus_per_task
    text = script.read_text()
    # The description line states the header's node count (rlvr_8b.sh once said "1 node" above --nodes=2), and
    # the layout is referred to its config, its one owner.
    described = re.search(r"(\d+) nodes?\b", text.splitlines()[1])
    assert described and int(described.group(1)) == alloc.nodes, text.splitlines()[1]
    assert f"configs/{stage}/{size}.yaml" in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_dry_run_prints_a_plan_that_adds_up(script):
    stage, size = script.stem.split("_")
    r = _dry_run(script)
    assert r.returncode == 0, r.stderr + r.stdout
    alloc = jobs.slurm_allocation(script, environ={})
    total = alloc.nodes * alloc.slots_per_node
    m = re.search(r"total: engines (\d+) \+ trainers (\d+)(?: \+ idle (\d+))? = (\d+) \(allocation (\d+)\) OK",
                  r.stdout)
    assert m, r.stdout
    engines, trainers, idle, s, allocated = (int(x or 0) for x in m.groups())
    assert engines + trainers + idle == s == allocated == total
    assert (idle > 0) == ("WARNING" in r.stdout)
    # Every run lives under the runs root the script passes ($MT_RUNS_DIR/<size>), at the config's run_dir.
    assert f"runs_root={ROOT}/runs/{size}" in r.stdout and f"run dir: {ROOT}/runs/{size}/{stage}\n" in r.stdout
    assert f"-m launch.{stage} --config {stage}/{size}" in r.stdout
    if stage == "prefgen":  # every slot is a worker's engine; no trainer
        m = re.search(r"workers: (\d+) \(one per SLURM task\)", r.stdout)
        assert m and int(m.group(1)) * jobs.gpus_per_task(_config(stage, size)) == engines == total and not trainers
        return
    m = re.search(r"trainer: (\d+) ranks, TP=(\d+) PP=(\d+) CP=(\d+) DP=(\d+)", r.stdout)
    n, tp, pp, cp, dp = map(int, m.groups())
    assert n == trainers == tp * pp * cp * dp
    assert "checkpoint.resume=auto" in r.stdout
    # The structured plan: every node's slots are used once, ranks cover 0..N-1, engines + trainers = allocation.
    plan = _plan(stage, size, alloc)
    per_node = [sum(len(nd["local_gpus"].get(k, [])) for k in ("engine", "trainer", "idle")) for nd in plan["nodes"]]
    assert per_node == [alloc.slots_per_node] * alloc.nodes
    assert sum(len(e["gpus"]) for e in plan["engines"]) + plan["trainer"]["gpus"] + plan["idle"] == total
    # The layout printed is the config's (no other source of TP/PP/engines exists).
    cfg = _config(stage, size)
    assert (tp, pp, cp) == (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.cp)
    if size != "tiny":
        assert "memory (planner): feasible=" in r.stdout
        assert plan["feasible"], (plan["memory"]["reasons"], script.name)


def test_rlvr_405b_is_the_tulu3_layout():
    r = _dry_run(ROOT / "slurm/rlvr_405b.sh")
    assert r.returncode == 0, r.stderr
    assert "on 32 nodes x 8 GPUs = 256 GPUs" in r.stdout
    plan = _plan("rlvr", "405b")
    assert plan["engines"], "no vLLM engines placed"
    for e in plan["engines"]:
        assert e["tp"] == 16
        nodes = sorted({g // 8 for g in e["gpus"]})
        assert len(nodes) == 2 and nodes[1] == nodes[0] + 1, f"engine {e['id']} does not span two nodes: {nodes}"
    trainer_nodes = [n for n in plan["nodes"] if n["role"] == "trainer"]
    assert len(trainer_nodes) * 8 == plan["trainer"]["gpus"] == 256 - 16 * len(plan["engines"]) - plan["idle"]
    assert "vLLM TP=16" in r.stdout and "Ray head" in r.stdout


@pytest.mark.slow
def test_layout_overrides_reach_the_plan_and_the_trainer_and_bad_layouts_fail():
    """Extra script arguments are config overrides: the plan and the trainer's command get the same layout."""
    r = _dry_run(ROOT / "slurm/rlvr_405b.sh", args=("rlvr.num_engines=1", "parallel.pp=15", "parallel.cp=2"))
    assert r.returncode == 0, r.stderr
    assert "engines 16 + trainers 240 = 256" in r.stdout and "TP=8 PP=15 CP=2 DP=1" in r.stdout
    r = _dry_run(ROOT / "slurm/sft_8b.sh", args=("parallel.tp=2", "parallel.pp=2"))
    assert r.returncode == 0, r.stderr
    assert "TP=2 PP=2 CP=1 DP=4" in r.stdout
    assert r.stdout.rstrip().endswith("parallel.tp=2 parallel.pp=2"), "the trainer gets the same layout"
    r = _dry_run(ROOT / "slurm/sft_70b.sh", args=("parallel.tp=3",))
    assert r.returncode == 2 and "not divisible by TP*PP*CP = 3" in r.stderr
    r = _dry_run(ROOT / "slurm/sft_8b.sh", args=("parallel.tp=two",))
    assert r.returncode == 2 and "parallel.tp" in r.stderr
    # The retired layout variables fail instead of being silently ignored.
    r = _dry_run(ROOT / "slurm/sft_8b.sh", {"MT_TP": "2"})
    assert r.returncode == 2 and "MT_TP: not read any more" in r.stderr


def test_the_planner_honours_config_overrides():
    """The same overrides the trainer gets change the plan (here through the Python API, as the job runs it)."""
    base = jobs.plan_for_job(ROOT / "slurm/sft_8b.sh", "sft", "8b", environ={})
    assert (base["trainer"]["tp"], base["trainer"]["dp"]) == (1, 16)
    cmd = ["python", "-m", "launch.sft", "--config", "sft/8b", "parallel.tp=4", "parallel.cp=2"]
    plan = jobs.plan_for_job(ROOT / "slurm/sft_8b.sh", "sft", "8b", cmd, environ={})
    assert {k: plan["trainer"][k] for k in ("tp", "pp", "cp", "dp")} == {"tp": 4, "pp": 1, "cp": 2, "dp": 2}
    rl = jobs.plan_for_job(ROOT / "slurm/rlvr_8b.sh", "rlvr", "8b",
                           ["python", "-m", "launch.rlvr", "--config", "rlvr/8b", "rlvr.num_engines=4"], environ={})
    assert len(rl["engines"]) == 4 and rl["trainer"]["gpus"] == 12


def test_rlvr_with_a_local_engine_plans_every_slot_as_a_trainer():
    plan = _plan("rlvr", "tiny", overrides=("rlvr.engine_placement=local",))
    assert plan["engines"] == [] and plan["local_engine"] and plan["trainer"]["gpus"] == 2
    plan = _plan("rlvr", "tiny", overrides=("rlvr.engine_placement=ray",))
    assert len(plan["engines"]) == 1 and plan["trainer"]["gpus"] == 1 and not plan["local_engine"]
    assert "inside trainer rank 0's process" in jobs.format_plan(_plan("rlvr", "tiny", overrides=(
        "rlvr.engine_placement=local",)))


def test_rlvr_colocated_on_two_nodes_plans_every_gpu_as_a_trainer_and_an_engine_share(tmp_path):
    """Colocated over 16 GPUs on two nodes: 16 trainer ranks, four TP4 engines on their GPUs, each node's started
    there (the plan used to call any engine inside the trainer "rank 0's local engine")."""
    plan = _plan("rlvr", "8b_grpo", overrides=("rlvr.engine_placement=colocated", "rlvr.num_engines=1", "cluster.nodes=2",
                                               "parallel.tp=4", "parallel.pp=1", "rlvr.engine_tp=4",
                                               "rlvr.engine_memory_fraction=0.4", "rlvr.engine_sleep_level=2"))
    assert plan["engines"] == [] and plan["trainer"]["gpus"] == 16 and not plan["engine_problems"]
    line = ray_cluster.write_layout(plan, tmp_path / "plan.json")
    assert "; MT_RAY_NEEDED=0; " in line and "--ntasks=16" in line  # no Ray: the engines live in the trainers
    text = jobs.format_plan(plan)
    assert "engines: 4 x vLLM TP=4 colocated on the trainer GPUs, each node's started by its first trainer rank" in text
    assert "rank 0's process" not in text


@pytest.mark.slow
@pytest.mark.parametrize("key,value", [("nodes", "3"), ("ntasks-per-node", "4")])
def test_a_header_that_disagrees_with_the_config_fails_naming_both_numbers(tmp_path, key, value):
    """A copy of sft_8b.sh whose #SBATCH line says otherwise than configs/sft/8b.yaml's cluster section."""
    text = (ROOT / "slurm/sft_8b.sh").read_text()
    old = re.search(rf"^#SBATCH --{key}=(\d+)$", text, re.M)
    copy = tmp_path / "slurm" / "sft_8b.sh"
    copy.parent.mkdir()
    copy.write_text(text.replace(old.group(0), f"#SBATCH --{key}={value}"))
    r = _dry_run(copy, {"MT_ROOT": str(ROOT)})
    assert r.returncode == 2, r.stdout
    config_says = {"nodes": f"has cluster.nodes={old.group(1)}",
                   "ntasks-per-node": f"plans {old.group(1)} tasks per node (cluster.tasks_per_node"}[key]
    assert f"#SBATCH --{key}={value} but config sft/8b {config_says}" in r.stderr, r.stderr
    assert "plan:" not in r.stdout  # nothing printed as if it were fine
    if key == "nodes":  # overriding the config to the header's number makes them agree again
        r = _dry_run(copy, {"MT_ROOT": str(ROOT)}, args=(f"cluster.nodes={value}",))
        assert r.returncode == 0 and f"on {value} nodes x 8 GPUs" in r.stdout, r.stderr


def test_inside_a_job_slurm_allocation_must_match_the_config():
    """SLURM's variables decide what a job got (`sbatch --nodes=3` overrides the header): a job whose allocation
    is not its config's fails before anything starts; with the config overridden to match, hosts are SLURM's."""
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_PER_NODE": "h100:8",
           "SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_NODELIST": "gpu[01-03]"}
    cmd = ["python", "-m", "launch.sft", "--config", "sft/8b", "run_dir=/x"]
    with pytest.raises(ValueError, match=r"this job: .*SLURM_JOB_NUM_NODES=3 but config sft/8b has cluster.nodes=2"):
        jobs.plan_for_job(ROOT / "slurm/sft_8b.sh", "sft", "8b", cmd, environ=env)
    plan = jobs.plan_for_job(ROOT / "slurm/sft_8b.sh", "sft", "8b", cmd + ["cluster.nodes=3"], environ=env)
    assert [n["host"] for n in plan["nodes"]] == ["gpu01", "gpu02", "gpu03"] and plan["trainer"]["dp"] == 24


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
        jobs.read_sbatch_header(bad)


def test_allocation_from_slurm_env_wins_over_header():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "3", "SLURM_GPUS_PER_NODE": "h100:8",
           "SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_NODELIST": "gpu[01-03]"}
    a = jobs.slurm_allocation(ROOT / "slurm/sft_8b.sh", environ=env)
    assert (a.nodes, a.gpus_per_node, a.hosts) == (3, 8, ["gpu01", "gpu02", "gpu03"])


def test_requeue_code_matches_preemption_module():
    text = (ROOT / "slurm/_common.sh").read_text()
    m = re.search(r"^MT_REQUEUE_EXIT_CODE=(\d+)$", text, re.M)
    assert m and int(m.group(1)) == REQUEUE_EXIT_CODE


@pytest.mark.slow
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

    plan = _plan("rlvr", "405b")
    line = ray_cluster.write_layout(plan, tmp_path / "plan.json")
    assert ray_cluster.read_layout(tmp_path / "plan.json")["trainer"] == plan["trainer"]
    srun, ray, plan_file, run_dir = line.split("; ")
    args = shlex.split(srun[len("MT_TRAINER_SRUN=("):-1])
    assert args[:3] == ["--nodes=28", "--ntasks=224", "--ntasks-per-node=8"] and ray == "MT_RAY_NEEDED=1"
    # the script takes the plan file and the run directory from here: the config's run_dir is their one owner
    assert (plan_file, run_dir) == (f"MT_PLAN={tmp_path / 'plan.json'}", f"MT_RUN_DIR={os.path.abspath('runs/405b/rlvr')}")
    moved = dict(plan, run_dir=str(tmp_path / "run"))
    default = tmp_path / "run" / f".mt_plan_{os.environ.get('SLURM_JOB_ID', '0')}.json"
    assert f"MT_PLAN={default}; " in ray_cluster.write_layout(moved)
    assert ray_cluster.read_layout(default)["run_dir"] == str(tmp_path / "run")
    assert args[3] == "--nodelist=" + ",".join(f"node{i}" for i in range(4, 32))  # engines on nodes 0-3
    engine_node, trainer_node = plan["nodes"][0], plan["nodes"][4]
    assert ray_cluster.ray_node_resources(plan, engine_node) == (["--num-gpus=8"],
                                                                 {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
    assert ray_cluster.ray_node_resources(plan, trainer_node) == (["--num-gpus=0", "--num-cpus=0"],
                                                                  {"CUDA_VISIBLE_DEVICES": ""})
    assert ray_cluster.node_of_this_host(plan, {"SLURMD_NODENAME": "node4"}) is trainer_node
    with pytest.raises(ValueError, match="not in the plan"):
        ray_cluster.node_of_this_host(plan, {"SLURMD_NODENAME": "elsewhere"})

    one_node = dataclasses.replace(jobs.slurm_allocation(ROOT / "slurm/rlvr_8b.sh", environ={}), nodes=1,
                                   hosts=["node0"])
    mixed = _plan("rlvr", "8b", one_node, overrides=("parallel.tp=1", "rlvr.num_engines=1"))
    node = mixed["nodes"][0]  # one engine GPU + 7 trainer GPUs on one node
    res, env = ray_cluster.ray_node_resources(mixed, node)
    assert res == [f"--num-gpus={len(node['local_gpus']['engine'])}"]
    trainer_gpus = ray_cluster.trainer_env(mixed, node)["CUDA_VISIBLE_DEVICES"].split(",")
    assert len(trainer_gpus) == 7 and not set(trainer_gpus) & set(env["CUDA_VISIBLE_DEVICES"].split(","))


def _exports_named(stage: str, cfg) -> list[str]:
    """The earlier stages' HF exports a config starts from (prefgen: its completion models)."""
    if stage == "prefgen":
        return [m.path for m in cfg.models()]
    return [cfg.model.init_hf] + ([cfg.rlvr.value_init_hf] if stage == "rlvr" else [])


def test_each_stage_finds_the_export_of_the_stage_before_it(tmp_path):
    """`sbatch slurm/sft_8b.sh`, then `sbatch slurm/dpo_8b.sh`: the scripts pass runs_root=$MT_RUNS_DIR/<size>, every
    shipped config puts its run under it and names the earlier stages' exports there, so each export a config starts
    from is where the stage that writes it puts it (the scripts' run dirs used to be $MT_RUNS_DIR/<stage>_<size>,
    the configs' exports runs/<size>/<stage>/hf: no stage found the one before it)."""
    runs = tmp_path / "runs"
    made, wanted = {}, []
    for stage in (*jobs.STAGES, "pretrain"):
        for path in sorted((ROOT / "configs" / stage).glob("*.yaml")):
            size = path.stem.split("_")[0]
            cfg = jobs.load_stage_config(stage, f"{stage}/{path.stem}", (f"runs_root={runs / size}",))
            run_dir = os.path.normpath(cfg.run_dir)
            assert run_dir.startswith(f"{runs / size}/"), (path.name, run_dir)  # under the runs root
            if path.stem == size and stage != "prefgen" and cfg.checkpoint.export_hf:
                made[os.path.join(run_dir, "hf")] = f"{stage}/{size}"
            wanted += [(f"{stage}/{path.stem}", os.path.normpath(p)) for p in _exports_named(stage, cfg)
                       if p and os.path.normpath(p).startswith(f"{runs}/")]
    missing = [(name, p) for name, p in wanted if p not in made]
    assert not missing, f"exports no shipped stage writes: {missing}"
    sources = {name: sorted(made[p] for n, p in wanted if n == name) for name, _ in wanted}
    assert sources["dpo/8b"] == sources["rm/8b"] == sources["prefgen/8b"] == ["sft/8b"]  # (its pool: site paths)
    assert sources["rlvr/8b"] == ["dpo/8b", "rm/8b"] and sources["rlvr/8b_dapo"] == ["dpo/8b"]
    assert sources["rlvr/70b"] == ["dpo/70b", "rm/8b"] and sources["rlvr/405b"] == ["dpo/405b", "rm/8b"]
    assert sources["prefgen/tiny"] == ["pretrain/tiny", "sft/tiny"] and sources["dpo/tiny"] == ["sft/tiny"]


def test_the_runs_dir_and_a_run_dir_reach_the_command_and_the_plan():
    r = _dry_run(ROOT / "slurm/dpo_8b.sh", {"MT_RUNS_DIR": "/lustre/runs"})
    assert r.returncode == 0, r.stderr
    assert "runs_root=/lustre/runs/8b" in r.stdout and "run dir: /lustre/runs/8b/dpo\n" in r.stdout
    assert "run_dir=" not in r.stdout  # the config's run_dir, under the runs root
    r = _dry_run(ROOT / "slurm/dpo_8b.sh", {"MT_RUN_DIR": "/scratch/dpo-try2"})
    assert r.returncode == 0, r.stderr
    assert "run_dir=/scratch/dpo-try2" in r.stdout and "run dir: /scratch/dpo-try2\n" in r.stdout
    # a recipe variant keeps its own run dir (resume=auto must not pick up the PPO run's checkpoints)
    r = _dry_run(ROOT / "slurm/rlvr_8b.sh", args=("--config", "rlvr/8b_dapo"))
    assert r.returncode == 0, r.stderr
    assert f"run dir: {ROOT}/runs/8b/rlvr_dapo\n" in r.stdout


def test_prefgen_plan_one_worker_per_engine_group():
    """prefgen's SLURM tasks are workers, each with its engines' GPUs of its node (engine.tp, x engine.num_engines
    when they are Ray actors)."""
    plan = _plan("prefgen", "8b")  # one TP8 engine per worker, a Ray actor (the container's vLLM is $MT_VLLM_PYTHON's)
    assert plan["workers"]["count"] == 4 and plan["trainer"]["gpus"] == 0
    assert "each with its own engines (vllm, 1 x TP=8 as Ray actors of a Ray it starts on its node)" in (
        jobs.format_plan(plan))
    assert [e["gpus"] for e in plan["engines"]] == [list(range(8 * w, 8 * w + 8)) for w in range(4)]
    # two TP4 engines per node: two tasks per node, the second taking GPUs 4-7 (SLURM_LOCALID 1) ...
    plan = _plan("prefgen", "8b", overrides=("engine.tp=4", "cluster.tasks_per_node=2"))
    assert plan["workers"]["count"] == 8 and jobs.summary(plan) == "4 nodes x 8 GPUs, 8 prefgen workers x 4 GPUs each"
    assert "node 1 (node1): workers 2-3 on local GPUs 0-3 | 4-7" in jobs.format_plan(plan)
    # ... or both behind one worker per node
    plan = _plan("prefgen", "8b", overrides=("engine.tp=4", "engine.num_engines=2"))
    assert plan["workers"]["count"] == 4 and [e["gpus"] for e in plan["engines"]][1] == list(range(8, 16))
    assert "own engines (vllm, 2 x TP=4 as Ray actors of a Ray it starts on its node) on 8 GPUs" in jobs.format_plan(plan)
    local = _plan("prefgen", "8b", overrides=("engine.placement=local",))
    assert "own engines (vllm, TP=8, in its process) on 8 GPUs" in jobs.format_plan(local)
    assert jobs.config_allocation(_config("prefgen", "8b", ("engine.tp=4",))).tasks_per_node == 2  # 0: per engine
    with pytest.raises(ValueError, match=r"cluster.tasks_per_node=8 must be 0 or cluster.gpus_per_node / 4 = 2"):
        _config("prefgen", "8b", ("engine.tp=4", "cluster.tasks_per_node=8"))
    with pytest.raises(ValueError, match=r"engines take 3 GPUs \(engine.tp=3 x engine.num_engines=1\), which do "
                                         r"not tile a node of 8 GPUs"):
        _plan("prefgen", "8b", overrides=("engine.tp=3",))  # (a local run may use 3 of a machine's GPUs)
    with pytest.raises(ValueError, match=r"engines take 12 GPUs \(engine.tp=4 x engine.num_engines=3\)"):
        _plan("prefgen", "8b", overrides=("engine.tp=4", "engine.num_engines=3"))
    r = _dry_run(ROOT / "slurm/prefgen_8b.sh", args=("engine.tp=4",))  # the header's one task per node disagrees
    assert r.returncode == 2 and "#SBATCH --ntasks-per-node=1 but config prefgen/8b plans 2 tasks per node" in r.stderr
