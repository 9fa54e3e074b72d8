#!/usr/bin/env bash
# Downloads, on a machine that reaches PyPI, the wheels that launch/gpu_benchmark.sh installs on a GPU
# machine that cannot: an image with JAX (CUDA) and PyTorch but without the rest of this project's
# dependencies (ml-collections, clu, tensorflow-datasets and what they import), for CPython 3.12 on
# x86-64 Linux. TensorFlow is not among them: the train-step benchmark needs none (docs/benchmarks.md,
# "On a GPU"). flax, optax and orbax-checkpoint come at the versions the tests pass with, whatever the
# image holds; jax and jaxlib are the image's own (its CUDA build).
#
#   bash launch/gpu_wheels.sh [DIR]        # DIR defaults to .whl (git-ignored); 17 wheels, 12 MiB
#
# Other Python versions: PYVER=3.11 bash launch/gpu_wheels.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
pyver="${PYVER:-3.12}"
mkdir -p "$dir"
# Exact versions: those of pyproject.toml's ranges the suite last passed with, and the pure-Python
# packages tensorflow-datasets imports when a dataset module is imported (its builders are not used).
pure=(flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 ml-collections==1.1.0 clu==0.0.12
      tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
      immutabledict==4.3.1 promise==2.3 simple-parsing==0.1.9 docstring-parser==0.18.0 termcolor==3.3.0
      toml==0.10.2 importlib-resources==7.1.0)
binary=(dm-tree==0.1.10 array-record==0.8.6)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# `pip wheel` builds the pure-Python ones that PyPI has only as source (promise); any Python makes them.
python3 -m pip wheel -q --no-deps -w "$dir" "${pure[@]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${platforms[@]}" -d "$dir" "${binary[@]}"
echo "wheels in $dir: $(ls "$dir"/*.whl | wc -l) files, $(du -sh "$dir" | cut -f1)"
