"""Python side of the SLURM scripts in ``slurm/``: the resolved job plan (``DRY_RUN=1``) and Ray readiness.

    python -m launch.cluster plan --script slurm/rlvr_405b.sh --stage rlvr --size 405b -- <command...>
    python -m launch.cluster ray-wait --address HOST:PORT --nodes N [--timeout 120]
    python -m launch.cluster ray-start [--plan F] -- ray start --block ...   (what each Ray srun task runs)
    python -m launch.cluster layout --script S --stage rlvr --size X --out F   (RLVR job: roles for the steps)
    python -m launch.cluster exec-trainer --plan F -- <command...>            (RLVR job: one trainer rank)

The scripts only set the environment and call ``srun``/Ray; everything that needs a decision lives here.
The allocation (nodes, GPUs or CPU tasks per node) is read from the script's own ``#SBATCH`` header, or from
SLURM's variables inside a job, so the header is the one place that states it. Node roles for RLVR come from
the planner (:func:`megatron_tulu.plan.plan_rlvr_layout`); memory feasibility from
:func:`megatron_tulu.plan.evaluate`. The default parallel layout per (stage, size) is :data:`DEFAULT_LAYOUTS`,
overridable by ``MT_TP``/``MT_PP``/``MT_CP``/``MT_ENGINE_TP``/``MT_NUM_ENGINES``.

Processes: one SLURM task per GPU (``srun --ntasks-per-node=<gpus>``; on CPU, one task per process), not
torchrun inside srun. SLURM then owns every rank: ``--signal``/``scancel --signal`` reach each trainer
directly, a rank's exit code (75 = requeue) comes back through srun unchanged, and ranks/addresses are derived
in one place (:func:`megatron_tulu.parallel.env_from_slurm`) with no elastic agent in between.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SIZES = ("tiny", "8b", "70b", "405b")
STAGES = ("sft", "dpo", "rlvr")
PRESET_OF_SIZE = {"tiny": "tiny", "8b": "llama3.1-8b", "70b": "llama3.1-70b", "405b": "llama3.1-405b"}

# Default layouts for the shipped scripts (checked against the planner's memory model by the tests).
# tp/pp/cp: trainer megatron parallelism; dp is derived. engine_tp/num_engines: RLVR vLLM engines.
DEFAULT_LAYOUTS: dict[tuple[str, str], dict[str, int]] = {
    ("sft", "tiny"): dict(tp=1, pp=1, cp=1),
    ("sft", "8b"): dict(tp=2, pp=1, cp=1),
    ("sft", "70b"): dict(tp=8, pp=4, cp=1),
    ("sft", "405b"): dict(tp=8, pp=8, cp=1),
    ("dpo", "tiny"): dict(tp=1, pp=1, cp=1),
    ("dpo", "8b"): dict(tp=2, pp=1, cp=1),
    ("dpo", "70b"): dict(tp=8, pp=4, cp=1),
    ("dpo", "405b"): dict(tp=8, pp=8, cp=1),
    # RLVR tiny: one process for the engine (vLLM-CPU or TorchEngine), one trainer process.
    ("rlvr", "tiny"): dict(tp=1, pp=1, cp=1, engine_tp=1, num_engines=1),
    ("rlvr", "8b"): dict(tp=4, pp=1, cp=1, engine_tp=1, num_engines=8),
    ("rlvr", "70b"): dict(tp=8, pp=3, cp=1, engine_tp=8, num_engines=2),
    # Tülu 3 405B: vLLM with 16-way TP spanning two nodes; the rest (28 nodes) trains.
    ("rlvr", "405b"): dict(tp=8, pp=14, cp=1, engine_tp=16, num_engines=2),
}
ENV_OVERRIDES = {"tp": "MT_TP", "pp": "MT_PP", "cp": "MT_CP", "engine_tp": "MT_ENGINE_TP",
                 "num_engines": "MT_NUM_ENGINES"}


@dataclass
class Allocation:
    """What SLURM gives the job: ``nodes`` x ``slots_per_node`` (GPUs, or CPU tasks when ``gpus_per_node`` is 0)."""

    nodes: int
    """Nodes in the allocation."""
    gpus_per_node: int
    """GPUs per node (0 on CPU-only jobs)."""
    tasks_per_node: int
    """SLURM tasks per node for the trainer step (one per GPU on GPU jobs)."""
    hosts: list[str] = field(default_factory=list)
    """Host names in allocation order (``node0``.. placeholders outside SLURM)."""

    @property
    def slots_per_node(self) -> int:
        return self.gpus_per_node or self.tasks_per_node

    @property
    def device(self) -> str:
        return "gpu" if self.gpus_per_node else "cpu"


def read_sbatch_header(script: str | Path) -> dict[str, str]:
    """``#SBATCH --key=value`` (or ``--key value``) lines of ``script`` as ``{key: value}`` (flags map to "")."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(Path(script).read_text().splitlines(), 1):
        if not line.startswith("#SBATCH"):
            continue
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:[=\s]+(\S+))?\s*(?:#.*)?$", line)
        if not m:
            raise ValueError(f"{script}:{lineno}: cannot parse SBATCH line {line!r} (use --key=value)")
        out[m.group(1)] = m.group(2) or ""
    return out


def allocation(script: str | Path | None, environ: dict | None = None) -> Allocation:
    """Allocation from SLURM's env inside a job, else from the script's ``#SBATCH`` header (dry run)."""
    env = dict(os.environ if environ is None else environ)
    head = read_sbatch_header(script) if script else {}

    def _int(v: str | None, name: str, default: int = 0) -> int:
        if v in (None, ""):
            return default
        m = re.match(r"^(?:[\w-]+:)?(\d+)", str(v))  # "8", "h100:8", "8(x2)"
        if not m:
            raise ValueError(f"{script}: cannot read {name}={v!r} as a count")
        return int(m.group(1))

    if "SLURM_JOB_ID" in env and "SLURM_JOB_NUM_NODES" in env:
        from megatron_tulu.parallel import _expand_nodelist

        nodes = int(env["SLURM_JOB_NUM_NODES"])
        gpn = _int(env.get("SLURM_GPUS_PER_NODE") or head.get("gpus-per-node"), "gpus-per-node")
        tpn = _int(env.get("SLURM_NTASKS_PER_NODE") or head.get("ntasks-per-node"), "ntasks-per-node", 1)
        hosts = _expand_nodelist(env.get("SLURM_JOB_NODELIST", ""))
    else:
        nodes = _int(head.get("nodes"), "nodes", 1)
        gpn = _int(head.get("gpus-per-node"), "gpus-per-node")
        tpn = _int(head.get("ntasks-per-node"), "ntasks-per-node", 1)
        hosts = [f"node{i}" for i in range(nodes)]
    if gpn and tpn != gpn:
        raise ValueError(f"{script}: ntasks-per-node={tpn} must equal gpus-per-node={gpn} (one task per GPU)")
    return Allocation(nodes=nodes, gpus_per_node=gpn, tasks_per_node=tpn, hosts=hosts)


def config_workload(stage: str, size: str) -> dict:
    """The planner's workload fields from ``configs/<stage>/<size>.yaml``, read once (so the plan's memory verdict
    is for the run the config describes, not the planner's defaults): sequence length, global and micro batch,
    FP8; for DPO whether a frozen reference stays resident (``dpo.ref_mode: on_the_fly``; the default cached
    reference log-probs keep none); for RLVR the prompt/response lengths, sequences per step (prompts x samples),
    the algorithm (PPO adds a value model) and the value model's preset (empty: the policy's size)."""
    import yaml

    path = Path(__file__).resolve().parent.parent / "configs" / stage / f"{size}.yaml"
    doc = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    def val(section: str, key: str, default):
        node = doc.get(section) if isinstance(doc, dict) else None
        return node.get(key, default) if isinstance(node, dict) else default

    out = {"seq": int(val("train", "seq_length", 4096)), "global_batch": int(val("train", "global_batch_size", 128)),
           "micro_batch": int(val("train", "micro_batch_size", 1)), "fp8": bool(val("model", "fp8", None))}
    if stage == "dpo":
        out["reference_model"] = val("dpo", "ref_mode", "cached") == "on_the_fly"
    if stage == "rlvr":
        prompt, response = out["seq"], int(val("rlvr", "max_new_tokens", 1024))
        out.update(seq=prompt + response, prompt_len=prompt, response_len=response,
                   global_batch=out["global_batch"] * int(val("rlvr", "samples_per_prompt", 1)),
                   algorithm=str(val("rlvr", "algorithm", "ppo")), value_model=str(val("rlvr", "value_model", "") or ""))
    return out


def config_parallel(stage: str, size: str, config_dir: str | Path | None = None) -> dict[str, int]:
    """``parallel.{tp,pp,cp,vpp}`` and ``rlvr.{engine_tp,num_engines}`` of ``configs/<stage>/<size>.yaml`` when set.

    The trainer reads the same keys, so the plan follows the config once it exists.
    """
    import yaml

    root = Path(config_dir) if config_dir else Path(__file__).resolve().parent.parent / "configs"
    path = root / stage / f"{size}.yaml"
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: {e}") from e
    if not isinstance(doc, dict):
        return {}
    out = {}
    for section, keys in (("parallel", ("tp", "pp", "cp", "vpp")), ("rlvr", ("engine_tp", "num_engines"))):
        node = doc.get(section)
        if not isinstance(node, dict):
            continue
        if section == "parallel":
            out["cp"] = 1  # the trainer's default (ParallelConfig.cp) when the config is silent
        for k in keys:
            if k in node:
                if not isinstance(node[k], int):
                    raise ValueError(f"{path}: {section}.{k} must be an integer, got {node[k]!r}")
                out[k] = node[k]
    return out


def layout_for(stage: str, size: str, environ: dict | None = None) -> dict[str, int]:
    """Layout of (stage, size): :data:`DEFAULT_LAYOUTS`, then the config's ``parallel.*``, then ``MT_*`` env."""
    if (stage, size) not in DEFAULT_LAYOUTS:
        raise ValueError(f"no layout for stage={stage!r} size={size!r}; known: {sorted(DEFAULT_LAYOUTS)}")
    env = os.environ if environ is None else environ
    lay = {"vpp": 1, **DEFAULT_LAYOUTS[(stage, size)]}
    lay.update({k: v for k, v in config_parallel(stage, size).items() if k in lay})
    for key, var in ENV_OVERRIDES.items():
        if env.get(var):
            if key not in lay:
                raise ValueError(f"{var} applies to RLVR only (stage={stage})")
            try:
                lay[key] = int(env[var])
            except ValueError:
                raise ValueError(f"{var}={env[var]!r} is not an integer") from None
    return lay


def build_plan(stage: str, size: str, alloc: Allocation, command: list[str] | None = None,
               environ: dict | None = None) -> dict:
    """Resolved plan: node roles, trainer ranks per node, TP/PP/CP/DP, engine placement, memory feasibility.

    Raises ValueError (from here or the planner) when the layout does not tile the allocation.
    """
    from megatron_tulu.plan import PlanRequest, evaluate, plan_rlvr_layout

    lay = layout_for(stage, size, environ)
    spn = alloc.slots_per_node
    total = alloc.nodes * spn
    model = PRESET_OF_SIZE[size]
    idle = 0
    workload = config_workload(stage, size)
    if stage == "rlvr":
        try:
            placed = plan_rlvr_layout(model, total, spn, lay["engine_tp"], lay["num_engines"], lay["tp"],
                                      lay["pp"], lay["cp"], vpp=lay["vpp"], **workload)
        except ValueError as e:
            placed, idle = _rlvr_with_idle(model, alloc, lay, e, workload)
        nodes, engines, trainer = placed["nodes"], placed["engines"], placed["trainer"]
        memory, feasible = placed["memory"], placed["feasible"]
    else:
        mp = lay["tp"] * lay["pp"] * lay["cp"]
        if total % mp:
            raise ValueError(f"{total} {alloc.device} slots not divisible by TP*PP*CP = {mp} ({stage}/{size})")
        nodes = [{"node": n, "role": "trainer", "engines": [],
                  "trainer_ranks": list(range(n * spn, (n + 1) * spn)),
                  "local_gpus": {"engine": [], "trainer": list(range(spn))}} for n in range(alloc.nodes)]
        engines = []
        trainer = {"gpus": total, "tp": lay["tp"], "pp": lay["pp"], "cp": lay["cp"], "dp": total // mp,
                   "ranks": list(range(total))}
        lay_eval = evaluate(PlanRequest(model=model, gpus=total, stage=stage, gpus_per_node=spn, vpp=lay["vpp"],
                                        **workload),
                            lay["tp"], lay["pp"], lay["cp"])
        memory, feasible = lay_eval.to_dict(), lay_eval.feasible
    for n in nodes:
        n["host"] = alloc.hosts[n["node"]] if n["node"] < len(alloc.hosts) else f"node{n['node']}"
    plan = {"stage": stage, "size": size, "model": model, "device": alloc.device, "nodes_total": alloc.nodes,
            "slots_per_node": spn, "slots_total": total, "nodes": nodes, "engines": engines, "trainer": trainer,
            "idle": idle,
            "memory": memory, "feasible": feasible, "command": list(command or [])}
    check_plan(plan)
    return plan


def _rlvr_with_idle(model: str, alloc: Allocation, lay: dict, why: Exception, workload: dict) -> tuple[dict, int]:
    """RLVR layout that does not tile the allocation (e.g. a config with one engine while the driver supports
    only one): engines on whole nodes of their own, trainers on the next whole nodes (as many as keep DP
    integral), the remaining GPUs idle and reported. Re-raises ``why`` when even that does not fit."""
    from megatron_tulu.plan import plan_rlvr_layout

    spn = alloc.slots_per_node
    engine_gpus = lay["engine_tp"] * lay["num_engines"]
    engine_nodes = -(-engine_gpus // spn)
    mp = lay["tp"] * lay["pp"] * lay["cp"]
    for trainer_nodes in range(alloc.nodes - engine_nodes, 0, -1):
        if (trainer_nodes * spn) % mp == 0:
            break
    else:
        raise why
    # Place on a virtual allocation of exactly engines + trainers (engines padded to whole nodes), then map back.
    used_nodes = engine_nodes + trainer_nodes
    pad = engine_nodes * spn - engine_gpus
    placed = plan_rlvr_layout(model, trainer_nodes * spn + engine_gpus + pad, spn, lay["engine_tp"],
                              lay["num_engines"] + pad // lay["engine_tp"], lay["tp"], lay["pp"], lay["cp"],
                              vpp=lay["vpp"], **workload) \
        if pad % lay["engine_tp"] == 0 else None
    if placed is None:
        raise why
    # The padding "engines" are idle GPUs, not engines.
    real = {e["id"] for e in placed["engines"][: lay["num_engines"]]}
    placed["engines"] = placed["engines"][: lay["num_engines"]]
    for n in placed["nodes"]:
        keep = [eid for eid in n["engines"] if eid in real]
        n["local_gpus"]["idle"] = [g % spn for eid in n["engines"] if eid not in real
                                   for g in range(eid * lay["engine_tp"], (eid + 1) * lay["engine_tp"])]
        n["local_gpus"]["engine"] = [g for g in n["local_gpus"]["engine"] if g not in n["local_gpus"]["idle"]]
        n["engines"] = keep
    for k in range(used_nodes, alloc.nodes):
        placed["nodes"].append({"node": k, "role": "idle", "engines": [], "trainer_ranks": [],
                                "local_gpus": {"engine": [], "trainer": [], "idle": list(range(spn))}})
    idle = alloc.nodes * spn - engine_gpus - placed["trainer"]["gpus"]
    return placed, idle


def check_plan(plan: dict) -> None:
    """Raise ValueError unless every slot of the allocation has exactly one role and the layout tiles."""
    spn, total = plan["slots_per_node"], plan["slots_total"]
    if len(plan["nodes"]) != plan["nodes_total"]:
        raise ValueError(f"plan has {len(plan['nodes'])} nodes, allocation {plan['nodes_total']}")
    for n in plan["nodes"]:
        used = sum(len(n["local_gpus"].get(k, [])) for k in ("engine", "trainer", "idle"))
        if used != spn or len(n["local_gpus"]["trainer"]) != len(n["trainer_ranks"]):
            raise ValueError(f"node {n['node']}: {used} slots assigned, expected {spn}")
    engine_gpus = sum(len(e["gpus"]) for e in plan["engines"])
    t = plan["trainer"]
    if engine_gpus + t["gpus"] + plan.get("idle", 0) != total:
        raise ValueError(f"engines {engine_gpus} + trainer {t['gpus']} + idle {plan.get('idle', 0)} "
                         f"!= allocation {total}")
    if t["tp"] * t["pp"] * t["cp"] * t["dp"] != t["gpus"]:
        raise ValueError(f"TP*PP*CP*DP = {t['tp']}*{t['pp']}*{t['cp']}*{t['dp']} != trainer slots {t['gpus']}")
    ranks = sorted(r for n in plan["nodes"] for r in n["trainer_ranks"])
    if ranks != list(range(t["gpus"])):
        raise ValueError("trainer ranks are not exactly 0..N-1 across nodes")


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "-"
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)


def format_plan(plan: dict) -> str:
    """Human-readable plan for ``DRY_RUN=1`` (nodes with the same role and shape are folded into one line)."""
    unit = "GPUs" if plan["device"] == "gpu" else "CPU processes"
    t = plan["trainer"]
    lines = [f"plan: {plan['stage']}/{plan['size']} ({plan['model']}) on {plan['nodes_total']} nodes x "
             f"{plan['slots_per_node']} {unit} = {plan['slots_total']} {unit}"]
    eng = sum(len(e["gpus"]) for e in plan["engines"])
    idle = plan.get("idle", 0)
    if idle:
        lines.append(f"  total: engines {eng} + trainers {t['gpus']} + idle {idle} = {eng + t['gpus'] + idle} "
                     f"(allocation {plan['slots_total']}) OK")
        lines.append(f"  WARNING: {idle} {unit} idle: the config's layout does not tile the allocation")
    else:
        lines.append(f"  total: engines {eng} + trainers {t['gpus']} = {eng + t['gpus']} "
                     f"(allocation {plan['slots_total']}) OK")
    lines.append(f"  trainer: {t['gpus']} ranks, TP={t['tp']} PP={t['pp']} CP={t['cp']} DP={t['dp']}")
    for e in plan["engines"]:
        hosts = sorted({g // plan["slots_per_node"] for g in e["gpus"]})
        lines.append(f"  engine {e['id']}: vLLM TP={e['tp']} on global slots {_ranges(e['gpus'])} "
                     f"(nodes {_ranges(hosts)})")
    lines.append("  nodes:")
    i, nodes = 0, plan["nodes"]
    while i < len(nodes):  # fold runs of trainer-only nodes
        n, j = nodes[i], i
        while (n["role"] == "trainer" and j + 1 < len(nodes) and nodes[j + 1]["role"] == "trainer"
               and len(nodes[j + 1]["trainer_ranks"]) == len(n["trainer_ranks"])):
            j += 1
        if j > i:
            r = [x for k in range(i, j + 1) for x in nodes[k]["trainer_ranks"]]
            drv = " + RLVR driver on rank 0" if plan["stage"] == "rlvr" and 0 in r else ""
            lines.append(f"    nodes {i}-{j} ({nodes[i]['host']}..{nodes[j]['host']}): trainer, "
                         f"ranks {_ranges(r)} ({len(n['trainer_ranks'])} per node){drv}")
        else:
            what = []
            if n["engines"]:
                what.append(f"engine {_ranges(n['engines'])} on local {_ranges(n['local_gpus']['engine'])}")
            if n["trainer_ranks"]:
                what.append(f"trainer ranks {_ranges(n['trainer_ranks'])}")
            if n["local_gpus"].get("idle"):
                what.append(f"idle local {_ranges(n['local_gpus']['idle'])}")
            extra = ""
            if plan["stage"] == "rlvr":
                extra = (" + Ray head" if i == 0 else "") + (" + RLVR driver on rank 0" if 0 in n["trainer_ranks"] else "")
            lines.append(f"    node {i} ({n['host']}): {n['role']}: {'; '.join(what)}{extra}")
        i = j + 1
    mem = plan["memory"]
    if plan["device"] == "gpu":
        gib = mem.get("memory_gib", {})
        rec = mem.get("recompute") or "none"
        total_gib = gib.get(f"total_{rec}") if isinstance(gib, dict) else None
        lines.append(f"  memory (planner): feasible={plan['feasible']}, recompute={rec}"
                     + (f", {total_gib:.1f} of {gib.get('capacity', 0):.1f} GiB per trainer GPU"
                        if isinstance(total_gib, (int, float)) else "")
                     + ("; " + "; ".join(mem.get("reasons", [])) if mem.get("reasons") else ""))
    if plan["command"]:
        lines.append("  command: " + shlex.join(plan["command"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------- RLVR job roles (inside a job)


def write_layout(plan: dict, out: str | Path) -> str:
    """Write ``plan`` (JSON) where every srun step of the job reads it, and return the shell line that the RLVR
    scripts ``eval``: ``MT_TRAINER_SRUN=(...)``, the srun options that start exactly the trainer ranks on the
    trainer nodes (engine-only nodes run nothing but Ray)."""
    import json

    nodes = [n for n in plan["nodes"] if n["trainer_ranks"]]
    per = {len(n["trainer_ranks"]) for n in nodes}
    if len(per) != 1:
        raise ValueError(f"trainer ranks per node differ across trainer nodes ({sorted(per)}): one srun step "
                         "cannot start them; choose a layout whose trainer nodes are alike")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan, indent=1, default=str))
    os.replace(tmp, out)
    args = [f"--nodes={len(nodes)}", f"--ntasks={plan['trainer']['gpus']}", f"--ntasks-per-node={per.pop()}",
            f"--nodelist={','.join(n['host'] for n in nodes)}"]
    return "MT_TRAINER_SRUN=(" + " ".join(shlex.quote(a) for a in args) + ")"


def read_layout(path: str | Path) -> dict:
    """The plan :func:`write_layout` wrote (what ``ray-start --plan`` and ``exec-trainer`` read)."""
    import json

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, command = argv[:k], argv[k + 1:]
    p = argparse.ArgumentParser(prog="python -m launch.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("plan", help="print the resolved plan of a slurm/ script (DRY_RUN)")
    pp.add_argument("--script", required=True, help="the sbatch script (its #SBATCH header gives the allocation)")
    pp.add_argument("--stage", required=True, choices=STAGES)
    pp.add_argument("--size", required=True, choices=SIZES)
    pp.add_argument("--json", action="store_true", help="print the plan as JSON")
    pw = sub.add_parser("ray-wait", help="wait until a Ray cluster has N alive nodes")
    pw.add_argument("--address", required=True, help="HOST:PORT of the Ray head (GCS)")
    pw.add_argument("--nodes", type=int, required=True)
    pw.add_argument("--timeout", type=float, default=120.0)
    pr = sub.add_parser("ray-start", help="run `ray start --block` (after --), retrying a failed start")
    pr.add_argument("--attempts", type=int, default=3)
    pr.add_argument("--plan", help="job plan (from `layout`): offer Ray only this node's engine slots")
    pl = sub.add_parser("layout", help="inside an RLVR job: write the plan for the srun steps, print the "
                                       "trainer step's srun options as a shell line")
    pl.add_argument("--script", required=True)
    pl.add_argument("--stage", required=True, choices=STAGES)
    pl.add_argument("--size", required=True, choices=SIZES)
    pl.add_argument("--out", required=True, help="plan JSON path (on the shared filesystem)")
    pt = sub.add_parser("exec-trainer", help="exec the trainer command (after --) with this node's trainer GPUs")
    pt.add_argument("--plan", required=True)
    a = p.parse_args(argv)
    if a.cmd == "ray-start":
        if not command:
            p.error("ray-start needs the ray command after --")
        return ray_start(command, a.attempts, a.plan)
    if a.cmd == "layout":
        print(write_layout(build_plan(a.stage, a.size, allocation(a.script), command), a.out))
        return 0
    if a.cmd == "exec-trainer":
        if not command:
            p.error("exec-trainer needs the trainer command after --")
        plan = read_layout(a.plan)
        os.environ.update(trainer_env(plan, node_of_this_host(plan)))
        os.execvp(command[0], command)
    if a.cmd == "plan":
        plan = build_plan(a.stage, a.size, allocation(a.script), command)
        if a.json:
            import json

            print(json.dumps(plan, indent=1, default=str))
        else:
            print(format_plan(plan))
        return 0
    n = ray_wait(a.address, a.nodes, a.timeout)
    print(f"ray: {n} nodes alive at {a.address}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
