"""Shared command line of the stage entry points (``launch/*.py``).

    python -m launch.sft --config sft/tiny [--nproc N] [--validate-only] [key=value ...]

``--nproc N`` re-runs the same command under ``torchrun --nproc-per-node N`` (CPU/gloo or one GPU node);
under SLURM, ``srun`` starts one process per task and ranks come from SLURM's variables. ``--validate-only`` loads
and validates the config (types, choices, cross-field rules) and its layout against the ranks it would run on: with
``--nproc``, that many local processes, else the job plan of the config's ``cluster`` allocation (node roles,
trainer ranks, RLVR engine slots: ``megatron_tulu.plan.jobs``); it exits 0 without starting anything and needs no
data, tokenizer or checkpoint on disk.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from typing import Callable


def parse(argv, default_config: str, prog: str):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=default_config, help="config name under configs/, e.g. sft/tiny")
    ap.add_argument("--nproc", type=int, default=0, help="spawn this many local processes with torchrun")
    ap.add_argument("--validate-only", action="store_true",
                    help="load and validate the config and its layout (against --nproc ranks, else the job plan of "
                         "its cluster.* allocation), then exit; starts nothing")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.lr=1e-5 parallel.tp=2")
    return ap.parse_args(argv)


def relaunch_with_torchrun(module: str, argv: list[str], nproc: int) -> int:
    from megatron_tulu.parallel import free_port

    rest = [a for i, a in enumerate(argv) if not (a.startswith("--nproc") or (i and argv[i - 1] == "--nproc"))]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--nnodes=1",
           f"--master-port={free_port()}", "-m", module, *rest]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.call(cmd, env=env)


def stage_main(module: str, schema, make_task: Callable | None, default_config: str, argv=None, run: Callable | None = None) -> int:
    """Parse, compose the config, run the stage (``run(cfg)``, or the shared loop with ``make_task(cfg)``).
    Returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv, default_config, f"python -m {module}")
    if args.validate_only:
        return validate_only(schema, args, module.rsplit(".", 1)[-1])
    if args.nproc and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        return relaunch_with_torchrun(module, argv, args.nproc)
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"), stream=sys.stderr)
    from megatron_tulu.config import load_config
    from megatron_tulu.trainers.fit import run_stage

    try:
        cfg = load_config(schema, args.config, args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if run is not None:
        run(cfg)
    else:
        run_stage(cfg, make_task(cfg))
    return 0


def layout_problems(cfg, world_size: int) -> list[str]:
    """What keeps ``cfg``'s parallel layout from running on ``world_size`` ranks (empty: it fits)."""
    p, t = cfg.parallel, cfg.train
    model_parallel = p.tp * p.pp * p.cp
    if world_size % model_parallel:
        return [f"{world_size} ranks do not split into parallel.tp x pp x cp = {p.tp} x {p.pp} x {p.cp}"]
    dp = world_size // model_parallel
    if t.global_batch_size % (t.micro_batch_size * dp):
        return [f"train.global_batch_size={t.global_batch_size} is not a multiple of train.micro_batch_size x DP = "
                f"{t.micro_batch_size} x {dp}"]
    return []


def validate_only(schema, args, stage: str) -> int:
    """``--validate-only``: the config loads and validates (``load_config`` runs its ``validate()``), and its layout
    fits the ranks it would run on: ``--nproc`` local processes, else the job plan of its ``cluster`` allocation
    (which raises when the layout does not tile it). Prints one line and returns the exit code."""
    from megatron_tulu.config import load_config
    from megatron_tulu.plan import jobs

    try:
        cfg = load_config(schema, args.config, args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if args.nproc:
            ranks, where = args.nproc, f", {args.nproc} ranks"
        else:
            plan = jobs.build_plan(cfg, stage, args.config)
            ranks, where = plan["trainer"]["gpus"], f"; plan: {jobs.summary(plan)}"
        problems = layout_problems(cfg, ranks) + (plan["engine_problems"] if not args.nproc else [])
    except ValueError as e:
        problems = [str(e)]
    if problems:
        print(f"error: config {args.config!r}: " + "; ".join(problems), file=sys.stderr)
        return 2
    print(f"config {args.config}: valid ({schema.__name__}{where})")
    return 0
