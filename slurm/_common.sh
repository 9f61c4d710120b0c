# Sourced by every slurm/<stage>_<size>.sh after it sets STAGE and SIZE: site settings, the srun wrapper
# (container or host), the job plan and the requeue-on-75 rule. Environment and srun only: every decision
# (node roles, plan checks) lives in megatron_tulu/plan/jobs.py (command line: launch/cluster.py). The layout
# and the allocation are the config's (configs/<stage>/<size>.yaml: parallel.*, rlvr.engine_*, cluster.*); the
# plan fails, naming both numbers, when the #SBATCH header (or SLURM, inside a job) disagrees with cluster.*.
#
# Site settings -- all overridable from the environment of `sbatch` (defaults in brackets):
#   SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, SBATCH_QOS
#                         SLURM's own variables: override the #SBATCH header at submission time
#   MT_ROOT               project checkout on the host [the directory above this script]
#   MT_CONTAINER_IMAGE    pyxis/enroot image, e.g. /shared/images/megatron-tulu.sqsh or
#                         docker://ghcr.io/<org>/megatron-tulu:0.1.0 ["" = run in the host environment]
#   MT_CONTAINER_WORKDIR  project directory inside the image [/opt/megatron-tulu]
#   MT_CONTAINER_MOUNTS   extra pyxis mounts "src:dst[,src:dst]" [none]; the runs and HF cache dirs (and
#                         MT_DATA_DIR when set) are always mounted at the same path inside the container
#   MT_DATA_DIR           datasets + tokenizer; when set, passed as data.root= (prefgen: data_root=) and mounted
#                         ["" = the config's]
#   MT_RUNS_DIR           parent of run directories: passed as runs_root=$MT_RUNS_DIR/<size>, under which the
#                         configs put each stage's run_dir (checkpoints, logs, metrics, HF export) and find the
#                         earlier stages' exports (model.init_hf) [$MT_ROOT/runs]
#   MT_RUN_DIR            this run's directory, passed as run_dir= ["" = the config's run_dir, ${runs_root}/<stage>]
#   MT_HF_HOME            Hugging Face cache with the base checkpoints (read-only use) [$MT_RUNS_DIR/hf_home]
#   MT_PYTHON             interpreter [container: python; host: $MT_ROOT/.venv/bin/python, else python3]
#   DRY_RUN=1             print the resolved plan and the commands, run nothing (works outside SLURM)
# Extra arguments to the script (`sbatch slurm/sft_8b.sh train.lr=1e-5`) are Hydra overrides, for the plan and
# the trainer alike: `parallel.tp=2 parallel.pp=2` changes the layout; another node count needs both
# `sbatch --nodes=4 slurm/sft_8b.sh cluster.nodes=4`.

set -euo pipefail

