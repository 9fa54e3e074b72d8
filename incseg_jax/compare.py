"""One table comparing several runs of one scenario (the first paper's table shape).

  python -m incseg_jax.compare RUN_DIR [RUN_DIR ...] [--markdown=out.md] [--csv=out.csv]
      [--published=voc/15-5/overlapped]

Rows: one per run (its method, scored at its final step), then the reference
rows M0 (the first run's step-0 model) and joint (any `joint` run given).
Columns: per-class IoU, mIoU old (the step-0 classes) / new (classes added
later) / all, mPA, mCA, and per incremental run the average incremental mIoU,
the forgetting and the harmonic mean of old and new (docs/metrics.md) — all
in %.

`--published=<dataset>/<scenario>/<setting>[/...]` adds, for each row the
papers report, the paper's old / new / all, ours minus the paper's and the
table and row they come from (docs/published.md). The runs must be that
experiment; `shapes` runs take a `voc/...` key (shapes stands in for VOC, and
the table says that this is not a reproduction).
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
_PLOTS = flags.DEFINE_string("plots", "", "Also write the runs' plots (incseg_jax.plot: mIoU per step with seed "
                             "bands, class x step IoU maps) into this directory.")
_PUBLISHED = flags.DEFINE_string("published", "", "Put a paper's numbers beside ours: the experiment's key, "
                                 "e.g. voc/15-5/overlapped (docs/published.md).")


def load(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    print(f"error: {path} not found (has the run finished?)", file=sys.stderr)
    sys.exit(2)
  res = files.read_results(path)
  res["workdir"] = os.path.basename(os.path.normpath(workdir))
  res["config_path"] = os.path.join(workdir, "config.json")
  return res


def class_order_option(res: dict) -> str | None:
  """The run's `config.class_order` (`dataset`, `ilt_frequency`, ...), None without a config.json."""
  if not os.path.exists(res["config_path"]):
    return None
  config = files.read_json(res["config_path"], "the run's config", "rerun the experiment")
  return config.get("class_order")


def published_columns(runs: list[dict], key: str) -> tuple[str, reporting.ExtraColumns]:
  """The title lines and the extra columns of `--published=key`.

  Raises:
    ValueError: an unknown key, or runs that are not that experiment (`published.beside.prepare`).
  """
  from incseg_jax.published import beside as beside_lib  # pylint: disable=g-import-not-at-top
  incremental = [r for r in runs if r["task"] != "joint"]
  if not incremental:
    raise ValueError("compare: give at least one incremental (non-joint) run")
  ref = incremental[0]
  shape = beside_lib.RunShape(ref["dataset"], ref["task"], ref["setting"], ref.get("labeling"),
                              class_order_option(ref), len(ref["class_order"]))
  beside = beside_lib.prepare(key, shape)

  def cells(label, metrics):
    return beside.cells(beside_lib.row_method(label), beside_lib.ours(beside, ref, metrics))

  return beside.title(), (beside.head(), cells)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more run workdirs")
  title = ""
  try:
    runs = [load(w) for w in argv[1:]]
    extra = None
    if _PUBLISHED.value:
      title, extra = published_columns(runs, _PUBLISHED.value)
    head, rows = reporting.comparison(runs, per_class=_PER_CLASS.value, extra=extra)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  table = reporting.comparison_markdown(head, rows)
  if title:
    table = title + "\n\n" + table
  print(table)
  if _MD.value:
    with open(_MD.value, "w") as f:
      f.write(table + "\n")
  if _CSV.value:
    with open(_CSV.value, "w") as f:
      f.write(reporting.comparison_csv(head, rows))
  if _PLOTS.value:
    from incseg_jax import plot  # pylint: disable=g-import-not-at-top  (matplotlib only when plotting)
    try:
      written = plot.write_runs(plot.find_runs(argv[1:]), _PLOTS.value)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    print(f"{len(written)} plots in {_PLOTS.value}")


if __name__ == "__main__":
  app.run(main)
