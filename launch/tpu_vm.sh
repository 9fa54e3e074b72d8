#!/usr/bin/env bash
# Runs one experiment on every worker of a Cloud TPU VM slice (multi-host): each worker runs the
# same command, jax.distributed finds the others (--config.distributed.auto=True), each reads its
# part of every global batch, all write the orbax checkpoints, worker 0 writes results and logs.
#
#   bash launch/tpu_vm.sh TPU_NAME ZONE CONFIG[:ARG] WORKDIR [--config.x=y ...]
#   e.g. bash launch/tpu_vm.sh my-v4-32 us-central2-b configs/voc.py:task=15-1,method=plop \
#          gs://bucket/runs/plop_15-1 --config.dataset.manual_dir=/mnt/data/VOCdevkit/VOC2012
#
# WORKDIR must be a directory every worker sees (a GCS bucket path or a shared mount), and the
# data (manual_dir or data_dir) must be readable on every worker. Rerunning the same command resumes.
# Needs the gcloud CLI; the repository is copied to ~/incseg_jax on each worker and installed there.
set -euo pipefail
if [ $# -lt 4 ]; then echo "usage: $0 TPU_NAME ZONE CONFIG[:ARG] WORKDIR [--config.FIELD=VALUE ...]" >&2; exit 2; fi
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
repo="$(cd "$(dirname "$0")/.." && pwd)"
gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/incseg_jax
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="cd ~/incseg_jax && \
  INCSEG_EXTRAS=tpu source launch/_install.sh && \
  python -m incseg_jax.main --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir") \
    --config.distributed.auto=True$extra"
