"""Every module imports beside every other in one process, as pytest workers import them.

Commands that other code imports (plot, sweep, pretrain, the tools and most
benchmarks) define their absl flags only when run as programs; a flag
defined at import by two modules fails the whole test worker that imports
both (DuplicateFlagError), far from the module at fault.
"""

import os
import subprocess
import sys
import textwrap

# Commands that define their flags at import; no library code imports them. `main` is imported last,
# beside all the others, because the tests import it (through incseg_jax.testing.faults).
EAGER_COMMANDS = ("incseg_jax.main", "incseg_jax.evaluate", "incseg_jax.compare", "incseg_jax.published.transcribe",
                  "incseg_jax.benchmarks.input_pipeline", "incseg_jax.benchmarks.ucd_memory")

SCRIPT = textwrap.dedent(f"""
    import importlib, pkgutil, incseg_jax
    eager = {EAGER_COMMANDS!r}
    names = sorted(m.name for m in pkgutil.walk_packages(incseg_jax.__path__, "incseg_jax."))
    for name in names:
        if name not in eager:
            importlib.import_module(name)
    importlib.import_module("incseg_jax.main")
    print(len(names))
""")


def test_every_module_imports_beside_every_other():
  out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert int(out.stdout.strip().splitlines()[-1]) > 50
