#!/bin/bash
# Reward model (Bradley-Terry, Tülu 3 8B RM recipe) of the tiny CPU preset: 1 node, 2 CPU processes (CI / laptop scale).
#   mkdir -p logs && sbatch slurm/rm_tiny.sh [hydra overrides...]
#   DRY_RUN=1 bash slurm/rm_tiny.sh      # prints node roles, ranks, TP/PP/DP and commands
# Site settings (partition, account, container image, mounts, data/run dirs): see slurm/_common.sh.
# Layout and allocation: configs/rm/tiny.yaml (cluster.* there must match the #SBATCH lines below;
# DRY_RUN and the job check it). SIGUSR1 60s before the time limit ->
# trainers checkpoint and exit 75 -> the job requeues itself -> resume=auto continues.
#SBATCH --job-name=mt-rm-tiny
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --signal=USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
STAGE=rm SIZE=tiny
# Inside a job $0 is SLURM's spool copy: find this file's real directory from the job record.
_mt_self=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' || true)
source "${MT_ROOT:-$(cd "$(dirname "${_mt_self:-$0}")/.." && pwd)}/slurm/_common.sh"

CMD=("$MT_PYTHON" -m launch.rm --config "rm/$SIZE" checkpoint.resume=auto ${MT_CONFIG_ARGS[@]+"${MT_CONFIG_ARGS[@]}"} "$@")
mt_plan "${CMD[@]}"

# One task per GPU (CPU: per process); each derives RANK/WORLD_SIZE/MASTER_ADDR from SLURM.
mt_srun "${CMD[@]}" && rc=0 || rc=$?
mt_finish "$rc"
