#!/usr/bin/env bash
# Installs incseg_jax with its test extras into .venv and runs the full suite.
# Extra arguments go to pytest (e.g. `bash launch/test.sh -k tasks`).
set -euo pipefail
INCSEG_EXTRAS=test source "$(dirname "$0")/_install.sh"
# Whole files per worker, in collection order (tests/conftest.py puts the longest files first).
python -m pytest -n 2 --dist=loadfile --no-loadscope-reorder -q tests "$@"
