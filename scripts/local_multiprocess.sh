#!/bin/bash
# N processes on this machine (CPU, gloo collectives), each with D fake devices: the
# multi-host code path without a cluster. Same flags a cluster job would take.
#
#   scripts/local_multiprocess.sh 2 2 configs/default.py:tiny /tmp/mp_run
set -euo pipefail
n=${1:?usage: scripts/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR [overrides]}
devices=${2:?missing DEVICES_PER_PROCESS}
config=${3:?missing CONFIG}
workdir=${4:?missing WORKDIR}
shift 4
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
    python -m deepfake_jax.main --config "$config" --workdir "$workdir" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i" "$@" &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
