"""Every module imports beside every other in one process, as pytest workers import them.

Commands that other code imports (plot, sweep, pretrain, the tools and most
benchmarks) define their absl flags only when run as programs; a flag
defined at import by two modules fails the whole test worker that imports
both (DuplicateFlagError), far from the module at fault. This imports every
module the tests may import in one process.
"""

import os
import subprocess
import sys
import textwrap

import pytest

# The one module left out: `incseg_jax.main` shares `--workdir` and `--config` with other commands and is only
# ever run as a program (the tests start it in subprocesses, through incseg_jax.testing.faults).
LEFT_OUT = ("incseg_jax.main",)

SCRIPT = textwrap.dedent(f"""
    import importlib, pkgutil, incseg_jax
    names = sorted(m.name for m in pkgutil.walk_packages(incseg_jax.__path__, "incseg_jax."))
    for name in names:
        if name not in {LEFT_OUT!r}:
            importlib.import_module(name)
    print(len(names))
""")


def test_every_module_imports_beside_every_other():
  out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert int(out.stdout.strip().splitlines()[-1]) > 50


# One process each: the two commands both define --workdir.
@pytest.mark.parametrize("modules", ["incseg_jax.main, incseg_jax.validate, incseg_jax.distributed, incseg_jax.workdir",
                                     "incseg_jax.evaluate", "incseg_jax.plot"])
def test_config_checks_load_no_tensorflow(modules):
  # main.py checks the workdir path and the config before it imports train (evaluate.py the workdir before it
  # imports evaluation; plot its flags and runs before the prediction grids): a bad one is named in ~3 s, not
  # after TensorFlow's ~5-10 s import. A module these import that pulls TensorFlow in at import time undoes that.
  script = (f"import sys, {modules}; "
            "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"
