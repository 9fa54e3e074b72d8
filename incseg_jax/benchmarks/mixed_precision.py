"""Every method in low precision: a `runlocal` run per method, finite or not, beside float32.

For each registered method (or `--methods`), this trains the `shapes` config
in `--dtype` (bfloat16 by default) and, with `--compare`, in float32 too. It
prints a table of the batches skipped as non-finite, the final mIoU in both
precisions, and the seconds each run took. A method whose low-precision run
has a non-finite step, or stops on one, is flagged, and the exit status is 1.

Usage:
  python -m incseg_jax.benchmarks.mixed_precision [--methods=ft,mib,...] [--task=15-5] \
      [--dtype=bfloat16] [--compare] [--workdir=/tmp/mp] [--full]

`--full` uses the real `shapes` protocol instead of `runlocal`; with
`--methods=ft --task=15-1` this is the README quickstart in both precisions.
Runs go to `--workdir/<dtype>/<method>` and resume like any run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

from absl import app
from absl import flags

from incseg_jax import methods
from incseg_jax import runtime



def _define_flags() -> None:
  """The command's flags, defined only when run as a program (importing the module defines none)."""
  flags.DEFINE_list("methods", None, "Methods to run (default: every registered method but joint).")
  flags.DEFINE_string("task", "15-5", "Scenario of the shapes runs.")
  flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float16"], "Low-precision computation dtype.")
  flags.DEFINE_bool("compare", False, "Also run each method in float32.")
  flags.DEFINE_bool("full", False, "The real shapes protocol instead of runlocal.")
  flags.DEFINE_string("workdir", "/tmp/incseg_mixed_precision", "Where the runs go.")
  flags.DEFINE_string("replay_dir", "", "Replay folder for methods that need one (recall); empty: such methods "
                      "are left out.")

_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _get_config(arg: str):
  spec = importlib.util.spec_from_file_location("shapes_config", os.path.join(_ROOT, "configs", "shapes.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def run_one(method: str, dtype: str, task: str, full: bool, workdir: str, replay_dir: str = "") -> dict:
  """Trains one method in `dtype`; returns its final mIoU, skipped batches, seconds, or the error."""
  from incseg_jax import train  # pylint: disable=g-import-not-at-top
  config = _get_config(f"task={task},method={method}" + ("" if full else ",runlocal"))
  config.model.dtype = dtype
  config.nonfinite = "skip"  # count non-finite batches instead of stopping at the first
  if methods.get(method).replay:
    config.replay.dir = replay_dir
  t0 = time.time()
  try:
    res = train.run(config, os.path.join(workdir, dtype, method.replace("+", "_")))
  except (ValueError, FloatingPointError) as e:
    return {"error": str(e).splitlines()[0], "seconds": time.time() - t0}
  last = res["steps"][-1]["metrics"]
  return {"miou": last["miou"], "skipped": sum(int(s.get("skipped_batches", 0)) for s in res["steps"]),
          "seconds": time.time() - t0}


def main(argv):
  runtime.setup_command(argv)
  f = flags.FLAGS
  names = f.methods or [m for m in methods.names() if not methods.get(m).joint]
  names = [m for m in names if f.replay_dir or not methods.get(m).replay]
  rows, bad = [], []
  for m in names:
    low = run_one(m, f.dtype, f.task, f.full, f.workdir, f.replay_dir)
    ref = run_one(m, "float32", f.task, f.full, f.workdir, f.replay_dir) if f.compare else None
    if "error" in low or low["skipped"]:
      bad.append(m)
    rows.append((m, low, ref))
    print(f"{m}: {low}" + (f" | float32 {ref}" if ref else ""), flush=True)
  fmt = lambda r: "-" if r is None else (f"error: {r['error'][:60]}" if "error" in r else f"{100 * r['miou']:.1f}")
  print(f"\n| method | {f.dtype}: non-finite batches | mIoU {f.dtype} | mIoU float32 | seconds |")
  print("|---|---|---|---|---|")
  for m, low, ref in rows:
    secs = f"{low['seconds']:.0f}" + (f" / {ref['seconds']:.0f}" if ref else "")
    print(f"| {m} | {low.get('skipped', '-')} | {fmt(low)} | {fmt(ref)} | {secs} |")
  print(f"\n{len(rows) - len(bad)} of {len(rows)} methods finished in {f.dtype} without a non-finite step"
        + (f"; not: {', '.join(bad)}" if bad else ""))
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=runtime.parse_flags)