# The project root: MT_ROOT, else the directory above this file (each script sources it by its submitted path,
# which it finds with `scontrol show job` because inside a job $0 is SLURM's spool copy).
MT_ROOT=${MT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export MT_ROOT

# The stage script (inside a job: SLURM's spool copy, which carries the same #SBATCH header).
MT_SCRIPT=$0

# Same literal as megatron_tulu.preemption.REQUEUE_EXIT_CODE (tests/slurm checks that they agree).
MT_REQUEUE_EXIT_CODE=75

MT_CONTAINER_IMAGE=${MT_CONTAINER_IMAGE:-}
MT_CONTAINER_WORKDIR=${MT_CONTAINER_WORKDIR:-/opt/megatron-tulu}
MT_DATA_DIR=${MT_DATA_DIR:-}
MT_RUNS_DIR=${MT_RUNS_DIR:-$MT_ROOT/runs}
MT_RUN_DIR=${MT_RUN_DIR:-}
MT_HF_HOME=${MT_HF_HOME:-$MT_RUNS_DIR/hf_home}
export MT_DATA_DIR MT_RUNS_DIR MT_RUN_DIR HF_HOME=$MT_HF_HOME

if [ -n "$MT_CONTAINER_IMAGE" ]; then
  MT_PYTHON=${MT_PYTHON:-python}
  _mt_mounts="$MT_RUNS_DIR:$MT_RUNS_DIR"
  [ -n "$MT_DATA_DIR" ] && _mt_mounts="$_mt_mounts,$MT_DATA_DIR:$MT_DATA_DIR"
  case "$MT_HF_HOME" in "$MT_RUNS_DIR"/*) ;; *) _mt_mounts="$_mt_mounts,$MT_HF_HOME:$MT_HF_HOME" ;; esac
  [ -n "${MT_CONTAINER_MOUNTS:-}" ] && _mt_mounts="$_mt_mounts,$MT_CONTAINER_MOUNTS"
  MT_SRUN_ARGS=(--container-image="$MT_CONTAINER_IMAGE" --container-mounts="$_mt_mounts"
                --container-workdir="$MT_CONTAINER_WORKDIR" --no-container-mount-home)
else
  if [ -z "${MT_PYTHON:-}" ]; then
    if [ -x "$MT_ROOT/.venv/bin/python" ]; then MT_PYTHON=$MT_ROOT/.venv/bin/python; else MT_PYTHON=python3; fi
  fi
  MT_SRUN_ARGS=(--chdir="$MT_ROOT")
fi

# Settings that are also config fields reach the trainer (and the plan) as Hydra overrides, so the two agree.
MT_CONFIG_ARGS=("runs_root=$MT_RUNS_DIR/$SIZE")
[ -n "$MT_RUN_DIR" ] && MT_CONFIG_ARGS+=("run_dir=$MT_RUN_DIR")
[ -n "$MT_DATA_DIR" ] && MT_CONFIG_ARGS+=("${MT_DATA_KEY:-data.root}=$MT_DATA_DIR")

# Threads per rank = CPUs SLURM gave the task (torch would otherwise start one thread per core per rank).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1

# GPU / InfiniBand settings (harmless on CPU; sites usually only need NCCL_IB_HCA and NCCL_SOCKET_IFNAME):
#   CUDA_DEVICE_MAX_CONNECTIONS=1  megatron-core needs it for TP/sequence-parallel comm/compute overlap
#   NCCL_IB_HCA                    which HCAs NCCL uses, e.g. mlx5_0,mlx5_1,... [unset: NCCL picks all]
#   NCCL_SOCKET_IFNAME             bootstrap/TCP interface, e.g. ib0 or ^lo,docker [unset: NCCL picks]
#   NCCL_IB_TIMEOUT=22             longer IB retry timeout: 405B all-gathers stall on congested fabrics
#   NCCL_IB_QPS_PER_CONNECTION=2   more queue pairs per peer spreads traffic over adaptive routing
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=1  a failed collective aborts the process (then requeue) instead of hanging
#   NCCL_NVLS_ENABLE               set 0 where NVLink SHARP is unsupported by the driver/fabric
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
export NCCL_IB_QPS_PER_CONNECTION=${NCCL_IB_QPS_PER_CONNECTION:-2}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}

# srun in the container (pyxis) when an image is given, in the host environment otherwise.
mt_srun() {
  srun "${MT_SRUN_ARGS[@]}" "$@"
}

# The interpreter that computes plans on the batch host (the host's, even when steps run in a container).
mt_host_python() {
  if [ -n "$MT_CONTAINER_IMAGE" ]; then
    if [ -x "$MT_ROOT/.venv/bin/python" ]; then echo "$MT_ROOT/.venv/bin/python"; else echo python3; fi
  else echo "$MT_PYTHON"; fi
}

# The job plan of the stage command "$@" (its config and overrides): printed, and checked against the allocation
# (this script's #SBATCH header on a dry run, SLURM's variables inside a job), so a mismatch stops the job here,
# before anything starts. DRY_RUN=1: also print where things run, then exit without running anything.
mt_plan() {
  if [ "${DRY_RUN:-0}" = "1" ]; then
    echo "DRY_RUN: $0 (stage=$STAGE size=$SIZE)"
    echo "  root: $MT_ROOT"
    echo "  runs root: $MT_RUNS_DIR/$SIZE   data: ${MT_DATA_DIR:-<config ${MT_DATA_KEY:-data.root}>}   HF_HOME: $HF_HOME"
    if [ -n "$MT_CONTAINER_IMAGE" ]; then echo "  container: $MT_CONTAINER_IMAGE (srun ${MT_SRUN_ARGS[*]})"
    else echo "  container: none (host environment, python: $MT_PYTHON)"; fi
    echo "  partition: ${SBATCH_PARTITION:-<header/site default>}  account: ${SBATCH_ACCOUNT:-<site default>}"
    if [ "$STAGE" = prefgen ]; then echo "  launch: srun ${MT_SRUN_ARGS[*]} <command>   (one task per worker)"
    else echo "  launch: srun ${MT_SRUN_ARGS[*]} <command>   (one task per GPU; CPU: per process)"; fi
    if [ "$STAGE" = rlvr ]; then
      echo "  ray (when the plan has engine slots): head (--port ${MT_RAY_PORT}) on the first node, one raylet per other node offering only its engine slots, ready within ${MT_RAY_WAIT_S}s"
      echo "  trainers: one srun step on the trainer nodes; trainer rank 0 drives RLVR (and places the engines as Ray actors on the engine slots)"
    fi
  fi
  # The plan is computed on the host, from this checkout, even when jobs would run in a container.
  (cd "$MT_ROOT" && "$(mt_host_python)" -m launch.cluster plan --script "$MT_SCRIPT" --stage "$STAGE" --size "$SIZE" \
    -- "$@") || exit $?
  [ "${DRY_RUN:-0}" != "1" ] || exit 0
}

# A trainer that checkpointed after SIGUSR1/SIGTERM exits 75 (a prefgen worker too: its finished shards are files):
# put the job back in the queue; resume=auto (prefgen: its shard files) picks up when it restarts. Any other code is
# the job's result.
mt_finish() {
  local rc=$1
  if [ "$rc" = "$MT_REQUEUE_EXIT_CODE" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "[mt] exit $rc (progress saved after a preemption signal): scontrol requeue $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "[mt] finished with exit code $rc"
  exit "$rc"
}

echo "[mt] $STAGE/$SIZE job=${SLURM_JOB_ID:-none} restart=${SLURM_RESTART_COUNT:-0} nodes=${SLURM_JOB_NODELIST:-none} root=$MT_ROOT" >&2
