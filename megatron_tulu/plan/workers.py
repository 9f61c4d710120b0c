"""The job plan of a prefgen run (``slurm/prefgen_<size>.sh``): every SLURM task is a worker with its own engines.

Worker ``w`` of ``W`` (``SLURM_PROCID`` / ``SLURM_NTASKS``) owns shards ``w, w + W, ...``
(:mod:`megatron_tulu.prefgen.run`). Its engine takes ``engine.tp`` GPUs of its node; with ``engine.placement=ray``
its ``engine.num_engines`` engines are actors of a Ray the worker starts on its node (the engines then run under
``$MT_VLLM_PYTHON``: the container's way to vLLM). Either way a worker's GPUs are the ``SLURM_LOCALID``-th group of
:meth:`~megatron_tulu.prefgen.config.PrefGenConfig.gpus_per_worker` on its node
(:func:`megatron_tulu.prefgen.run.narrow_visible_gpus`); a CPU job gives each worker one task. In the plan's shape
(:func:`megatron_tulu.plan.jobs.check_plan`) the workers' engines fill every slot and there is no trainer.
"""

from __future__ import annotations


def place_workers(cfg, alloc) -> dict:
    """Workers on ``alloc`` (a :class:`megatron_tulu.plan.jobs.Allocation`), in node order; raises ``ValueError``
    when a worker's engines do not tile a node."""
    e, spn = cfg.engine, alloc.slots_per_node
    per_worker = cfg.gpus_per_worker() if alloc.device == "gpu" else 1
    if spn % per_worker:
        raise ValueError(f"a prefgen worker's engines take {per_worker} GPUs (engine.tp={e.tp}"
                         + (f" x engine.num_engines={e.num_engines}" if e.placement == "ray" else "")
                         + f"), which do not tile a node of {spn} GPUs: a worker's engines live on its node")
    per_node = spn // per_worker
    engines, nodes = [], []
    for n in range(alloc.nodes):
        ids = list(range(n * per_node, (n + 1) * per_node))
        engines += [{"id": w, "tp": per_worker, "gpus": list(range(w * per_worker, (w + 1) * per_worker))}
                    for w in ids]
        nodes.append({"node": n, "role": "workers", "engines": ids, "trainer_ranks": [],
                      "local_gpus": {"engine": list(range(spn)), "trainer": []}})
    why = ("no memory verdict for prefgen: its models' shapes are read at run time (vLLM checks at start that each "
           "fits engine.memory_fraction of its engine's GPUs)")
    engine = (f"{e.kind}, {e.num_engines} x TP={e.tp} as Ray actors of a Ray it starts on its node"
              if e.placement == "ray" else f"{e.kind}, TP={e.tp}, in its process")
    return {"nodes": nodes, "engines": engines, "trainer": {"gpus": 0, "tp": 1, "pp": 1, "cp": 1, "dp": 0, "ranks": []},
            "memory": {"reasons": [why]}, "feasible": None,
            "workers": {"count": len(engines), "slots_each": per_worker, "engine": engine}}


def worker_lines(plan: dict) -> list[str]:
    """The workers of a prefgen plan, one line per node (for ``format_plan``)."""
    from megatron_tulu.plan.jobs import _ranges

    w = plan["workers"]
    each = f"{w['slots_each']} GPUs" if plan["device"] == "gpu" else "its CPU process"
    lines = [f"  workers: {w['count']} (one per SLURM task), each with its own engines ({w['engine']}) on {each}; "
             f"worker i owns shards i, i+{w['count']}, ...; the last to finish merges preferences.jsonl"]
    for n in plan["nodes"]:
        where = ""
        if plan["device"] == "gpu":
            groups = [plan["engines"][i]["gpus"] for i in n["engines"]]
            where = " on local GPUs " + " | ".join(_ranges([g % plan["slots_per_node"] for g in gs]) for gs in groups)
        lines.append(f"    node {n['node']} ({n['host']}): workers {_ranges(n['engines'])}{where}")
    return lines
