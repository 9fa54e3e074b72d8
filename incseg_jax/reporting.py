"""Result files: per-step records, results.json / .md / .csv, console tables.

A *record* is everything about one finished task step (classes, image count,
metrics); `results.json` is the list of records plus the experiment's identity
(dataset, scenario, setting, order, method, channel names), written atomically
so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Sequence

from incseg_jax import checkpointing


def _pct(v) -> str:
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _classes(names: Sequence[str]) -> str:
  """Short list for tables: all names up to 3, else 'N classes (first..last)'."""
  if len(names) <= 3:
    return ", ".join(names)
  return f"{len(names)} classes ({names[0]}..{names[-1]})"


def step_record(exp, task_index: int, metrics: dict[str, Any], train_seconds: float) -> dict[str, Any]:
  """The record of one finished task step."""
  step = exp.plan.steps[task_index]
  names = exp.meta.class_names
  return {
      "task_step": task_index,
      "new_classes": [names[c] for c in step.new_classes],
      "old_classes": [names[c] for c in step.old_classes],
      "new_channels": list(step.new_channels),
      "old_channels": list(step.old_channels),
      "num_train_images": int(len(exp.step_indices[task_index])),
      "num_train_steps": int(exp.num_train_steps(task_index)),
      "seconds": round(float(train_seconds), 2),
      "metrics": metrics,
  }


def results(exp, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The whole experiment's results (what results.json holds)."""
  cfg = exp.config
  return {
      "dataset": cfg.dataset.name,
      "task": cfg.task,
      "setting": cfg.setting,
      "labeling": exp.plan.labeling,
      "method": cfg.method,
      "class_order": [exp.meta.class_names[c] for c in exp.plan.order],
      "channel_names": exp.channel_names,
      "steps": list(records),
  }


def step_line(record: dict[str, Any]) -> str:
  """One console line after a task step."""
  m = record["metrics"]
  return (f"task step {record['task_step']} (+{_classes(record['new_classes'])}; "
          f"{record['num_train_images']} images): mIoU old {_pct(m['miou_old'])}  new {_pct(m['miou_new'])}  "
          f"all {_pct(m['miou'])}  (old+bg {_pct(m['miou_old_bg'])}, PA {_pct(m['pixel_acc'])}, "
          f"mCA {_pct(m['mean_class_acc'])})")


_SUMMARY_COLS = (("mIoU old", "miou_old"), ("mIoU old+bg", "miou_old_bg"), ("mIoU new", "miou_new"),
                 ("mIoU all", "miou"), ("mPA", "pixel_acc"), ("mCA", "mean_class_acc"))


def final_table(res: dict[str, Any]) -> str:
  """Markdown: one row per task step with old / new / all mIoU, PA and mCA.

  "old" is measured on the classes learned before that step (excluding
  background, as MiB/UCD report; "old+bg" includes it, as PLOP reports);
  "new" on the classes of that step.
  """
  head = ["step", "new classes", "train images"] + [c for c, _ in _SUMMARY_COLS]
  lines = [f"{res['method']} on {res['dataset']} {res['task']} {res['setting']}"
           + (f" ({res['labeling']})" if res.get("labeling") else ""),
           "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in res["steps"]:
    m = r["metrics"]
    row = [str(r["task_step"]), _classes(r["new_classes"]), str(r["num_train_images"])]
    row += [_pct(m[k]) for _, k in _SUMMARY_COLS]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def per_class_table(res: dict[str, Any]) -> str:
  """Markdown: per-class IoU (rows = classes in learning order, cols = steps)."""
  names = res["channel_names"]
  steps = res["steps"]
  lines = ["| class | " + " | ".join(f"step {r['task_step']}" for r in steps) + " |",
           "|---|" + "---|" * len(steps)]
  for c, name in enumerate(names):
    row = []
    for r in steps:
      iou = r["metrics"]["iou"]
      row.append(_pct(iou[c]) if c < len(iou) else "")
    lines.append(f"| {name} | " + " | ".join(row) + " |")
  return "\n".join(lines)


def to_csv(res: dict[str, Any]) -> str:
  """CSV: one row per task step; per-class IoU columns, then the summaries."""
  names = res["channel_names"]
  out = io.StringIO()
  w = csv.writer(out)
  w.writerow(["task_step", "num_train_images"] + [f"iou_{n}" for n in names] + [k for _, k in _SUMMARY_COLS])
  for r in res["steps"]:
    m = r["metrics"]
    ious = list(m["iou"]) + [None] * (len(names) - len(m["iou"]))
    w.writerow([r["task_step"], r["num_train_images"]] + ["" if v is None else f"{v:.6f}" for v in ious]
               + ["" if m[k] is None else f"{m[k]:.6f}" for _, k in _SUMMARY_COLS])
  return out.getvalue()


def _write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_all(workdir: str, res: dict[str, Any]) -> None:
  """Writes results.json, results.md and results.csv (each atomically)."""
  checkpointing.write_json_atomic(os.path.join(workdir, "results.json"), res)
  _write_text(os.path.join(workdir, "results.md"),
              final_table(res) + "\n\nPer-class IoU (%):\n\n" + per_class_table(res) + "\n")
  _write_text(os.path.join(workdir, "results.csv"), to_csv(res))


def _mean_over(metrics: dict[str, Any], names: Sequence[str]) -> float | None:
  """Mean IoU over the named classes present in the ground truth."""
  by_name = dict(zip(metrics["class_names"], metrics["iou"]))
  present = dict(zip(metrics["class_names"], metrics.get("present", [True] * len(metrics["iou"]))))
  vals = [by_name[n] for n in names if n in by_name and by_name[n] is not None and present[n]]
  return sum(vals) / len(vals) if vals else None


def compare_table(runs: Sequence[dict[str, Any]]) -> str:
  """Markdown: one row per run, scored at its final step, as the papers' tables.

  Columns "base" and "added" average the per-class IoU over the classes of the
  first incremental run's step 0 and over every class it added afterwards
  (e.g. 1-15 and 16-20 for 15-1), so a `joint` run is scored on the same split.
  """
  incremental = [r for r in runs if len(r["steps"]) > 1] or list(runs)
  ref = incremental[0]["steps"]
  base = ref[0]["new_classes"]
  added = [c for r in ref[1:] for c in r["new_classes"]]
  head = ["run", "method", "task", "setting", f"mIoU base ({len(base)})", f"mIoU added ({len(added)})",
          "mIoU all", "mPA", "mCA"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for res in runs:
    m = res["steps"][-1]["metrics"]
    row = [res.get("workdir", ""), res["method"], res["task"], res["setting"],
           _pct(_mean_over(m, base)), _pct(_mean_over(m, added)), _pct(m["miou"]), _pct(m["pixel_acc"]),
           _pct(m["mean_class_acc"])]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)
