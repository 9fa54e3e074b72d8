#!/usr/bin/env bash
# The GPU settings of the train-step benchmark (docs/benchmarks.md, "On a GPU"), in one command for a GPU
# machine that has JAX (CUDA build) and PyTorch but neither network nor this project's other
# dependencies: DeepLab-v3 ResNet-101, output stride 16, 512 x 512, batch 24, bfloat16, VOC 15-1 task
# step 1, each against the same step in PyTorch (channels-last, autocast), in the same interpreter:
#   mib      student + teacher (the teacher's forward and MiB's distillation)
#   ft       the student alone (fine-tuning: no term reads the teacher, XLA drops its forward)
#   profile  mib again without torch, with --profile: its compiled ops' time by phase and kind, and the
#            slowest ops (the program comes from the compilation cache mib filled)
#
#   bash launch/gpu_wheels.sh                      # first, where PyPI is reachable: fills .whl/
#   bash launch/gpu_benchmark.sh OUT_DIR [SETTING...]   # there, with .whl/ beside this script's repo
#
# Writes OUT_DIR/env.txt (GPU, driver, versions) and OUT_DIR/SETTING.{log,json}. Each setting gets at
# most $SETTING_TIMEOUT seconds (default 240): a slow compile costs one setting, not the others.
# SIZE=small runs the same script at a size any CPU finishes in seconds (ResNet-small, 64 x 64, batch 2),
# to rehearse it before spending accelerator time.
set -uo pipefail
out="${1:?usage: $0 OUT_DIR [SETTING...] (settings: mib ft profile; default all three, in that order)}"
shift
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(mib ft profile)
for s in "${settings[@]}"; do  # before any work: a typo should not cost a machine's start
  case "$s" in mib|ft|profile) ;; *) echo "error: unknown setting $s (expected mib, ft or profile)" >&2; exit 2 ;; esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
if ls .whl/*.whl > /dev/null 2>&1; then
  site="$(mktemp -d)"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl \
    || { echo "error: installing .whl/*.whl failed" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
{
  date -u; uname -a; nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$py" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections", "clu", "tensorflow_datasets",
             "numpy", "torch"):
  try:
    print(name, getattr(importlib.import_module(name), "__version__", "?"))
  except Exception as e:  # pylint: disable=broad-except
    print(name, "not importable:", e)
import jax
print("devices", jax.devices())
EOF
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
if [ "${SIZE:-full}" = small ]; then
  size=(--config.model.backbone=resnet_small --config.input.crop_size=64 --config.input.batch_size=2 --steps=3
        --warmup=1)
else
  size=(--config.model.backbone=resnet101 --config.model.output_stride=16 --config.input.crop_size=512
        --config.input.batch_size=24 --steps=20 --warmup=3)
fi
status=0
for s in "${settings[@]}"; do
  case "$s" in
    mib|ft) method=$s; extra=(--compare=torch) ;;
    # The trace itself stays out of OUT_DIR: it is large and its folders are deep.
    profile) method=mib; extra=(--steps=3 --warmup=1 --profile="$(mktemp -d)") ;;
  esac
  echo "=== $s: $(date -u +%H:%M:%S)"
  timeout "${SETTING_TIMEOUT:-240}" "$py" -m incseg_jax.benchmarks.train_step \
    --config="configs/voc.py:task=15-1,method=$method" --config.model.dtype=bfloat16 "${size[@]}" \
    --pipeline_batches=0 "${extra[@]}" --json="$out/$s.json" 2>&1 | tee "$out/$s.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $s exited $rc" | tee -a "$out/$s.log"; status=1; }
done
exit $status
