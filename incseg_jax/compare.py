"""Prints one table comparing the final step of several runs.

  python -m incseg_jax.compare /tmp/run_ft /tmp/run_joint [--markdown=out.md]
"""

import json
import os

from absl import app
from absl import flags

from incseg_jax import reporting

_OUT = flags.DEFINE_string("markdown", "", "Also write the table to this file.")


def load(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise SystemExit(f"error: {path} not found (has the run finished?)")
  with open(path) as f:
    res = json.load(f)
  res["workdir"] = os.path.basename(os.path.normpath(workdir))
  return res


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more run workdirs")
  table = reporting.compare_table([load(w) for w in argv[1:]])
  print(table)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(table + "\n")


if __name__ == "__main__":
  app.run(main)
