"""One table comparing several runs of one scenario (the first paper's table shape).

  python -m incseg_jax.compare RUN_DIR [RUN_DIR ...] [--markdown=out.md] [--csv=out.csv]

Rows: one per run (its method, scored at its final step), then the reference
rows M0 (the first run's step-0 model) and joint (any `joint` run given).
Columns: per-class IoU, mIoU old (the step-0 classes) / new (classes added
later) / all, mPA, mCA, and per incremental run the average incremental mIoU,
the forgetting and the harmonic mean of old and new (docs/metrics.md) — all
in %.
"""

import os
import sys

from absl import app
from absl import flags

from incseg_jax import files
from incseg_jax import reporting

_MD = flags.DEFINE_string("markdown", "", "Also write the Markdown table to this file.")
_CSV = flags.DEFINE_string("csv", "", "Also write the table as CSV to this file.")
_PER_CLASS = flags.DEFINE_bool("per_class", True, "Include one IoU column per class.")


def load(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    print(f"error: {path} not found (has the run finished?)", file=sys.stderr)
    sys.exit(2)
  res = files.read_results(path)
  res["workdir"] = os.path.basename(os.path.normpath(workdir))
  return res


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more run workdirs")
  try:
    head, rows = reporting.comparison([load(w) for w in argv[1:]], per_class=_PER_CLASS.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  table = reporting.comparison_markdown(head, rows)
  print(table)
  if _MD.value:
    with open(_MD.value, "w") as f:
      f.write(table + "\n")
  if _CSV.value:
    with open(_CSV.value, "w") as f:
      f.write(reporting.comparison_csv(head, rows))


if __name__ == "__main__":
  app.run(main)
