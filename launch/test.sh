#!/usr/bin/env bash
# Installs incseg_jax with its test extras into .venv and runs the full suite.
# Extra arguments go to pytest (e.g. `bash launch/test.sh -k tasks`).
set -euo pipefail
INCSEG_EXTRAS=test source "$(dirname "$0")/_install.sh"
python -m pytest -n 2 --dist=loadfile -q tests "$@"
