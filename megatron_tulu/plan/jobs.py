"""The SLURM job planner: what runs where in a job of a config, checked against what SLURM allocates.

A job's facts have one owner each. The typed config (loaded by :func:`megatron_tulu.config.load_config`, with the
same ``key=value`` overrides the trainer gets) owns the layout (``parallel.*``, ``rlvr.engine_tp``/``num_engines``/
``engine_placement``) and the allocation (``cluster.*``). The ``#SBATCH`` header of ``slurm/<stage>_<size>.sh``
(on a dry run) or SLURM's variables (inside a job) say what SLURM gives; :func:`check_allocation` fails, naming
both numbers, when the two disagree, so a script, its config and the running job cannot drift apart silently.

From the config the plan derives node roles, trainer ranks per node, TP/PP/CP/DP, RLVR engine slots
(:func:`megatron_tulu.plan.plan_rlvr_layout`) and the memory verdict (:func:`megatron_tulu.plan.evaluate`) for the
workload the config describes. :mod:`megatron_tulu.plan.ray_cluster` turns a plan into the RLVR job's srun/Ray
arguments; ``launch/cluster.py`` is the command line.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SIZES = ("tiny", "8b", "70b", "405b")
"""Sizes of the shipped ``slurm/<stage>_<size>.sh`` scripts."""
STAGES = ("sft", "prefgen", "dpo", "rm", "rlvr")
"""Stages with a shipped SLURM script (``pretrain`` has a config but no script)."""
STAGE_SIZES = {"sft": SIZES, "prefgen": ("tiny", "8b"), "dpo": SIZES, "rm": ("tiny", "8b", "70b"), "rlvr": SIZES}
"""The sizes each stage ships a ``slurm/<stage>_<size>.sh`` (and a config) for: Tülu 3 released no 405B reward
model (its 405B RLVR used verifiable rewards only), so ``rm`` stops at 70B; on-policy preference data ships for 8B
(its pool and judge are 70B-class models whatever the policy; another policy is ``policy.path=``)."""
RETIRED_ENV = ("MT_TP", "MT_PP", "MT_CP", "MT_ENGINE_TP", "MT_NUM_ENGINES")
"""Layout variables the scripts no longer read: refused so that a stale setting does not silently do nothing."""


@dataclass
class Allocation:
    """``nodes`` x ``slots_per_node`` (GPUs, or CPU tasks when ``gpus_per_node`` is 0), and where it was read."""

    nodes: int
    """Nodes in the allocation."""
    gpus_per_node: int
    """GPUs per node (0 on CPU-only jobs)."""
    tasks_per_node: int
    """SLURM tasks per node (one per GPU on GPU jobs)."""
    hosts: list[str] = field(default_factory=list)
    """Host names in allocation order (``node0``.. placeholders outside SLURM)."""
    source: str = ""
    """Who states it, for error messages: a script path (its ``#SBATCH`` header), ``SLURM`` or ``config NAME``."""

    @property
    def slots_per_node(self) -> int:
        return self.gpus_per_node or self.tasks_per_node

    @property
    def device(self) -> str:
        return "gpu" if self.gpus_per_node else "cpu"


# ------------------------------------------------------------------------------------------- the config


def stage_schema(stage: str) -> type:
    """The typed config class ``launch/<stage>.py`` loads (imported lazily: the trainers import torch)."""
    if stage == "rlvr":
        from megatron_tulu.trainers.rlvr import RLVRConfig
        return RLVRConfig
    if stage == "dpo":
        from megatron_tulu.trainers.dpo import DPOConfig
        return DPOConfig
    if stage == "rm":
        from megatron_tulu.trainers.rm import RMConfig
        return RMConfig
    if stage in ("sft", "pretrain"):
        from megatron_tulu.trainers.sft import SFTConfig
        return SFTConfig
    if stage == "prefgen":
        from megatron_tulu.prefgen.config import PrefGenConfig
        return PrefGenConfig
    raise ValueError(f"no config schema for stage {stage!r} (known: pretrain, sft, prefgen, dpo, rm, rlvr)")


def config_of_command(command: Sequence[str], stage: str, default_name: str) -> tuple[str, str, list[str]]:
    """``(stage, config name, overrides)`` of a stage command line (``python -m launch.rlvr --config rlvr/8b k=v``),
    parsed by the stage entry point's own parser, so the plan is of exactly the config that command will run.
    A command that is not ``-m launch.<stage>`` (or none) gives ``(stage, default_name, [])``."""
    from megatron_tulu.cli import parse

    command = list(command)
    if "-m" in command[:-1] and command[command.index("-m") + 1].startswith("launch."):
        k = command.index("-m")
        module = command[k + 1]
        args = parse(command[k + 2:], default_name, f"python -m {module}")
        return module.split(".", 1)[1], args.config, list(args.overrides)
    return stage, default_name, []


def load_stage_config(stage: str, name: str, overrides: Sequence[str] = ()):
    """The typed, validated config (``load_config``; raises ``ValueError`` naming the field)."""
    from megatron_tulu.config import load_config

    return load_config(stage_schema(stage), name, overrides)


def gpus_per_task(cfg) -> int:
    """GPUs one SLURM task drives: one for a trainer rank, its engines' for a prefgen worker."""
    from megatron_tulu.prefgen.config import PrefGenConfig

    return cfg.gpus_per_worker() if isinstance(cfg, PrefGenConfig) else 1


def config_allocation(cfg) -> Allocation:
    """The allocation ``cfg.cluster`` asks for (placeholder host names ``node0``..)."""
    c = cfg.cluster
    return Allocation(nodes=c.nodes, gpus_per_node=c.gpus_per_node, tasks_per_node=c.tasks(gpus_per_task(cfg)),
                      hosts=[f"node{i}" for i in range(c.nodes)], source="config")


# ------------------------------------------------------------------------------------------- SLURM's side


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


def _count(value: str | None, what: str, default: int = 0) -> int:
    """A SLURM count: ``8``, ``h100:8`` (typed GPUs) or ``8(x2)`` (SLURM's repeated-value form)."""
    if value in (None, ""):
        return default
    m = re.match(r"^(?:[\w-]+:)?(\d+)", str(value))
    if not m:
        raise ValueError(f"cannot read {what}={value!r} as a count")
    return int(m.group(1))


def slurm_allocation(script: str | Path | None, environ: dict | None = None) -> Allocation:
    """What SLURM gives: its variables inside a job (they win: ``sbatch --nodes=N`` overrides the header), else
    what ``script``'s ``#SBATCH`` header asks for (a dry run, outside SLURM)."""
    env = dict(os.environ if environ is None else environ)
    head = read_sbatch_header(script) if script else {}
    if "SLURM_JOB_ID" in env and "SLURM_JOB_NUM_NODES" in env:
        from megatron_tulu.parallel import _expand_nodelist

        # SLURM sets SLURM_GPUS_PER_NODE only for --gpus-per-node requests; the header covers the rest.
        gpn = _count(env.get("SLURM_GPUS_PER_NODE") or head.get("gpus-per-node"), "gpus-per-node")
        tpn = _count(env.get("SLURM_NTASKS_PER_NODE") or head.get("ntasks-per-node"), "ntasks-per-node", 1)
        return Allocation(int(env["SLURM_JOB_NUM_NODES"]), gpn, tpn,
                          _expand_nodelist(env.get("SLURM_JOB_NODELIST", "")), source="SLURM")
    nodes = _count(head.get("nodes"), "nodes", 1)
    return Allocation(nodes, _count(head.get("gpus-per-node"), "gpus-per-node"),
                      _count(head.get("ntasks-per-node"), "ntasks-per-node", 1),
                      [f"node{i}" for i in range(nodes)], source=str(script))


def check_allocation(planned: Allocation, actual: Allocation, name: str) -> None:
    """Raise ``ValueError`` naming both numbers when SLURM's allocation (``actual``) is not the config's."""
    keys = {"nodes": ("nodes", "SLURM_JOB_NUM_NODES", "has cluster.nodes={}"),
            "gpus_per_node": ("gpus-per-node", "SLURM_GPUS_PER_NODE", "has cluster.gpus_per_node={}"),
            "tasks_per_node": ("ntasks-per-node", "SLURM_NTASKS_PER_NODE",
                               "plans {} tasks per node (cluster.tasks_per_node; 0 = one per GPU, prefgen: "
                               "one per worker's engine GPUs)")}
    problems = []
    for attr, (sbatch_key, env_key, config_says) in keys.items():
        have, want = getattr(actual, attr), getattr(planned, attr)
        if have != want:
            said = f"{env_key}={have}" if actual.source == "SLURM" else f"#SBATCH --{sbatch_key}={have}"
            problems.append(f"{said} but config {name} {config_says.format(want)}")
    if problems:
        where = "this job" if actual.source == "SLURM" else actual.source
        raise ValueError(f"{where}: allocation does not match the config's plan: {'; '.join(problems)} (the config "
                         "owns the allocation: change both together, or override both, e.g. sbatch --nodes=N ... "
                         "cluster.nodes=N)")


# ------------------------------------------------------------------------------------------- the plan


def workload(cfg, stage: str) -> dict:
    """The planner's request fields for the run ``cfg`` describes (so its memory verdict is for that run): sequence
    length, global and micro batch, packed rows (token budget; RLVR sequences counted at their limits), FP8, fused
    log-probs, VPP, block recompute, GPU; RM: no vocab logits; DPO: whether a frozen reference stays resident
    (``ref_mode: on_the_fly``; cached reference log-probs keep none); RLVR: prompt + response lengths, sequences
    per step (prompts x samples), the algorithm (PPO adds a value model), the value model's preset and whether a frozen
    reference is built (``RLVROptions.needs_reference``: not for KL-free presets such as dapo)."""
    t = cfg.train
    out = {"seq": t.seq_length, "global_batch": t.global_batch_size, "micro_batch": t.micro_batch_size,
           "fp8": bool(cfg.model.fp8), "fused_logprob": bool(cfg.model.use_fused_logprob), "vpp": cfg.parallel.vpp,
           "gpu": cfg.cluster.gpu, "max_tokens_per_microbatch": t.max_tokens_per_microbatch,
           "recompute_layers": cfg.model.recompute_layers}
    if stage == "dpo":
        out["reference_model"] = cfg.dpo.ref_mode == "on_the_fly"
    if stage == "rm":  # a scalar head: no [s, V] logits, which is what the planner's fused_logprob flag leaves out
        out["fused_logprob"] = True
    if stage == "rlvr":
        o = cfg.rlvr
        out.update(seq=t.seq_length + o.max_new_tokens, prompt_len=t.seq_length, response_len=o.max_new_tokens,
                   global_batch=t.global_batch_size * o.samples_per_prompt, value_model=o.value_model,
                   # the planner knows two memory shapes: with a value model (ppo) or without (every other preset)
                   algorithm="ppo" if o.preset.uses_value_model else "grpo", reference_model=o.needs_reference)
    return out


def _layout(cfg, stage: str) -> dict:
    """Trainer parallelism, and for RLVR with Ray-placed engines the engine count and TP (engines on slots of
    their own); a local engine lives in trainer rank 0's process and takes no slot."""
    p = cfg.parallel
    lay = {"tp": p.tp, "pp": p.pp, "cp": p.cp, "vpp": p.vpp, "engine_tp": 0, "num_engines": 0}
    if stage == "rlvr" and cfg.rlvr.engine_placement == "ray":
        lay.update(engine_tp=cfg.rlvr.engine_tp, num_engines=cfg.rlvr.num_engines)
    return lay


def build_plan(cfg, stage: str, name: str, alloc: Allocation | None = None, command: Sequence[str] = ()) -> dict:
    """Resolved plan of ``cfg`` on ``alloc`` (default: the config's own allocation): node roles, trainer ranks per
    node, TP/PP/CP/DP, engine placement, memory feasibility.

    Raises ValueError (from here or the planner) when the layout does not tile the allocation.
    """
    alloc = alloc or config_allocation(cfg)
    if stage == "prefgen":
        from megatron_tulu.plan.workers import place_workers

        placed, idle, model = place_workers(cfg, alloc), 0, ", ".join(m.name for m in cfg.models())
    else:
        (placed, idle), model = _place_stage(cfg, stage, alloc), cfg.model.preset
    for n in placed["nodes"]:
        n["host"] = alloc.hosts[n["node"]] if n["node"] < len(alloc.hosts) else f"node{n['node']}"
    plan = {"stage": stage, "config": name, "model": model, "run_dir": cfg.run_dir, "device": alloc.device,
            "nodes_total": alloc.nodes, "slots_per_node": alloc.slots_per_node,
            "slots_total": alloc.nodes * alloc.slots_per_node, "nodes": placed["nodes"], "engines": placed["engines"],
            "local_engine": placed.get("local_engine", False), "trainer": placed["trainer"], "idle": idle,
            "memory": placed["memory"], "feasible": placed["feasible"], "command": list(command),
            "engine_problems": placed.get("engine_problems", []),
            "colocated_engine_tp": placed.get("colocated_engine_tp", 0), "workers": placed.get("workers")}
    check_plan(plan)
    return plan


def _place_stage(cfg, stage: str, alloc: Allocation) -> tuple[dict, int]:
    """A training stage's roles on ``alloc`` and the count of idle slots (see :func:`build_plan`)."""
    from megatron_tulu.models.presets import PRESETS

    lay, work = _layout(cfg, stage), workload(cfg, stage)
    # The memory model needs the model's shape, i.e. a named preset; `model.preset=hf` takes it from the checkpoint
    # at run time. Roles do not depend on the shape: place them with a stand-in and report no verdict, not a wrong one.
    model = cfg.model.preset if cfg.model.preset in PRESETS else "tiny"
    if lay["num_engines"]:
        placed, idle = _place_rlvr(model, alloc, lay, work)
    else:
        placed, idle = _place_trainers(model, stage, alloc, lay, work), 0
    if model != cfg.model.preset:
        placed.update(feasible=None, memory={"reasons": [f"no memory verdict for model.preset={cfg.model.preset} "
                                                         "(its shape is known only at run time)"]})
    elif stage == "rlvr" and not lay["num_engines"] and alloc.device == "gpu":
        _check_engine_beside_trainer(cfg, placed)
    placed["local_engine"] = stage == "rlvr" and not lay["num_engines"]
    if stage == "rlvr" and cfg.rlvr.engine_placement == "colocated":
        placed["colocated_engine_tp"] = cfg.rlvr.engine_tp
    return placed, idle


def plan_for_job(script: str | Path | None, stage: str, size: str, command: Sequence[str] = (),
                 environ: dict | None = None) -> dict:
    """The plan of the stage command a SLURM script runs: its config (name and overrides read off ``command``)
    on the allocation SLURM gives, after checking that allocation is the config's (raises ``ValueError``)."""
    env = os.environ if environ is None else environ
    stale = [v for v in RETIRED_ENV if env.get(v)]
    if stale:  # these used to change the layout; silently ignoring one would run another layout than intended
        raise ValueError(f"{', '.join(stale)}: not read any more; the layout is the config's: pass overrides to the "
                         "script instead (e.g. parallel.tp=2 parallel.pp=2 rlvr.engine_tp=4 rlvr.num_engines=1)")
    stage, name, overrides = config_of_command(command, stage, f"{stage}/{size}")
    cfg = load_stage_config(stage, name, overrides)
    actual = slurm_allocation(script, env)
    check_allocation(config_allocation(cfg), actual, name)
    return build_plan(cfg, stage, name, actual, command)


def _place_trainers(model: str, stage: str, alloc: Allocation, lay: dict, work: dict) -> dict:
    """Every slot a trainer rank, in node order (SFT, DPO, pretraining, RLVR with its engine inside rank 0)."""
    from megatron_tulu.models.presets import get_preset
    from megatron_tulu.plan.layouts import PlanRequest, evaluate_trainer

    spn, total = alloc.slots_per_node, alloc.nodes * alloc.slots_per_node
    mp = lay["tp"] * lay["pp"] * lay["cp"]
    if total % mp:
        raise ValueError(f"{total} {alloc.device} slots not divisible by TP*PP*CP = {mp} "
                         f"({lay['tp']}*{lay['pp']}*{lay['cp']})")
    nodes = [{"node": n, "role": "trainer", "engines": [], "trainer_ranks": list(range(n * spn, (n + 1) * spn)),
              "local_gpus": {"engine": [], "trainer": list(range(spn))}} for n in range(alloc.nodes)]
    trainer = {"gpus": total, "tp": lay["tp"], "pp": lay["pp"], "cp": lay["cp"], "dp": total // mp,
               "ranks": list(range(total))}
    # evaluate_trainer, not evaluate: an RLVR run with a local engine has no engine slots to evaluate.
    req = PlanRequest(model=model, gpus=total, stage=stage, gpus_per_node=spn, **work)
    req.validate()
    verdict = evaluate_trainer(req, get_preset(model), total, lay["tp"], lay["pp"], lay["cp"])
    return {"nodes": nodes, "engines": [], "trainer": trainer, "memory": verdict.to_dict(),
            "feasible": verdict.feasible}


def _check_engine_beside_trainer(cfg, placed: dict) -> None:
    """A local or colocated vLLM engine shares the trainer's GPUs: add what does not fit (``plan.colocation``, the
    check the driver repeats before loading a model) to the plan's memory verdict."""
    from megatron_tulu.plan.colocation import engine_beside_trainer_problems
    from megatron_tulu.plan.hardware import get_gpu

    if cfg.rlvr.engine != "vllm":
        return
    problems = engine_beside_trainer_problems(cfg, get_gpu(cfg.cluster.gpu), placed["trainer"]["gpus"])
    if problems:  # the run would refuse to start (RLVRDriver): --validate-only fails on these
        placed["memory"].setdefault("reasons", []).extend(problems)
        placed.update(feasible=False, engine_problems=problems)


def _place_rlvr(model: str, alloc: Allocation, lay: dict, work: dict) -> tuple[dict, int]:
    """Engines on the first slots, trainers on the rest (``plan_rlvr_layout``); when that does not tile the
    allocation, engines on whole nodes of their own and the remainder reported idle (:func:`_rlvr_with_idle`)."""
    from megatron_tulu.plan import plan_rlvr_layout

    total = alloc.nodes * alloc.slots_per_node
    try:
        return plan_rlvr_layout(model, total, alloc.slots_per_node, lay["engine_tp"], lay["num_engines"], lay["tp"],
                                lay["pp"], lay["cp"], **work), 0
    except ValueError as e:
        return _rlvr_with_idle(model, alloc, lay, e, work)


def _rlvr_with_idle(model: str, alloc: Allocation, lay: dict, why: Exception, work: dict) -> tuple[dict, int]:
    """RLVR layout that does not tile the allocation (e.g. one TP=4 engine on an 8-GPU node): engines on whole
    nodes of their own, trainers on the next whole nodes (as many as keep DP integral), the remaining slots idle
    and reported. Re-raises ``why`` when even that does not fit."""
    from megatron_tulu.plan import plan_rlvr_layout

    spn, etp, ne = alloc.slots_per_node, lay["engine_tp"], lay["num_engines"]
    engine_gpus = etp * ne
    engine_nodes = -(-engine_gpus // spn)
    mp = lay["tp"] * lay["pp"] * lay["cp"]
    trainer_nodes = next((k for k in range(alloc.nodes - engine_nodes, 0, -1) if (k * spn) % mp == 0), 0)
    pad = engine_nodes * spn - engine_gpus
    if not trainer_nodes or pad % etp:
        raise why
    # Place on a virtual allocation of exactly engines + trainers (engines padded to whole nodes), then map back:
    # the padding "engines" are idle slots, not engines.
    placed = plan_rlvr_layout(model, trainer_nodes * spn + engine_gpus + pad, spn, etp, ne + pad // etp,
                              lay["tp"], lay["pp"], lay["cp"], **work)
    real = {e["id"] for e in placed["engines"][:ne]}
    placed["engines"] = placed["engines"][:ne]
    for n in placed["nodes"]:
        local = n["local_gpus"]
        local["idle"] = [g % spn for eid in n["engines"] if eid not in real for g in range(eid * etp, (eid + 1) * etp)]
        local["engine"] = [g for g in local["engine"] if g not in local["idle"]]
        n["engines"] = [eid for eid in n["engines"] if eid in real]
    for k in range(engine_nodes + trainer_nodes, alloc.nodes):
        placed["nodes"].append({"node": k, "role": "idle", "engines": [], "trainer_ranks": [],
                                "local_gpus": {"engine": [], "trainer": [], "idle": list(range(spn))}})
    return placed, alloc.nodes * spn - engine_gpus - placed["trainer"]["gpus"]


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
    if engine_gpus + t["gpus"] + plan["idle"] != total:
        raise ValueError(f"engines {engine_gpus} + trainer {t['gpus']} + idle {plan['idle']} != allocation {total}")
    if t["tp"] * t["pp"] * t["cp"] * t["dp"] != t["gpus"]:
        raise ValueError(f"TP*PP*CP*DP = {t['tp']}*{t['pp']}*{t['cp']}*{t['dp']} != trainer slots {t['gpus']}")
    if sorted(r for n in plan["nodes"] for r in n["trainer_ranks"]) != list(range(t["gpus"])):
        raise ValueError("trainer ranks are not exactly 0..N-1 across nodes")


# ------------------------------------------------------------------------------------------- printing


def _ranges(xs: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
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


def summary(plan: dict) -> str:
    """One line: allocation, trainer layout, engines (what ``--validate-only`` prints)."""
    unit = "GPUs" if plan["device"] == "gpu" else "CPU processes"
    t = plan["trainer"]
    if plan["workers"]:
        w = plan["workers"]
        return (f"{plan['nodes_total']} nodes x {plan['slots_per_node']} {unit}, {w['count']} prefgen workers x "
                f"{w['slots_each']} {unit} each")
    out = (f"{plan['nodes_total']} nodes x {plan['slots_per_node']} {unit}, trainer TP={t['tp']} PP={t['pp']} "
           f"CP={t['cp']} DP={t['dp']}")
    if plan["engines"]:
        out += f", {len(plan['engines'])} engines x TP={plan['engines'][0]['tp']}"
    if plan["idle"]:
        out += f", {plan['idle']} idle"
    return out


def format_plan(plan: dict) -> str:
    """Human-readable plan for ``DRY_RUN=1`` (nodes with the same role and shape are folded into one line)."""
    unit = "GPUs" if plan["device"] == "gpu" else "CPU processes"
    t, idle = plan["trainer"], plan["idle"]
    eng = sum(len(e["gpus"]) for e in plan["engines"])
    head = (f"plan: {plan['config']} ({plan['model']}) on {plan['nodes_total']} nodes x {plan['slots_per_node']} "
            f"{unit} = {plan['slots_total']} {unit}")
    idle_part = f" + idle {idle}" if idle else ""
    total = (f"  total: engines {eng} + trainers {t['gpus']}{idle_part} = {eng + t['gpus'] + idle} "
             f"(allocation {plan['slots_total']}) OK")
    lines = [head, total, f"  run dir: {plan['run_dir']}"]
    if idle:
        lines.append(f"  WARNING: {idle} {unit} idle: the config's layout does not tile the allocation")
    if plan["workers"]:
        from megatron_tulu.plan.workers import worker_lines

        lines += worker_lines(plan)
    else:
        lines += _trainer_lines(plan)
    if plan["device"] == "gpu":
        lines.append(_memory_line(plan))
    if plan["command"]:
        lines.append("  command: " + shlex.join(plan["command"]))
    return "\n".join(lines)


def _trainer_lines(plan: dict) -> list[str]:
    """A training stage's part of :func:`format_plan`: the trainer, its engines, the nodes."""
    t = plan["trainer"]
    lines = [f"  trainer: {t['gpus']} ranks, TP={t['tp']} PP={t['pp']} CP={t['cp']} DP={t['dp']}"]
    if plan["colocated_engine_tp"]:
        etp = plan["colocated_engine_tp"]
        lines.append(f"  engines: {t['gpus'] // etp} x vLLM TP={etp} colocated on the trainer GPUs, each node's started "
                     "by its first trainer rank (rlvr.engine_placement=colocated)")
    elif plan["local_engine"]:
        lines.append("  engine: inside trainer rank 0's process (rlvr.engine_placement=local)")
    for e in plan["engines"]:
        hosts = sorted({g // plan["slots_per_node"] for g in e["gpus"]})
        lines.append(f"  engine {e['id']}: vLLM TP={e['tp']} on global slots {_ranges(e['gpus'])} "
                     f"(nodes {_ranges(hosts)})")
    return lines + ["  nodes:", *_node_lines(plan)]


def _node_lines(plan: dict) -> list[str]:
    """One line per node, runs of alike trainer-only nodes folded into one."""
    lines, nodes, rlvr, i = [], plan["nodes"], plan["stage"] == "rlvr", 0
    while i < len(nodes):
        n, j = nodes[i], i
        while (n["role"] == "trainer" and j + 1 < len(nodes) and nodes[j + 1]["role"] == "trainer"
               and len(nodes[j + 1]["trainer_ranks"]) == len(n["trainer_ranks"])):
            j += 1
        if j > i:
            r = [x for k in range(i, j + 1) for x in nodes[k]["trainer_ranks"]]
            drv = " + RLVR driver on rank 0" if rlvr and 0 in r else ""
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
            extra = ((" + Ray head" if i == 0 else "") + (" + RLVR driver on rank 0" if 0 in n["trainer_ranks"] else "")
                     if rlvr else "")
            lines.append(f"    node {i} ({n['host']}): {n['role']}: {'; '.join(what)}{extra}")
        i = j + 1
    return lines


def _memory_line(plan: dict) -> str:
    """The planner's memory verdict per trainer GPU (GPU plans only: the model is of GPU memory)."""
    mem = plan["memory"]
    if plan["feasible"] is None:  # no verdict (see build_plan)
        return "  memory (planner): " + "; ".join(mem.get("reasons", []))
    gib = mem.get("memory_gib", {})
    rec = mem.get("recompute") or "none"
    total_gib = gib.get(f"total_{rec}") if isinstance(gib, dict) else None
    return (f"  memory (planner): feasible={plan['feasible']}, recompute={rec}"
            + (f", {total_gib:.1f} of {gib.get('capacity', 0):.1f} GiB per trainer GPU"
               if isinstance(total_gib, (int, float)) else "")
            + ("; " + "; ".join(mem.get("reasons", [])) if mem.get("reasons") else ""))
