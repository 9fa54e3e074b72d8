"""Tests for result tables: the comparison table's rows, columns and checks."""

import pytest

from incseg_jax import reporting


def metrics(names, ious, miou=0.5):
  return {"class_names": names, "iou": ious, "present": [v is not None for v in ious], "miou": miou,
          "pixel_acc": 0.9, "mean_class_acc": 0.6}


def run(method, task="2-1", steps=None, order=("a", "b", "c")):
  return {"dataset": "d", "task": task, "setting": "sequential", "labeling": "keep", "method": method,
          "class_order": list(order), "channel_names": ["bg", "a", "b", "c"], "steps": steps, "workdir": method}


NAMES = ["bg", "a", "b", "c"]
STEP0 = {"new_classes": ["a", "b"], "metrics": metrics(NAMES[:3], [0.9, 0.8, 0.6], miou=0.7667)}
FT_LAST = {"new_classes": ["c"], "metrics": metrics(NAMES, [0.8, 0.1, 0.3, 0.5], miou=0.425)}


def test_comparison_rows_and_hand_computed_means():
  ft = run("ft", steps=[STEP0, FT_LAST])
  joint = run("joint", task="joint", steps=[{"new_classes": ["a", "b", "c"],
                                             "metrics": metrics(NAMES, [0.9, 0.7, 0.5, 0.4])}])
  head, rows = reporting.comparison([ft, joint])
  assert head == ["method", "bg", "a", "b", "c", "mIoU old (2)", "mIoU new (1)", "mIoU", "mPA", "mCA", "avg mIoU",
                  "forgetting", "HM"]
  # HM = 2 * 0.2 * 0.5 / 0.7; these records have no new_channels, so no forgetting or average.
  assert rows[0] == ["ft", "80.0", "10.0", "30.0", "50.0", "20.0", "50.0", "42.5", "90.0", "60.0", "-", "-", "28.6"]
  assert rows[1][0] == "M0 (step 0)" and rows[1][4] == "-" and rows[1][5] == "70.0" and rows[1][6] == "-"
  assert rows[2][0] == "joint" and rows[2][5] == "60.0" and rows[2][6] == "40.0"
  csv_text = reporting.comparison_csv(head, rows)
  assert csv_text.splitlines()[2].startswith("M0 (step 0),90.0,80.0,60.0,,70.0,,")


def test_absent_classes_are_left_out_of_means():
  last = {"new_classes": ["c"], "metrics": metrics(NAMES, [0.8, None, 0.3, 0.5])}
  _, rows = reporting.comparison([run("ft", steps=[STEP0, last])], per_class=False)
  assert rows[0][1] == "30.0"  # old = mean over present old classes only (b)


def test_comparison_refuses_different_scenarios():
  a = run("ft", steps=[STEP0, FT_LAST])
  b = run("kd", task="1-2", steps=[STEP0, FT_LAST])
  with pytest.raises(ValueError, match="not one scenario"):
    reporting.comparison([a, b])
  with pytest.raises(ValueError, match="at least one incremental"):
    reporting.comparison([run("joint", task="joint", steps=[STEP0])])


def test_results_tables_have_iou_and_accuracy_per_class():
  m0 = dict(metrics(NAMES[:3], [0.9, 0.8, 0.6]), acc=[0.95, 0.85, 0.65])
  m1 = dict(metrics(NAMES, [0.8, 0.1, 0.3, 0.5]), acc=[0.9, 0.2, 0.4, 0.7])
  summary = {"miou_old": None, "miou_old_bg": 0.5, "miou_new": 0.5, "miou": 0.5}
  res = run("ft", steps=[{"task_step": 0, "num_train_images": 3, "metrics": dict(m0, **summary)},
                         {"task_step": 1, "num_train_images": 2, "metrics": dict(m1, **summary)}])
  assert reporting.per_class_table(res, "acc").splitlines()[-1] == "| c |  | 70.0 |"
  rows = reporting.to_csv(res).splitlines()
  assert rows[0].split(",")[2:10] == ["iou_bg", "iou_a", "iou_b", "iou_c", "acc_bg", "acc_a", "acc_b", "acc_c"]
  assert rows[1].split(",")[2:10] == ["0.900000", "0.800000", "0.600000", "", "0.950000", "0.850000", "0.650000", ""]
