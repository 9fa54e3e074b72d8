#!/usr/bin/env bash
# Runs one experiment: bash launch/experiment.sh <config[:arg]> <workdir> [--config.x=y ...]
# e.g. bash launch/experiment.sh configs/shapes.py:task=15-5,method=ft,setting=disjoint runs/ft_15-5
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 CONFIG[:ARG] WORKDIR [--config.FIELD=VALUE ...]" >&2; exit 2; fi
source "$(dirname "$0")/_install.sh"
config="$1"; workdir="$2"; shift 2
python -m incseg_jax.main --config="$config" --workdir="$workdir" "$@"
