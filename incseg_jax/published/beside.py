"""The papers' numbers beside ours: is a run the published experiment, and ours over the paper's columns.

`prepare(key, shape)` checks that a run (its `RunShape`) is the experiment
`key` names, and fails naming what differs: a comparison of another
scenario or setting would mean nothing. The built-in `shapes` dataset stands
in for VOC (same class count): a `voc/...` key is accepted for it, and every
table then says that the paper's numbers are VOC2012's, not a reproduction.

Ours is scored over the paper's columns: "old" and "new" over the classes of
the column's span in our learning order (class 0 = our channel 0, which the
first paper counts among the old classes, the second does not), "all" our
mIoU; the difference is ours minus the paper's, in mIoU points.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from incseg_jax import published
from incseg_jax import reporting
from incseg_jax import tasks
from incseg_jax.published.keys import Key

STAND_IN = {"shapes": "voc"}  # our dataset -> the paper's dataset it stands in for
DATASET_NAMES = {"voc": "Pascal VOC2012", "ade20k": "ADE20K", "cityscapes": "Cityscapes", "msrc": "MSRC-v2"}
# Ours for the paper's class orders where a stand-in has no such named order (shapes: pixel counts instead).
STAND_IN_ORDER = {"ilt_frequency": "frequency"}
ROLES = ("old", "new", "all")
# The compare row of the step-0 model.
STEP0_ROW = "M0 (step 0)"


@dataclasses.dataclass(frozen=True)
class RunShape:
  """What decides whether a run is a published experiment.

  Attributes:
    dataset, task, setting: the run's (results.json or config).
    labeling: the run's labeling (None or "" = the setting's default).
    order: the config's `class_order` (`dataset`, `ilt_frequency`, ...), or
      None when not known (no config.json): then not checked.
    num_fg: the dataset's foreground classes (to read the scenarios).
  """
  dataset: str
  task: str
  setting: str
  labeling: str | None
  order: str | None
  num_fg: int


@dataclasses.dataclass(frozen=True)
class Beside:
  """The published rows of one experiment, ready to go beside ours.

  Attributes:
    key: the experiment.
    rows: our method (or `M0`) -> its published row (`published.lookup`).
    stand_in: the runs are `shapes` standing in for the paper's dataset.
    columns: role -> the paper's column label (`1-15`, `0-15`, `all`).
    spans: role -> (first, last) class of the paper's old / new column.
  """
  key: Key
  rows: Mapping[str, Mapping[str, Any]]
  stand_in: bool
  columns: Mapping[str, str]
  spans: Mapping[str, tuple[int, int]]

  @property
  def sources(self) -> list[str]:
    return list(dict.fromkeys(r["table_name"] for r in self.rows.values()))

  @property
  def ours_old_column(self) -> bool:
    """Whether the paper's old column counts class 0 (first paper), so ours is shown over the same classes."""
    return self.spans.get("old", (1, 1))[0] == 0

  def head(self) -> list[str]:
    cols = [f"ours old ({self.columns['old']})"] if self.ours_old_column else []
    for role in ROLES:
      label = f"paper {role}" + (f" ({self.columns[role]})" if role in self.spans else "")
      cols += [label, f"Δ {role}"]
    return cols + ["paper row"]

  def title(self) -> str:
    """The lines printed above a table with these columns."""
    lines = [f"published: {', '.join(self.sources)} for {self.key}; paper values in % as printed, "
             "Δ = ours − paper (mIoU points)"]
    if self.ours_old_column:
      zero = "building, MSRC's class 0" if self.key.dataset == "msrc" else "background"
      lines.append(f"the paper's old column {self.columns['old']} counts class 0 ({zero}): ours over the same "
                   f"classes is 'ours old ({self.columns['old']})', not 'mIoU old'")
    if self.stand_in:
      name = DATASET_NAMES.get(self.key.dataset, self.key.dataset)
      lines.append(f"shapes stands in for {name}: the paper's numbers are {name}'s, with a ResNet-101 DeepLab; "
                   "Δ says how far this miniature is from them, it is not a reproduction")
    return "\n".join(lines)

  def cells(self, method: str, ours: Mapping[str, float | None]) -> list[str]:
    """The extra cells of a row: `ours` are fractions (role -> value over the paper's columns)."""
    paper = self.rows.get(method)
    out = [_pct(ours.get("old"))] if self.ours_old_column else []
    for role in ROLES:
      p = paper.get(role) if paper else None
      mine = ours.get(role)
      out += [_printed(p), "-" if p is None or mine is None else f"{100 * mine - p:+.1f}"]
    return out + [f"{paper['row']} ({paper['table']})" if paper else "-"]


def _pct(v: float | None) -> str:
  return "-" if v is None else f"{100 * v:.1f}"


