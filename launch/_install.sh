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
  echo "installing incseg_jax${extras:+[$extras]} into .venv (log: .venv/pip.log) ..."
  if ! { .venv/bin/python -m pip install --upgrade pip &&
         .venv/bin/python -m pip install -e ".${extras:+[$extras]}"; } > .venv/pip.log 2>&1; then
    tail -n 40 .venv/pip.log >&2
    echo "error: installing the package failed (full log: .venv/pip.log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# TensorFlow only feeds data here: keep its C++ logging quiet.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
