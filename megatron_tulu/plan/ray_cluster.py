"""Inside an RLVR job: a job plan (:mod:`megatron_tulu.plan.jobs`) turned into srun arguments, per-node Ray
resources and trainer GPU visibility; plus Ray start-up and readiness for ``slurm/_ray.sh``.

The RLVR scripts write the plan once (:func:`write_layout`, on the batch host) where every srun step reads it:
each raylet offers Ray only its node's engine slots (:func:`ray_node_resources`), so the engines' placement
group can only land there, and each trainer rank sees its own GPUs in rank order (:func:`trainer_env`).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

from megatron_tulu.checkpoint.hf_io import write_atomic


def write_layout(plan: dict, out: str | Path | None = None) -> str:
    """Write ``plan`` (JSON) where every srun step of the job reads it (``out``, default the run directory's
    ``.mt_plan_<job id>.json``), and return the shell line that the RLVR scripts ``eval``: ``MT_TRAINER_SRUN=(...)``,
    the srun options that start exactly the trainer ranks on the trainer nodes (engine-only nodes run nothing but
    Ray), ``MT_RAY_NEEDED=1`` when the plan places engines as Ray actors, else 0 (local and colocated engines run
    inside the trainers: no Ray cluster is started), and ``MT_PLAN``/``MT_RUN_DIR``: the plan file and the run
    directory (the config's ``run_dir``, the one owner of where the run lives)."""
    nodes = [n for n in plan["nodes"] if n["trainer_ranks"]]
    per = {len(n["trainer_ranks"]) for n in nodes}
    if len(per) != 1:
        raise ValueError(f"trainer ranks per node differ across trainer nodes ({sorted(per)}): one srun step "
                         "cannot start them; choose a layout whose trainer nodes are alike")
    # absolute (relative ones are the checkout's, where this runs): the batch shell runs in the submission directory
    run_dir = os.path.abspath(plan["run_dir"])
    out = os.path.abspath(out or Path(run_dir) / f".mt_plan_{os.environ.get('SLURM_JOB_ID', '0')}.json")
    write_atomic(out, json.dumps(plan, indent=1, default=str))  # a step never reads a half-written plan
    args = [f"--nodes={len(nodes)}", f"--ntasks={plan['trainer']['gpus']}", f"--ntasks-per-node={per.pop()}",
            f"--nodelist={','.join(n['host'] for n in nodes)}"]
    return ("MT_TRAINER_SRUN=(" + " ".join(shlex.quote(a) for a in args) + ")"
            + f"; MT_RAY_NEEDED={1 if plan['engines'] else 0}; MT_PLAN={shlex.quote(out)}"
            + f"; MT_RUN_DIR={shlex.quote(run_dir)}")


def read_layout(path: str | Path) -> dict:
    """The plan :func:`write_layout` wrote (what ``ray-start --plan`` and ``exec-trainer`` read)."""
    return json.loads(Path(path).read_text())


def node_of_this_host(plan: dict, environ: dict | None = None) -> dict:
    """This node's entry of ``plan`` (by SLURM's node name, else the short host name)."""
    import socket

    env = os.environ if environ is None else environ
    names = {env.get("SLURMD_NODENAME", ""), socket.gethostname().split(".")[0], socket.gethostname()}
    for n in plan["nodes"]:
        if n["host"] in names:
            return n
    raise ValueError(f"host {sorted(x for x in names if x)} is not in the plan's nodes "
                     f"{[n['host'] for n in plan['nodes']]}")


def ray_node_resources(plan: dict, node: dict) -> tuple[list[str], dict[str, str]]:
    """``ray start`` options and environment that offer Ray exactly this node's engine slots: GPUs (made
    visible by index) on GPU plans, CPUs on CPU plans; a node without engines offers nothing (its raylet
    only lets trainer rank 0, the RLVR driver, join the cluster), so engines can only land on engine slots."""
    slots = node["local_gpus"].get("engine", [])
    if plan["device"] == "gpu":
        env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, slots))} if slots else {"CUDA_VISIBLE_DEVICES": ""}
        return [f"--num-gpus={len(slots)}"] + ([] if slots else ["--num-cpus=0"]), env
    return [f"--num-cpus={len(slots)}"], {}


def trainer_env(plan: dict, node: dict) -> dict[str, str]:
    """GPU plans: make this node's trainer GPUs visible in rank order, so local rank i uses the i-th of them
    (on a node shared with an engine, the engine's GPUs are not the first ones)."""
    if plan["device"] != "gpu":
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, node["local_gpus"]["trainer"]))}


def exec_trainer(plan_file: str | Path, command: list[str]) -> None:
    """Replace this process with one trainer rank (``command``), seeing this node's trainer GPUs."""
    plan = read_layout(plan_file)
    os.environ.update(trainer_env(plan, node_of_this_host(plan)))
    os.execvp(command[0], command)


def ray_wait(address: str, nodes: int, timeout_s: float) -> int:
    """Poll the Ray cluster at ``address`` until ``nodes`` nodes are alive; return how many (raise on timeout)."""
    import ray

    deadline = time.monotonic() + timeout_s
    last_err: Exception | None = None
    alive = 0
    while time.monotonic() < deadline:
        try:
            if not ray.is_initialized():
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
            if alive >= nodes:
                ray.shutdown()
                return alive
        except Exception as e:  # GCS not up yet: retry until the deadline
            last_err = e
            if ray.is_initialized():
                ray.shutdown()
        time.sleep(1.0)
    raise TimeoutError(f"Ray at {address}: {alive}/{nodes} nodes alive after {timeout_s:.0f}s"
                       + (f" (last error: {last_err})" if last_err else ""))


def ray_start(command: list[str], attempts: int = 3, plan_file: str | None = None) -> int:
    """Run ``ray start ... --block`` (``command``), retrying a failed start up to ``attempts`` times.

    Ray gives a raylet a fixed 30 s to register with the GCS; on an overloaded node that can fail once and then
    succeed. SIGTERM/SIGINT are forwarded to Ray (teardown) and stop the retries. SIGUSR1 is ignored here and in
    Ray (inherited): SLURM's preemption warning is for the driver and trainers, not the daemons.
    """
    import signal
    import subprocess

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    env = None
    if plan_file:
        plan = read_layout(plan_file)
        extra, env_extra = ray_node_resources(plan, node_of_this_host(plan))
        given = {c.split("=")[0] for c in command}  # an explicit option (e.g. MT_RAY_NUM_CPUS) wins
        command = list(command) + [a for a in extra if a.split("=")[0] not in given]
        env = dict(os.environ, **env_extra)
        print(f"[mt] ray on this node: {' '.join(extra)} {env_extra or ''}", file=sys.stderr, flush=True)
    state: dict = {"stop": False, "child": None}

    def forward(signum, frame):  # noqa: ARG001
        state["stop"] = True
        if state["child"] is not None and state["child"].poll() is None:
            state["child"].send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = 1
    for attempt in range(1, attempts + 1):
        state["child"] = subprocess.Popen(command, env=env)
        rc = state["child"].wait()
        if state["stop"] or rc == 0:
            return rc
        print(f"[mt] {shlex.join(command[:2])} exited {rc} (attempt {attempt}/{attempts})", file=sys.stderr,
              flush=True)
        time.sleep(2.0)
    return rc
