# Sourced by the launch scripts: creates .venv if missing and installs the
# package (editable) with the extras in $INCSEG_EXTRAS, skipping pip when
# pyproject.toml has not changed since the last successful install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras="${INCSEG_EXTRAS:-}"
stamp=".venv/.incseg_installed${extras:+_$extras}"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# TensorFlow only feeds data here: keep its C++ logging quiet.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
