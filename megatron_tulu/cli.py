"""Shared command line of the stage entry points (``launch/*.py``).

    python -m launch.sft --config sft/tiny [--nproc N] [key=value ...]

``--nproc N`` re-runs the same command under ``torchrun --nproc-per-node N`` (CPU/gloo or one GPU node);
under SLURM, ``srun`` starts one process per task and ranks come from SLURM's variables.
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
