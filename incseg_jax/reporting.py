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
from typing import Any, Callable, Sequence

from incseg_jax import continual
from incseg_jax import files


def _pct(v) -> str:
  return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _classes(names: Sequence[str]) -> str:
  """Short list for tables: all names up to 3, else 'N classes (first..last)'."""
  if len(names) <= 3:
    return ", ".join(names)
  return f"{len(names)} classes ({names[0]}..{names[-1]})"


def step_record(exp, spec, metrics: dict[str, Any], train_seconds: float,
                skipped_batches: int = 0) -> dict[str, Any]:
  """The record of one finished task step (`spec`: its `experiment.StepSpec`).

  `seconds` is the only timing field (it differs between identical runs);
  `skipped_batches` counts batches left out as non-finite (config.nonfinite=skip).
  """
  step = spec.task
  names = exp.meta.class_names
  return {
      "task_step": spec.index,
      "new_classes": [names[c] for c in step.new_classes],
      "old_classes": [names[c] for c in step.old_classes],
      "new_channels": list(step.new_channels),
      "old_channels": list(step.old_channels),
      "num_train_images": int(len(spec.indices)),
      "num_train_steps": int(spec.num_train_steps),
      "seconds": round(float(train_seconds), 2),
      "skipped_batches": int(skipped_batches),
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
      "summary": continual.summary(records),
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
  if len(res["steps"]) > 1:
    s = continual.summary(res["steps"])
    lines += ["", f"average incremental mIoU {_pct(s['avg_miou'])}, forgetting {_pct(s['forgetting'])}, "
              f"backward transfer {_pct(s['bwt'])}, harmonic mean of old and new {_pct(s['harmonic_mean'])} "
              "(docs/metrics.md)"]
  return "\n".join(lines)


def per_class_table(res: dict[str, Any], key: str = "iou") -> str:
  """Markdown: a per-class metric (`iou` or `acc`) by step; rows = classes in learning order."""
  names = res["channel_names"]
  steps = res["steps"]
  lines = ["| class | " + " | ".join(f"step {r['task_step']}" for r in steps) + " |",
           "|---|" + "---|" * len(steps)]
  for c, name in enumerate(names):
    row = []
    for r in steps:
      values = r["metrics"][key]
      row.append(_pct(values[c]) if c < len(values) else "")
    lines.append(f"| {name} | " + " | ".join(row) + " |")
  return "\n".join(lines)


def to_csv(res: dict[str, Any]) -> str:
  """CSV: one row per task step; per-class IoU and pixel accuracy, then the summaries."""
  names = res["channel_names"]
  out = io.StringIO()
  w = csv.writer(out)
  w.writerow(["task_step", "num_train_images"] + [f"iou_{n}" for n in names] + [f"acc_{n}" for n in names]
             + [k for _, k in _SUMMARY_COLS])
  fmt = lambda v: "" if v is None else f"{v:.6f}"
  for r in res["steps"]:
    m = r["metrics"]
    pad = [None] * (len(names) - len(m["iou"]))
    w.writerow([r["task_step"], r["num_train_images"]] + [fmt(v) for v in list(m["iou"]) + pad]
               + [fmt(v) for v in list(m["acc"]) + pad] + [fmt(m[k]) for _, k in _SUMMARY_COLS])
  return out.getvalue()


def write_all(workdir: str, res: dict[str, Any]) -> None:
  """Writes results.json, results.md and results.csv (each atomically)."""
  files.write_json_atomic(os.path.join(workdir, "results.json"), res)
  files.write_text_atomic(os.path.join(workdir, "results.md"),
              final_table(res) + "\n\nPer-class IoU (%):\n\n" + per_class_table(res, "iou")
              + "\n\nPer-class pixel accuracy (%):\n\n" + per_class_table(res, "acc") + "\n")
  files.write_text_atomic(os.path.join(workdir, "results.csv"), to_csv(res))


def mean_over(metrics: dict[str, Any], names: Sequence[str]) -> float | None:
  """Mean IoU over the named classes present in the ground truth."""
  by_name = dict(zip(metrics["class_names"], metrics["iou"]))
  present = dict(zip(metrics["class_names"], metrics.get("present", [True] * len(metrics["iou"]))))
  vals = [by_name[n] for n in names if n in by_name and by_name[n] is not None and present[n]]
  return sum(vals) / len(vals) if vals else None


# Extra columns of a comparison: their head, and (row label, the row's metrics) -> their cells.
ExtraColumns = tuple[Sequence[str], Callable[[str, dict[str, Any]], Sequence[str]]]


def comparison(runs: Sequence[dict[str, Any]], per_class: bool = True,
               extra: ExtraColumns | None = None) -> tuple[list[str], list[list[str]]]:
  """The first paper's table shape: one row per run, scored at its final step.

  Rows: each run (labelled by its method), then the reference rows "M0" (the
  first incremental run's step-0 model) and any `joint` run. Columns:
  per-class IoU (optional), mIoU over the base classes (step 0 of the first
  incremental run: the paper's "old"), over the classes added afterwards
  ("new"), over all classes present (background included), mPA, mCA, and
  for the incremental runs the average incremental mIoU, the forgetting and
  the harmonic mean of old and new (`incseg_jax/continual.py`). `extra`
  appends columns (e.g. a paper's numbers, `incseg_jax/published/beside.py`).

  Raises:
    ValueError: the incremental runs are not the same experiment shape
      (dataset, scenario, setting, labeling, class order).
  """
  incremental = [r for r in runs if r["task"] != "joint"]
  if not incremental:
    raise ValueError("compare: give at least one incremental (non-joint) run")
  ref = incremental[0]
  base, added = class_groups(incremental, "compare")
  classes = ref["channel_names"] if per_class else []
  head = (["method"] + list(classes) + [f"mIoU old ({len(base)})", f"mIoU new ({len(added)})", "mIoU", "mPA", "mCA"]
          + ["avg mIoU", "forgetting", "HM"] + (list(extra[0]) if extra else []))

  def row(label, m, steps=None):
    ious = dict(zip(m["class_names"], m["iou"]))
    old, new = mean_over(m, base), mean_over(m, added)
    s = continual.summary(steps) if steps and all("new_channels" in st for st in steps) else {}
    return ([label] + [_pct(ious.get(c)) for c in classes]
            + [_pct(old), _pct(new), _pct(m["miou"]), _pct(m["pixel_acc"]), _pct(m["mean_class_acc"])]
            + [_pct(s.get("avg_miou")), _pct(s.get("forgetting")),
               _pct(continual.harmonic_mean(old, new)) if steps else "-"]
            + (list(extra[1](label, m)) if extra else []))

  rows = [row(r["method"], r["steps"][-1]["metrics"], r["steps"]) for r in incremental]
  rows.append(row("M0 (step 0)", ref["steps"][0]["metrics"]))
  rows += [row("joint", r["steps"][-1]["metrics"]) for r in runs if r["task"] == "joint"]
  return head, rows


def class_groups(incremental: Sequence[dict[str, Any]], what: str) -> tuple[list[str], list[str]]:
  """The "old" (step-0) and "new" (added later) class names of incremental runs of one scenario.

  Raises:
    ValueError: the runs are not one scenario (dataset, task, setting,
      labeling, class order); `what` names the command in the message.
  """
  ref = incremental[0]
  shape = lambda r: (r["dataset"], r["task"], r["setting"], r.get("labeling"), tuple(r["class_order"]))
  for r in incremental[1:]:
    if shape(r) != shape(ref):
      raise ValueError(f"{what}: run {r.get('workdir', '')} is {shape(r)[:4]}, but {ref.get('workdir', '')} is "
                       f"{shape(ref)[:4]} (or a different class order): not one scenario")
  return list(ref["steps"][0]["new_classes"]), [c for st in ref["steps"][1:] for c in st["new_classes"]]


def comparison_markdown(head: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def comparison_csv(head: list[str], rows: list[list[str]]) -> str:
  out = io.StringIO()
  w = csv.writer(out)
  w.writerow(head)
  w.writerows([[("" if v == "-" else v) for v in r] for r in rows])
  return out.getvalue()


# Sweeps: one row per method, mean and spread over seeds of the final-step scores.

SWEEP_SCORES = (("mIoU old", "miou_old"), ("mIoU new", "miou_new"), ("mIoU all", "miou"), ("HM", "harmonic_mean"),
                ("avg mIoU", "avg_miou"), ("forgetting", "forgetting"))


def final_scores(res: dict[str, Any], base: Sequence[str] | None,
                 added: Sequence[str] | None) -> dict[str, float | None]:
  """mIoU over the `base` classes, the `added` ones and all classes at a run's final step, and the run's summaries.

  As `comparison` scores a row: `base` are the step-0 classes of the
  scenario (the "old" column), `added` the classes of the later steps; None
  for a group not given or with no class present in the ground truth. Also
  the harmonic mean of those two, and (incremental runs) the average
  incremental mIoU and the forgetting (`incseg_jax/continual.py`).
  """
  m = res["steps"][-1]["metrics"]
  old = mean_over(m, base) if base is not None else None
  new = mean_over(m, added) if added is not None else None
  steps = res["steps"]
  run = continual.summary(steps) if len(steps) > 1 and all("new_channels" in st for st in steps) else {}
  return {"miou_old": old, "miou_new": new, "miou": m["miou"], "harmonic_mean": continual.harmonic_mean(old, new),
          "avg_miou": run.get("avg_miou"), "forgetting": run.get("forgetting")}


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
  """(mean, sample standard deviation with ddof=1) of the values that are not None or NaN.

  The standard deviation is None for fewer than two values (and the mean for none).
  """
  vals = [float(v) for v in values if v is not None and not math.isnan(v)]
  if not vals:
    return None, None
  mean = sum(vals) / len(vals)
  if len(vals) < 2:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def sweep_summary(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
  """One row per method over seeds: final-step mIoU old / new / all, mean and sample std.

  Args:
    runs: method -> seed -> that run's results (results.json) for the finished
      runs; a method with no finished run still gets a row (n = 0). Rows keep
      this order.

  Returns:
    {"dataset", "task", "setting", "labeling": of the first incremental run,
     "base_classes", "added_classes": the classes of "old" and "new" (step 0 of
     the first incremental run, and those added later: `comparison`'s
     columns; None without an incremental run), "methods": [{"method", "n"
     (seeds finished), "seeds", "per_seed": [{"seed", "miou_old", "miou_new",
     "miou"}], "mean": {score: value}, "std": {score: value or None}}]}.
    Scores are fractions (not %); a joint run is scored on the incremental
    runs' class groups, as in `comparison`.

  Raises:
    ValueError: the incremental runs are not one scenario (dataset, task,
      setting, labeling, class order).
  """
  all_runs = [res for per_seed in runs.values() for res in per_seed.values()]
  incremental = [res for res in all_runs if res["task"] != "joint"]
  ref = incremental[0] if incremental else (all_runs[0] if all_runs else {})
  base = added = None
  if incremental:
    base, added = class_groups(incremental, "sweep")
  rows = []
  for method, per_seed in runs.items():
    seeds = sorted(per_seed)
    per = [{"seed": s, **final_scores(per_seed[s], base, added)} for s in seeds]
    stats = {key: mean_std([p[key] for p in per]) for _, key in SWEEP_SCORES}
    rows.append({"method": method, "n": len(seeds), "seeds": seeds, "per_seed": per,
                 "mean": {k: v[0] for k, v in stats.items()}, "std": {k: v[1] for k, v in stats.items()}})
  return {"dataset": ref.get("dataset"), "task": ref.get("task"), "setting": ref.get("setting"),
          "labeling": ref.get("labeling"), "base_classes": base, "added_classes": added, "methods": rows}


def _sweep_head(summary: dict[str, Any]) -> list[str]:
  count = lambda classes: f" ({len(classes)})" if classes is not None else ""
  return ["method", "n", f"mIoU old{count(summary['base_classes'])}", f"mIoU new{count(summary['added_classes'])}",
          "mIoU all"] + [label for label, _ in SWEEP_SCORES[3:]]


def sweep_markdown(summary: dict[str, Any]) -> str:
  """Markdown of `sweep_summary`: a title line and one row per method, "mean ± std" in % ("-": none)."""
  title = " ".join(str(summary[k]) for k in ("dataset", "task", "setting") if summary.get(k))
  title += f" ({summary['labeling']})" if summary.get("labeling") else ""
  published = summary.get("published")
  head = _sweep_head(summary) + (list(published["head"]) if published else [])
  lines = [f"{title}: final-step mIoU (%) and run summaries (docs/metrics.md), mean ± sample std over the n "
           "finished seeds".strip(), ""]
  if published:  # the paper's numbers beside ours (sweep --published, incseg_jax/published/beside.py)
    lines += [published["title"], ""]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in summary["methods"]:
    cells = [row["method"], str(row["n"])]
    for _, key in SWEEP_SCORES:
      mean, std = row["mean"][key], row["std"][key]
      cells.append("-" if mean is None else f"{_pct(mean)} ± {_pct(std)}")
    if published:
      cells += published["rows"][row["method"]]["cells"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def sweep_csv(summary: dict[str, Any]) -> str:
  """CSV of `sweep_summary`: method, n, then mean and std of each score as fractions (empty: none).

  With a published block (sweep --published): then ours over the paper's old
  classes where they count class 0, the paper's old / new / all and ours minus
  the paper's (fractions too), and the paper's row.
  """
  published = summary.get("published")
  roles = ("old", "new", "all")
  out = io.StringIO()
  w = csv.writer(out)
  extra_head = []
  if published:
    extra_head = ((["ours_old_paper_classes"] if published["ours_old_column"] else [])
                  + [f"{what}_{role}" for role in roles for what in ("paper", "diff")] + ["paper_row"])
  w.writerow(["method", "n"] + [f"{key}_{stat}" for _, key in SWEEP_SCORES for stat in ("mean", "std")]
             + extra_head)
  fmt = lambda v: "" if v is None else f"{v:.6f}"
  for row in summary["methods"]:
    cells = [row["method"], row["n"]] + [fmt(row[stat][key]) for _, key in SWEEP_SCORES for stat in ("mean", "std")]
    if published:
      block = published["rows"][row["method"]]
      ours, paper = block["ours"], block["paper"] or {}
      cells += [fmt(ours.get("old"))] if published["ours_old_column"] else []
      for role in roles:
        p = None if paper.get(role) is None else paper[role] / 100
        cells += [fmt(p), fmt(None if p is None or ours.get(role) is None else ours[role] - p)]
      cells.append(block["source"] or "")
    w.writerow(cells)
  return out.getvalue()
