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
        plan = ""
        if not args.nproc:  # the job plan of the config's cluster allocation (slurm/prefgen_<size>.sh)
            from megatron_tulu.plan import jobs

            try:
                plan = f"; plan: {jobs.summary(jobs.build_plan(cfg, 'prefgen', args.config))}"
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        print(f"config {args.config}: valid (PrefGenConfig; models {models}; judge "
              f"{cfg.judge.model or '-'}{' + verifier' if cfg.judge.verifier else ''}{plan})")
        return 0
    return run_worker(cfg)


def run_worker(cfg) -> int:
    """This process's worker: its GPUs, then its shards. SIGUSR1/SIGTERM (SLURM's warning before the time limit,
    or a preemption) end it at once with exit 75, which the SLURM script turns into a requeue; the finished shard
    files stay, so the requeued job (or any rerun) resumes from them."""
    from megatron_tulu.preemption import exit_on_preemption
    from megatron_tulu.prefgen.run import Worker, narrow_visible_gpus, worker_rank
    from megatron_tulu.rollout.factory import require_engine_here

    worker, workers = worker_rank()
    restore = exit_on_preemption(f"[prefgen {worker}/{workers}]",
                                 "the finished shards are on disk and a rerun resumes from them")
    try:
        require_engine_here(cfg.engine.kind, cfg.engine.placement)  # before the tokenizers and prompts
        gpus = narrow_visible_gpus(cfg.gpus_per_worker())  # a Ray the worker starts sees the same GPUs
        if gpus is not None:
            print(f"[prefgen {worker}/{workers}] engine GPUs: CUDA_VISIBLE_DEVICES={gpus}", flush=True)
        Worker(cfg, worker, workers).run()
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, before any engine where possible
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        restore()
    return 0
