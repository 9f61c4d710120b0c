#!/bin/bash
# Test job: the stage scripts' preemption path with a small stand-in trainer (programs/preempt_probe.py):
# USR1 -> checkpoint + exit 75 -> mt_finish requeues -> the restarted job resumes and finishes.
#SBATCH --job-name=mt-preempt-test
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:05:00
#SBATCH --signal=USR1@60
#SBATCH --requeue
#SBATCH --open-mode=append
STAGE=test SIZE=preempt
source "$MT_ROOT/slurm/_common.sh"
mt_srun "$MT_PYTHON" "$MT_ROOT/tests/slurm/programs/preempt_probe.py" "$1" && rc=0 || rc=$?
mt_finish "$rc"
