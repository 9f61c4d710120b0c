"""Command line of ``launch/prefgen.py``: parse, load and validate the config, run this worker."""

from __future__ import annotations

import logging
import os
import sys

from megatron_tulu.cli import parse, relaunch_with_torchrun


def main(argv: list[str]) -> int:
    args = parse(argv, "prefgen/tiny", "python -m launch.prefgen")
    if args.nproc and not args.validate_only and "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        return relaunch_with_torchrun("launch.prefgen", argv, args.nproc)
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"), stream=sys.stderr)
    from megatron_tulu.config import load_config
    from megatron_tulu.prefgen.config import PrefGenConfig

    try:
        cfg = load_config(PrefGenConfig, args.config, args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.validate_only:
        models = ", ".join(f"{m.name} x{m.n}" for m in cfg.models())
        print(f"config {args.config}: valid (PrefGenConfig; models {models}; judge "
              f"{cfg.judge.model or '-'}{' + verifier' if cfg.judge.verifier else ''})")
        return 0
    from megatron_tulu.prefgen.run import Worker, worker_rank

    worker, workers = worker_rank()
    try:
        Worker(cfg, worker, workers).run()
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, before any engine where possible
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
