#!/usr/bin/env bash
# Runs one experiment on every GPU of one machine: one process sees all local GPUs and splits each
# global batch over them (data parallel, one jit; BatchNorm statistics are the global batch's).
#
#   bash launch/multi_gpu.sh CONFIG[:ARG] WORKDIR [--config.x=y ...]
#   e.g. CUDA_VISIBLE_DEVICES=0,1,2,3 bash launch/multi_gpu.sh configs/voc.py:task=15-1,method=mib \
#          runs/mib_15-1 --config.dataset.manual_dir=/data/VOCdevkit/VOC2012
#
# config.input.batch_size (global) must be a multiple of the GPU count (checked before training).
# Several machines: start this command on each with --config.distributed.coordinator_address=HOST:PORT
# --config.distributed.num_processes=N --config.distributed.process_id=I (I = 0 .. N-1), or under SLURM /
# Open MPI, which jax.distributed detects. Rerunning the same command resumes.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 CONFIG[:ARG] WORKDIR [--config.FIELD=VALUE ...]" >&2; exit 2; fi
INCSEG_EXTRAS=${INCSEG_EXTRAS:-cuda} source "$(dirname "$0")/_install.sh"
config="$1"; workdir="$2"; shift 2
python -m incseg_jax.main --config="$config" --workdir="$workdir" "$@"
