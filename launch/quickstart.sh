#!/usr/bin/env bash
# Installs incseg_jax into .venv and runs the default experiment on the
# built-in `shapes` dataset: fine-tuning on 15-1 overlapped (15 classes, then 5
# steps of one class), then `joint` training (the upper bound), then one table
# comparing them. Re-running resumes/reuses finished steps; FRESH=1 starts over.
set -euo pipefail
source "$(dirname "$0")/_install.sh"
out="${WORKDIR:-runs/quickstart}"
if [ "${FRESH:-0}" = "1" ]; then rm -rf "$out"; fi
python -m incseg_jax.main --config=configs/shapes.py:task=15-1,method=ft,setting=overlapped \
  --workdir="$out/ft_15-1" "$@"
python -m incseg_jax.main --config=configs/shapes.py:method=joint --workdir="$out/joint" "$@"
echo
echo "Final models (old = the 15 step-0 classes, new = the 5 added one by one; M0 = the step-0 model):"
python -m incseg_jax.compare "$out/ft_15-1" "$out/joint" --noper_class --markdown="$out/comparison.md" \
  --plots="$out/plots"
