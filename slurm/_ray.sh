# Sourced after _common.sh by the RLVR scripts: the job's roles and a Ray cluster over the SLURM allocation.
#   mt_rlvr_layout CMD...: the plan of the stage command CMD (launch.cluster layout) written to $MT_PLAN (in the
#          run directory, $MT_RUN_DIR: the config's) for every srun step, and
#          MT_TRAINER_SRUN, the srun options of the trainer step (the trainer nodes, one task per trainer rank),
#          MT_RAY_NEEDED, 0 when no engine is a Ray actor (local or colocated engines): mt_ray_up starts nothing
#   head   on the first node of the allocation (srun step, background)
#   workers on every other node, one raylet per node (one srun step, background); with $MT_PLAN each raylet
#          offers Ray only its node's engine slots (none on trainer-only nodes), so the engines' placement group
#          lands on the engine slots and trainer rank 0 (the driver) can join from any node
#   readiness: launch.cluster ray-wait polls until all nodes are alive, bounded by MT_RAY_WAIT_S
#   teardown: on exit (trap), the Ray steps get SIGTERM, then SIGKILL after MT_RAY_STOP_S
#
# Settings (defaults in brackets):
#   MT_RAY_PORT            GCS port of the head [40000 + job id % 10000, so two jobs on a node do not collide]
#   MT_RAY_HEAD_IP         address of the head node that the other nodes reach [getent of its host name]
#   MT_RAY_WAIT_S          readiness timeout in seconds [180]
#   MT_RAY_STOP_S          seconds to wait for Ray to exit before SIGKILL [20]
#   MT_RAY_NUM_CPUS        --num-cpus per raylet ["" = Ray detects]
#   RAY_AUTH_MODE          Ray authentication [token, with a per-job token in $MT_RUN_DIR/.ray_auth_token]
#   MT_RAY_HEAD_NODE_WORKERS  extra worker raylets on the head node [0]; lets a one-node allocation exercise
#                          the multi-node path (used by tests/slurm on the one-node CI SLURM)
# Each Ray task runs `launch.cluster ray-start` (retries a start that timed out on a loaded node, forwards
# SIGTERM, ignores SIGUSR1: SLURM's preemption warning is for the driver/trainers, which checkpoint and exit 75;
# the daemons are stopped by the teardown).

MT_RAY_PORT=${MT_RAY_PORT:-$((40000 + ${SLURM_JOB_ID:-0} % 10000))}
MT_RAY_WAIT_S=${MT_RAY_WAIT_S:-180}
MT_RAY_STOP_S=${MT_RAY_STOP_S:-20}
MT_RAY_NUM_CPUS=${MT_RAY_NUM_CPUS:-}
MT_RAY_HEAD_NODE_WORKERS=${MT_RAY_HEAD_NODE_WORKERS:-0}
if [ -n "$MT_CONTAINER_IMAGE" ]; then MT_RAY=${MT_RAY:-ray}
elif [ -x "$(dirname "$MT_PYTHON")/ray" ]; then MT_RAY=${MT_RAY:-$(dirname "$MT_PYTHON")/ray}
else MT_RAY=${MT_RAY:-ray}; fi
MT_RAY_PIDS=()

mt_rlvr_layout() {
  local line  # assigned apart from `eval`, so a failing plan stops the job (eval "$(false)" returns 0)
  # sets MT_TRAINER_SRUN, MT_RAY_NEEDED, MT_PLAN (the plan file, in the run directory) and MT_RUN_DIR (the config's)
  line=$(cd "$MT_ROOT" && "$(mt_host_python)" -m launch.cluster layout --script "$MT_SCRIPT" --stage "$STAGE" \
    --size "$SIZE" -- "$@") || exit $?
  eval "$line"
  export MT_PLAN MT_RUN_DIR
  echo "[mt] trainer step: srun ${MT_TRAINER_SRUN[*]}; plan in $MT_PLAN" >&2
}

mt_ray_down() {
  [ "${#MT_RAY_PIDS[@]}" -gt 0 ] || return 0
  echo "[mt] stopping Ray (srun pids ${MT_RAY_PIDS[*]})" >&2
  kill -TERM "${MT_RAY_PIDS[@]}" 2>/dev/null || true
  local i
  for i in $(seq "$MT_RAY_STOP_S"); do
    kill -0 "${MT_RAY_PIDS[@]}" 2>/dev/null || break
    sleep 1
  done
  kill -KILL "${MT_RAY_PIDS[@]}" 2>/dev/null || true
  wait "${MT_RAY_PIDS[@]}" 2>/dev/null || true
  MT_RAY_PIDS=()
  echo "[mt] Ray stopped" >&2
}

