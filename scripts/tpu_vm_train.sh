#!/bin/bash
# Training on a Cloud TPU VM slice (v4-32, v5e-16, ...): the same command on every worker.
#
#   scripts/tpu_vm_train.sh TPU_NAME ZONE configs/vit_b16_140k.py gs://bucket/runs/vit_b16 \
#       --config.data.dir=/mnt/data/140k_ar
#
# jax.distributed finds the other workers from the TPU metadata (deepfake_jax/distributed.py).
# The repository must be checked out at ~/deepfake_jax on every worker with its venv installed
# (e.g. `pip install -e . "jax[tpu]"`), and the data reachable from every worker at the same
# path. The workdir may be a gs:// path (orbax writes it directly) or a shared disk. A
# preempted (spot) slice: re-run the script; it resumes from the newest checkpoint.
set -euo pipefail

tpu=${1:?usage: scripts/tpu_vm_train.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]}
zone=${2:?missing ZONE}
config=${3:?missing CONFIG}
workdir=${4:?missing WORKDIR}
shift 4

printf -v overrides '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd ~/deepfake_jax && source .venv/bin/activate &&
  python -m deepfake_jax.main --config $config --workdir $workdir $overrides"
