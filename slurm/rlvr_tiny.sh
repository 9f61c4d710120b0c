#!/bin/bash
# RLVR (megatron trainers under srun + vLLM engines as Ray actors) of the tiny CPU preset: 1 node, 2 CPU processes (CI / laptop scale).
#   mkdir -p logs && sbatch slurm/rlvr_tiny.sh [hydra overrides...]
#   DRY_RUN=1 bash slurm/rlvr_tiny.sh      # prints node roles, ranks, TP/PP/DP, engine placement and commands
# Site settings (partition, account, container image, mounts, data/run dirs): see slurm/_common.sh.
# Layout and allocation: configs/rlvr/tiny.yaml (cluster.* there must match the #SBATCH lines below;
# DRY_RUN and the job check it). SIGUSR1 60s before the time limit ->
# trainers checkpoint and exit 75 -> the job requeues itself -> resume=auto continues.
#SBATCH --job-name=mt-rlvr-tiny
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --signal=USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
STAGE=rlvr SIZE=tiny
# Inside a job $0 is SLURM's spool copy: find this file's real directory from the job record.
_mt_self=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' || true)
source "${MT_ROOT:-$(cd "$(dirname "${_mt_self:-$0}")/.." && pwd)}/slurm/_common.sh"
source "$MT_ROOT/slurm/_ray.sh"

CMD=("$MT_PYTHON" -m launch.rlvr --config "rlvr/$SIZE" checkpoint.resume=auto
     rlvr.engine_placement=ray ${MT_CONFIG_ARGS[@]+"${MT_CONFIG_ARGS[@]}"} "$@")
mt_plan "${CMD[@]}"

# Roles from the plan; Ray over the allocation (engine slots only); the trainer ranks as one srun step, whose
# rank 0 drives RLVR and places the vLLM engines as Ray actors on the engine slots.
mt_rlvr_layout "${CMD[@]}"
mt_ray_up
mt_srun --overlap "${MT_TRAINER_SRUN[@]}" "$MT_PYTHON" -m launch.cluster exec-trainer --plan "$MT_PLAN" -- "${CMD[@]}" \
  && rc=0 || rc=$?
mt_ray_down
mt_finish "$rc"
