#!/bin/bash
# Test job: the RLVR scripts' Ray bring-up (slurm/_ray.sh) on whatever allocation it gets, a probe that runs
# one task per Ray node, then the teardown on exit. MT_ROOT must point at the checkout.
#SBATCH --job-name=mt-ray-test
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:05:00
STAGE=rlvr SIZE=tiny
source "$MT_ROOT/slurm/_common.sh"
source "$MT_ROOT/slurm/_ray.sh"
export MT_RUN_DIR=$PWD  # the RLVR scripts take it from the plan (mt_rlvr_layout); Ray's per-job token goes here
mt_ray_up
mt_srun --overlap -N1 -n1 "$MT_PYTHON" "$MT_ROOT/tests/slurm/programs/ray_probe.py"
