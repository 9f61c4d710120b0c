#!/bin/bash
# Test job: two tasks through the scripts' srun wrapper (mt_srun); each derives its torch.distributed env from
# SLURM (megatron_tulu.parallel.env_from_slurm) and joins one gloo group. MT_ROOT must point at the checkout.
#SBATCH --job-name=mt-dist-test
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:05:00
STAGE=test SIZE=dist
source "$MT_ROOT/slurm/_common.sh"
mt_srun "$MT_PYTHON" "$MT_ROOT/tests/slurm/programs/dist_probe.py" "$1" && rc=0 || rc=$?
mt_finish "$rc"