def _printed(v: float | None) -> str:
  """A paper value with its printed precision (one or two decimals)."""
  if v is None:
    return "-"
  text = f"{v:.2f}"
  return text[:-1] if text.endswith("0") else text


def _steps(task: str, num_fg: int, what: str) -> tuple[int, ...]:
  try:
    return tasks.parse_scenario(task, num_fg)
  except ValueError as e:
    raise ValueError(f"{what}: {e}") from None


def prepare(key: str | Key, shape: RunShape, table: str | None = None) -> Beside:
  """The published rows of `key` (only `table`'s, if given), after checking that `shape` is that experiment.

  Raises:
    ValueError: an unknown key, or a run of another dataset (`shapes` may
      stand in for VOC only), scenario, setting, labeling or class order.
  """
  key = key if isinstance(key, Key) else Key.parse(key)
  rows = published.lookup(key, table)
  stand_in = STAND_IN.get(shape.dataset) == key.dataset
  what = f"--published={key}"
  if shape.dataset != key.dataset and not stand_in:
    hint = " (shapes stands in for VOC only: give a voc/... key)" if shape.dataset in STAND_IN else ""
    raise ValueError(f"{what}: the runs are on {shape.dataset}, the published numbers on {key.dataset}{hint}")
  if shape.task != "joint":
    mine = _steps(shape.task, shape.num_fg, f"{what}: the runs' scenario")
    theirs = _steps(key.scenario, shape.num_fg, f"{what}: the published scenario on {shape.dataset}")
    if mine != theirs:
      raise ValueError(f"{what}: the runs are scenario {shape.task} (steps {list(mine)}), the published numbers "
                       f"{key.scenario} (steps {list(theirs)})")
  if shape.setting != key.setting:
    raise ValueError(f"{what}: the runs are setting {shape.setting}, the published numbers {key.setting}")
  if (shape.labeling or key.full_labeling) != key.full_labeling:
    raise ValueError(f"{what}: the runs have labeling={shape.labeling}, the published numbers "
                     f"labeling={key.full_labeling}")
  want = key.full_order
  if stand_in:
    want = STAND_IN_ORDER.get(want, want)
  if shape.order is not None and shape.order != want:
    raise ValueError(f"{what}: the runs' class order is {shape.order!r}, the published numbers' {want!r} "
                     f"(config argument order={want})")
  columns, spans = {}, {}
  for row in rows.values():
    for role in ROLES:
      columns.setdefault(role, row["columns"].get(role))
      if role in row["spans"]:
        spans.setdefault(role, tuple(row["spans"][role]))
  return Beside(key, rows, stand_in, {r: c for r, c in columns.items() if c}, spans)


def span_classes(res: Mapping[str, Any], span: tuple[int, int]) -> list[str]:
  """Our class names of a paper column's span: class 0 is our channel 0, class i > 0 the i-th learned."""
  first, last = span
  return ([res["channel_names"][0]] if first == 0 else []) + list(res["class_order"][max(first, 1) - 1:last])


def ours(beside: Beside, res: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, float | None]:
  """Our scores (fractions) over the paper's columns: `metrics` of one step of the run `res` (results.json)."""
  out = {role: reporting.mean_over(metrics, span_classes(res, span)) for role, span in beside.spans.items()}
  out["all"] = metrics["miou"]
  return out


def row_method(label: str) -> str:
  """The published method of a compare row (its label: the method, or the step-0 model's row)."""
  return published.STEP0 if label == STEP0_ROW else label


def sweep_rows(beside: Beside, runs: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
  """The published block of a sweep summary: ours (mean over seeds) and the paper's per method.

  Every run is scored over the classes of the paper's columns in the first
  incremental run's learning order (a joint run's own order may differ), as
  `reporting.sweep_summary` scores joint on the incremental runs' groups.

  Args:
    beside: from `prepare`.
    runs: method -> seed -> results.json of its finished runs.

  Returns:
    {"key", "title", "head", "ours_old_column", "rows": {method: {"ours":
    {role: mean}, "paper": {role: value} or None, "source", "cells": the
    extra table cells}}}.
  """
  finished = [res for per_seed in runs.values() for res in per_seed.values()]
  ref = next((res for res in finished if res["task"] != "joint"), None)
  out_rows = {}
  for method, per_seed in runs.items():
    scores = [ours(beside, ref or res, res["steps"][-1]["metrics"]) for res in per_seed.values()]
    mean = {role: reporting.mean_std([s.get(role) for s in scores])[0] for role in ROLES}
    paper = beside.rows.get(method)
    out_rows[method] = {"ours": mean, "paper": {r: paper.get(r) for r in ROLES} if paper else None,
                        "source": paper["source"] if paper else None, "cells": beside.cells(method, mean)}
  return {"key": str(beside.key), "title": beside.title(), "head": beside.head(),
          "ours_old_column": beside.ours_old_column, "rows": out_rows}
