#!/bin/bash
# On-policy preference data (Tülu 3 §5.2) of the tiny CPU recipe: 1 node, 2 CPU processes (workers, each with its own engine; CI / laptop scale).
#   mkdir -p logs && sbatch slurm/prefgen_tiny.sh [hydra overrides...]
#   DRY_RUN=1 bash slurm/prefgen_tiny.sh    # prints the workers and the command
# Site settings (partition, account, container image, mounts, data/run dirs): see slurm/_common.sh.
# Layout and allocation: configs/prefgen/tiny.yaml (cluster.* and engine.* there must match the #SBATCH lines below;
# DRY_RUN and the job check it). The pool is the tiny pretraining's export, ${runs_root}/pretrain/hf, which no script
# writes: python -m launch.pretrain --config pretrain/tiny runs_root=$MT_RUNS_DIR/tiny (the policy: sft_tiny.sh).
# Every finished step of a shard is a file: SIGUSR1 60s before the time limit -> the workers stop (the shards in
# flight are redone) and exit 75 -> the job requeues itself -> the workers resume from the finished shards.
#SBATCH --job-name=mt-prefgen-tiny
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --signal=USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
STAGE=prefgen SIZE=tiny MT_DATA_KEY=data_root  # prefgen names its data directory data_root
# Inside a job $0 is SLURM's spool copy: find this file's real directory from the job record.
_mt_self=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' || true)
source "${MT_ROOT:-$(cd "$(dirname "${_mt_self:-$0}")/.." && pwd)}/slurm/_common.sh"

CMD=("$MT_PYTHON" -m launch.prefgen --config "prefgen/$SIZE" ${MT_CONFIG_ARGS[@]+"${MT_CONFIG_ARGS[@]}"} "$@")
mt_plan "${CMD[@]}"

# One task per worker (SLURM_PROCID / SLURM_NTASKS: worker i owns shards i, i+N, ...); a worker sharing its node
# takes the SLURM_LOCALID-th group of its engines' GPUs. The last worker to finish merges preferences.jsonl.
unset RAY_ADDRESS  # engine.placement=ray: each worker starts its own Ray on its node, never joins one from the shell
mt_srun "${CMD[@]}" && rc=0 || rc=$?
mt_finish "$rc"
