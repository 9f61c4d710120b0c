"""Command line of the SLURM job planner (:mod:`megatron_tulu.plan.jobs`, :mod:`megatron_tulu.plan.ray_cluster`):

    python -m launch.cluster plan --script S --stage rlvr --size 405b [--json] -- <stage command...>
    python -m launch.cluster layout --script S --stage rlvr --size X [--out F] -- <stage command...>  (RLVR job)
    python -m launch.cluster exec-trainer --plan F -- <command...>           (RLVR job: one trainer rank)
    python -m launch.cluster ray-start [--plan F] -- ray start --block ...   (what each Ray srun task runs)
    python -m launch.cluster ray-wait --address HOST:PORT --nodes N [--timeout 120]

The plan is of the config the stage command loads (``--config X`` and its ``key=value`` overrides), checked
against the script's ``#SBATCH`` header (or SLURM's variables inside a job); errors exit 2 with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_tulu.plan import jobs, ray_cluster


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, what in (("plan", "print the job plan of a slurm/ script's command (DRY_RUN, and in the job)"),
                       ("layout", "RLVR job: write the plan for the srun steps, print the trainer srun options")):
        s = sub.add_parser(name, help=what)
        s.add_argument("--script", required=True, help="the sbatch script (its #SBATCH header is checked)")
        s.add_argument("--stage", required=True, choices=jobs.STAGES)
        s.add_argument("--size", required=True, choices=jobs.SIZES)
    sub.choices["plan"].add_argument("--json", action="store_true", help="print the plan as JSON")
    sub.choices["layout"].add_argument("--out", help="plan JSON path (on the shared filesystem) [the run directory's "
                                       ".mt_plan_<job id>.json]")
    sub.add_parser("exec-trainer", help="exec the command (after --) with this node's trainer GPUs").add_argument(
        "--plan", required=True)
    s = sub.add_parser("ray-start", help="run `ray start --block` (after --), retrying a failed start")
    s.add_argument("--attempts", type=int, default=3)
    s.add_argument("--plan", help="job plan (from `layout`): offer Ray only this node's engine slots")
    s = sub.add_parser("ray-wait", help="wait until a Ray cluster has N alive nodes")
    s.add_argument("--address", required=True, help="HOST:PORT of the Ray head (GCS)")
    s.add_argument("--nodes", type=int, required=True)
    s.add_argument("--timeout", type=float, default=120.0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    k = argv.index("--") if "--" in argv else len(argv)
    argv, command = argv[:k], argv[k + 1:]
    p = _parser()
    a = p.parse_args(argv)
    if a.cmd in ("exec-trainer", "ray-start") and not command:
        p.error(f"{a.cmd} needs the command after --")
    try:
        if a.cmd == "plan":
            plan = jobs.plan_for_job(a.script, a.stage, a.size, command)
            print(json.dumps(plan, indent=1, default=str) if a.json else jobs.format_plan(plan), flush=True)
        elif a.cmd == "layout":
            print(ray_cluster.write_layout(jobs.plan_for_job(a.script, a.stage, a.size, command), a.out))
        elif a.cmd == "exec-trainer":
            ray_cluster.exec_trainer(a.plan, command)
        elif a.cmd == "ray-start":
            return ray_cluster.ray_start(command, a.attempts, a.plan)
        else:
            print(f"ray: {ray_cluster.ray_wait(a.address, a.nodes, a.timeout)} nodes alive at {a.address}", flush=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