mt_ray_up() {
  local nodes head head_ip opts gpu_opts total
  if [ "${MT_RAY_NEEDED:-1}" = 0 ]; then
    echo "[mt] no Ray cluster: the plan has no engine slots (the engines run inside the trainers)" >&2
    return 0
  fi
  nodes=${SLURM_JOB_NUM_NODES:-1}
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  head_ip=${MT_RAY_HEAD_IP:-$(getent ahostsv4 "$head" | awk 'NR==1 {print $1}')}
  head_ip=${head_ip:-$head}
  if [ "$nodes" -gt 1 ] && [[ "$head_ip" == 127.* ]]; then
    echo "[mt] ERROR: head node $head resolves to loopback $head_ip; set MT_RAY_HEAD_IP to its cluster address" >&2
    return 1
  fi
  export RAY_ADDRESS=$head_ip:$MT_RAY_PORT  # the driver's ray.init() connects here
  # Token authentication with a per-job token in the run directory (shared filesystem), passed explicitly to
  # every Ray process: a stale ~/.ray/auth_token left by some other local ray.init() must not decide it.
  export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
  if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-${MT_RUN_DIR:?mt_ray_up needs MT_RUN_DIR (mt_rlvr_layout sets it)}/.ray_auth_token}
    mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
    [ -s "$RAY_AUTH_TOKEN_PATH" ] || (umask 077 && "$MT_PYTHON" -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH")
  fi
  opts=(--block --disable-usage-stats)
  [ -n "$MT_RAY_NUM_CPUS" ] && opts+=(--num-cpus="$MT_RAY_NUM_CPUS")
  gpu_opts=()
  [ -n "${SLURM_GPUS_PER_NODE:-}" ] && gpu_opts=(--gpus-per-node="$SLURM_GPUS_PER_NODE")
  trap mt_ray_down EXIT
  echo "[mt] Ray head on $head ($RAY_ADDRESS), $((nodes - 1)) worker nodes, $MT_RAY_HEAD_NODE_WORKERS extra on head" >&2
  local plan_opts=()
  [ -n "${MT_PLAN:-}" ] && plan_opts=(--plan "$MT_PLAN")
  mt_srun --overlap -N1 -n1 -w "$head" "${gpu_opts[@]}" "$MT_PYTHON" -m launch.cluster ray-start "${plan_opts[@]}" -- \
    "$MT_RAY" start --head --port="$MT_RAY_PORT" --node-ip-address="$head_ip" --include-dashboard=false \
    --temp-dir="/tmp/ray-mt-${SLURM_JOB_ID}" "${opts[@]}" &
  MT_RAY_PIDS+=($!)
  if [ "$nodes" -gt 1 ]; then
    mt_srun --overlap -N$((nodes - 1)) --ntasks-per-node=1 --exclude="$head" "${gpu_opts[@]}" \
      "$MT_PYTHON" -m launch.cluster ray-start "${plan_opts[@]}" -- "$MT_RAY" start --address="$RAY_ADDRESS" "${opts[@]}" &
    MT_RAY_PIDS+=($!)
  fi
  if [ "$MT_RAY_HEAD_NODE_WORKERS" -gt 0 ]; then
    # Same host as the head: same node IP (Ray would otherwise pick another interface of this host).
    mt_srun --overlap -N1 -n"$MT_RAY_HEAD_NODE_WORKERS" -w "$head" \
      "$MT_PYTHON" -m launch.cluster ray-start -- "$MT_RAY" start --address="$RAY_ADDRESS" \
      --node-ip-address="$head_ip" "${opts[@]}" &
    MT_RAY_PIDS+=($!)
  fi
  total=$((nodes + MT_RAY_HEAD_NODE_WORKERS))
  mt_srun --overlap -N1 -n1 -w "$head" "$MT_PYTHON" -m launch.cluster ray-wait --address "$RAY_ADDRESS" \
    --nodes "$total" --timeout "$MT_RAY_WAIT_S"
}
