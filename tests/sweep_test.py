"""Tests of `python -m incseg_jax.sweep`: the sweep table, sharing step 0, scheduling, and one whole sweep."""

import json
import math
import os
import subprocess
import sys

import pytest

from incseg_jax import checkpointing
from incseg_jax import config_lib
from incseg_jax import reporting
from incseg_jax import sweep

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHAPES = os.path.join(ROOT, "configs", "shapes.py")

# ---------------------------------------------------------------------------
# The table, on hand-made results: scenario "3-1" over classes a, b, c (step 0) and d (step 1).

NAMES = ["bg", "a", "b", "c", "d"]


def result(ious, miou, task="3-1", method="m"):
  """A results.json whose final step has per-class IoUs `ious` (None: class absent from the ground truth)."""
  metrics = {"class_names": NAMES, "iou": ious, "present": [v is not None for v in ious], "miou": miou}
  steps = [{"new_classes": ["a", "b", "c"], "metrics": {}}, {"new_classes": ["d"], "metrics": metrics}]
  if task == "joint":
    steps = [{"new_classes": ["a", "b", "c", "d"], "metrics": metrics}]
  return {"dataset": "d", "task": task, "setting": "overlapped", "labeling": None, "method": method,
          "class_order": ["a", "b", "c", "d"], "channel_names": NAMES, "steps": steps}


def test_mean_std_is_sample_std():
  assert reporting.mean_std([]) == (None, None)
  assert reporting.mean_std([0.5, None]) == (0.5, None)
  mean, std = reporting.mean_std([0.1, 0.2, 0.6])
  assert mean == pytest.approx(0.3) and std == pytest.approx(math.sqrt((0.04 + 0.01 + 0.09) / 2))
  assert reporting.mean_std([0.3, float("nan"), 0.5]) == (pytest.approx(0.4), pytest.approx(math.sqrt(0.02)))


def test_sweep_summary_hand_computed():
  runs = {
      # old = mean(a, b, c); new = d; all = the run's miou.
      "ft": {0: result([0.9, 0.5, 0.3, 0.1, 0.6], 0.48), 1: result([0.9, 0.7, 0.5, 0.3, 0.2], 0.44)},
      "mib": {2: result([0.9, 0.4, None, 0.2, 0.5], 0.5)},  # b absent: old = mean(a, c)
      "plop": {},
      "joint": {0: result([0.9, 0.8, 0.6, 0.4, 0.7], 0.68, task="joint")},
  }
  s = reporting.sweep_summary(runs)
  assert s["base_classes"] == ["a", "b", "c"] and s["added_classes"] == ["d"] and s["task"] == "3-1"
  ft, mib, plop, joint = s["methods"]
  assert [r["method"] for r in s["methods"]] == ["ft", "mib", "plop", "joint"]
  assert ft["n"] == 2 and ft["seeds"] == [0, 1]
  # These records have no new_channels: no average incremental mIoU or forgetting; HM = 2 old new / (old + new).
  assert ft["per_seed"][1] == {"seed": 1, "miou_old": pytest.approx(0.5), "miou_new": 0.2, "miou": 0.44,
                               "harmonic_mean": pytest.approx(2 * 0.5 * 0.2 / 0.7), "avg_miou": None,
                               "forgetting": None}
  assert {k: ft["mean"][k] for k in ("miou_old", "miou_new", "miou")} == {
      "miou_old": pytest.approx(0.4), "miou_new": pytest.approx(0.4), "miou": pytest.approx(0.46)}
  assert ft["mean"]["harmonic_mean"] == pytest.approx((2 * 0.3 * 0.6 / 0.9 + 2 * 0.5 * 0.2 / 0.7) / 2)
  assert {k: ft["std"][k] for k in ("miou_old", "miou_new", "miou")} == {
      "miou_old": pytest.approx(math.sqrt(0.02)), "miou_new": pytest.approx(math.sqrt(0.08)),
      "miou": pytest.approx(math.sqrt(0.0008))}
  assert mib["n"] == 1 and mib["mean"]["miou_old"] == pytest.approx(0.3) and mib["std"]["miou_old"] is None
  assert plop["n"] == 0 and plop["mean"]["miou"] is None
  # joint: scored on the incremental runs' class groups.
  assert joint["mean"]["miou_old"] == pytest.approx(0.6) and joint["mean"]["miou_new"] == pytest.approx(0.7)

  md = reporting.sweep_markdown(s).splitlines()
  assert md[0].startswith("d 3-1 overlapped: final-step mIoU (%) and run summaries")
  assert md[2] == "| method | n | mIoU old (3) | mIoU new (1) | mIoU all | HM | avg mIoU | forgetting |"
  assert md[4] == "| ft | 2 | 40.0 ± 14.1 | 40.0 ± 28.3 | 46.0 ± 2.8 | 34.3 ± 8.1 | - | - |"  # HM 0.4 and 0.2857
  assert md[5] == "| mib | 1 | 30.0 ± - | 50.0 ± - | 50.0 ± - | 37.5 ± - | - | - |"
  assert md[6] == "| plop | 0 | - | - | - | - | - | - |"
  rows = reporting.sweep_csv(s).splitlines()
  assert rows[0] == ("method,n,miou_old_mean,miou_old_std,miou_new_mean,miou_new_std,miou_mean,miou_std,"
                     "harmonic_mean_mean,harmonic_mean_std,avg_miou_mean,avg_miou_std,forgetting_mean,forgetting_std")
  assert rows[1].startswith("ft,2,0.400000,0.141421,0.400000,0.282843,0.460000,0.028284,0.342857,")
  assert rows[2] == "mib,1,0.300000,,0.500000,,0.500000,,0.375000,,,,,"
  assert rows[3] == "plop,0,,,,,,,,,,,,"


def test_sweep_summary_refuses_mixed_scenarios_and_takes_no_runs():
  with pytest.raises(ValueError, match="not one scenario"):
    reporting.sweep_summary({"a": {0: result([0.9] * 5, 0.9)}, "b": {0: result([0.9] * 5, 0.9, task="2-2")}})
  empty = reporting.sweep_summary({"a": {}})
  assert empty["base_classes"] is None and "| a | 0 | - | - | - |" in reporting.sweep_markdown(empty)


# ---------------------------------------------------------------------------
# Which methods share ft's step 0.


def test_sharing_decision():
  source = sweep.ConfigSource(SHAPES, "task=15-1,setting=overlapped")
  ft = source.make("ft", 0)
  assert sweep.step0_difference(source.make("ft", 0), ft) is None
  # PLOP's plop_ce is plain CE without a previous model, and it ignores void as ft does.
  assert sweep.step0_difference(source.make("plop", 0), ft) is None
  assert sweep.step0_difference(source.make("mib", 0), ft) == "trains void pixels as background"
  assert sweep.step0_difference(source.make("lwf_mc", 0), ft) == (
      "trains void pixels as background; step-0 loss bce is not ft's ce")
  assert "joint" in sweep.step0_difference(source.make("joint", 0), ft)
  # EWC trains step 0 as ft does (its penalty needs a previous model) but accumulates its Fisher there.
  assert sweep.step0_difference(source.make("ewc", 0), ft) == (
      "trains void pixels as background; accumulates the state of ewc from step 0")
  # Different step-0 options or another field than the method's are found, too.
  other = source.make("ft", 0)
  other.loss_options.ce = {"reduction": "valid"}
  assert "step-0 loss ce{'reduction': 'valid'} is not ft's ce" in sweep.step0_difference(other, ft)
  other = source.make("ft", 0)
  other.model.small_width = 8
  assert "model.small_width" in sweep.step0_difference(other, ft)


def test_same_step0_loss_probe():
  ce = [("ce", 1.0, {})]
  assert sweep.same_step0_loss([("unbiased_ce", 1.0, {})], ce)
  assert not sweep.same_step0_loss([("bce", 1.0, {})], ce)
  assert not sweep.same_step0_loss([("ce", 2.0, {})], ce)
  assert not sweep.same_step0_loss([("ce", 1.0, {"reduction": "valid"})], ce)


def test_plan_runs_base_first_and_shares_through_init_from(tmp_path):
  source = sweep.ConfigSource(SHAPES, "task=15-1,method=mib,runlocal", {"input.batch_size": 2})
  plan = sweep.make_plan(source, ["plop", "lwf_mc", "joint"], [0, 1], str(tmp_path))
  assert plan.step0["plop"] is None and plan.step0["lwf_mc"] and plan.step0["joint"]
  assert [r.name for r in plan.runs[:4]] == ["ft seed 0", "plop seed 0", "lwf_mc seed 0", "joint seed 0"]
  by_key = {r.key: r for r in plan.runs}
  base = by_key[("ft", 1)]
  assert not base.in_table and base.workdir == os.path.join(str(tmp_path), "ft", "seed_1")
  plop = by_key[("plop", 1)]
  assert plop.base == ("ft", 1) and plop.config.init_from == base.workdir and plop.config.seed == 1
  assert plop.config.method == "plop" and "plop_ce" in plop.config.losses  # method= of the argument replaced
  assert plop.config.input.batch_size == 2
  assert by_key[("lwf_mc", 0)].config.init_from == "" and by_key[("joint", 0)].config.task == "joint"
  assert "plop" in plan.describe() and "lwf_mc: trains void" in plan.describe()
  # Without a sharing method and without ft no base run is needed.
  assert [r.method for r in sweep.make_plan(source, ["lwf_mc"], [0], str(tmp_path)).runs] == ["lwf_mc"]


def test_plan_takes_step0_from_another_sweep(tmp_path):
  source = sweep.ConfigSource(SHAPES, "task=15-1,runlocal", {})
  other = str(tmp_path / "sweep_15-5")
  with pytest.raises(ValueError, match=r"--step0_from=.*no finished step 0 in .*ft.seed_0, .*mib.seed_0"):
    sweep.make_plan(source, ["ft", "plop", "mib"], [0], str(tmp_path / "here"), step0_from=other)
  for m in ("ft", "mib"):
    os.makedirs(checkpointing.task_dir(sweep.run_dir(other, m, 0), 0))
    checkpointing.mark_done(sweep.run_dir(other, m, 0), 0, {})
  plan = sweep.make_plan(source, ["ft", "plop", "mib"], [0], str(tmp_path / "here"), step0_from=other)
  by_key = {r.key: r for r in plan.runs}
  assert [r.name for r in plan.runs] == ["ft seed 0", "plop seed 0", "mib seed 0"]
  assert all(r.base is None and r.in_table for r in plan.runs)  # nothing waits for a run of this sweep
  assert by_key[("ft", 0)].config.init_from == sweep.run_dir(other, "ft", 0)
  assert by_key[("plop", 0)].config.init_from == sweep.run_dir(other, "ft", 0)
  assert by_key[("mib", 0)].config.init_from == sweep.run_dir(other, "mib", 0)  # mib trains its own step 0
  assert by_key[("plop", 0)].workdir == sweep.run_dir(str(tmp_path / "here"), "plop", 0)
  assert other in plan.describe() and "its own for mib" in plan.describe()


def test_config_source_refuses_what_the_sweep_sets_and_missing_fields():
  with pytest.raises(ValueError, match="--config.seed is set by the sweep"):
    sweep.ConfigSource(SHAPES, "", {"seed": 3})
  source = sweep.ConfigSource(SHAPES, "method=plop", {"loss_options.plop_ce.nb_bins": 50})
  assert source.make("plop", 0).loss_options.plop_ce.nb_bins == 50
  with pytest.raises(ValueError, match="method 'ft'.s config has no such field"):
    source.make("ft", 0)
  with pytest.raises(ValueError, match="unknown method"):
    sweep.make_plan(sweep.ConfigSource(SHAPES), ["magic"], [0], "/nonexistent")


def test_override_args_and_subprocess_command(tmp_path):
  argv = ["--config=configs/shapes.py:task=19-1", "--methods=ft", "--config.input.batch_size=4",
          "--config.dataset.data_dir", "/d", "--noconfig.x", "--workdir=w", "--config.y=1"]
  assert sweep.override_args(argv) == ("--config.input.batch_size=4", "--config.dataset.data_dir", "/d",
                                       "--noconfig.x", "--config.y=1")
  source = sweep.ConfigSource("configs/shapes.py", "task=19-1,method=ft", {}, ("--config.input.batch_size=4",))
  plan = sweep.make_plan(source, ["kd_cls"], [3], str(tmp_path))
  cmd = sweep.main_command(source, plan.runs[1])
  assert cmd[1:] == ["-m", "incseg_jax.main", "--config=configs/shapes.py:task=19-1,method=kd_cls",
                     f"--workdir={tmp_path}/kd_cls/seed_3", "--config.input.batch_size=4", "--config.seed=3",
                     f"--config.init_from={tmp_path}/ft/seed_3"]


def test_last_error_line(tmp_path):
  log = tmp_path / "sweep.log"
  # The detail lines under the error (what differs) are kept, joined on one line.
  log.write_text("step 1\nerror: workdir x holds a different experiment:\n  seed: 0 vs 1\n  task: 15-1 vs 15-5\n"
                 "I1202 later log line\n\n")
  assert sweep.last_error_line(str(log)) == ("error: workdir x holds a different experiment: seed: 0 vs 1; "
                                             "task: 15-1 vs 15-5")
  log.write_text("Traceback\nRuntimeError: boom\n")
  assert sweep.last_error_line(str(log)) == "RuntimeError: boom"


def test_an_in_process_error_keeps_its_details_on_one_line():
  err = ValueError("config.init_from='b' is a different base model; differing (theirs vs ours):\n"
                   "  dataset.saliency_dir: '<absent>' vs ''\n  model.small_width: 4 vs 8")
  assert sweep._error_line(err) == ("config.init_from='b' is a different base model; differing (theirs vs ours): "
                                    "dataset.saliency_dir: '<absent>' vs ''; model.small_width: 4 vs 8")
  assert sweep._error_line(KeyError("x")) == "KeyError: 'x'"


# ---------------------------------------------------------------------------
# Scheduling, with fake jobs.


class FakeJob:
  """Ends after `polls` polls with `error`; records how many jobs ran at once."""

  def __init__(self, log, name, error=None, polls=2):
    self.log, self.name, self.error, self.left = log, name, error, polls
    log["active"].add(name)
    log["most"] = max(log["most"], len(log["active"]))
    log["order"].append(name)

  def poll(self):
    self.left -= 1
    if self.left > 0:
      return False, None
    self.log["active"].discard(self.name)
    return True, self.error

  def stop(self):
    self.log["active"].discard(self.name)


def fake_runs(tmp_path, methods=("ft", "kd_cls", "lwf_mc"), seeds=(0, 1)):
  return sweep.make_plan(sweep.ConfigSource(SHAPES, "task=19-1,runlocal"), list(methods), list(seeds),
                         str(tmp_path)).runs


def test_execute_waits_for_the_base_run_and_limits_parallel_jobs(tmp_path):
  log = {"active": set(), "most": 0, "order": []}
  runs = fake_runs(tmp_path)
  outcome = sweep.execute(runs, lambda r: FakeJob(log, r.name), parallel=2, poll_seconds=0)
  assert all(v is None for v in outcome.values()) and len(outcome) == 6
  assert log["most"] == 2
  # kd_cls shares ft's step 0: it starts only after ft of its seed ended; lwf_mc does not wait.
  assert log["order"][:2] == ["ft seed 0", "lwf_mc seed 0"]
  assert log["order"].index("kd_cls seed 0") > log["order"].index("ft seed 0")


def test_execute_reports_failures_and_goes_on(tmp_path, capsys):
  log = {"active": set(), "most": 0, "order": []}
  runs = fake_runs(tmp_path)
  errors = {"ft seed 1": "error: boom", "lwf_mc seed 0": "exit status 2: error: bad"}
  outcome = sweep.execute(runs, lambda r: FakeJob(log, r.name, errors.get(r.name), polls=1), parallel=1,
                          poll_seconds=0)
  assert outcome[("ft", 1)] == "error: boom" and outcome[("lwf_mc", 0)] == "exit status 2: error: bad"
  assert outcome[("kd_cls", 1)] == "not run: its step-0 base run (ft seed 1) failed"
  assert "kd_cls seed 1" not in log["order"]
  assert outcome[("kd_cls", 0)] is None and outcome[("lwf_mc", 1)] is None
  assert "sweep: ft seed 1: FAILED" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# One whole sweep: 2 methods x 2 seeds on the tiny shapes build (runlocal).


def read_json(path):
  with open(path) as f:
    return json.load(f)


@pytest.mark.long
def test_sweep_end_to_end(shapes_data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "sweep")
  data = f"--config.dataset.data_dir={shapes_data_dir}"
  source = sweep.ConfigSource(SHAPES, "task=19-1,runlocal", {"dataset.data_dir": shapes_data_dir}, (data,))
  # The base run of seed 1 is refused (its workdir holds another experiment): it fails, kd_cls seed 1 (which
  # shares its step 0) is not run, the others go on, and the exit status says so.
  blocker = os.path.join(workdir, "ft", "seed_1", "config.json")
  os.makedirs(os.path.dirname(blocker))
  other = source.make("ft", 1)
  other.task = "15-5"
  with open(blocker, "w") as f:
    f.write(config_lib.to_json(other))
  assert sweep.run_sweep(source, ["kd_cls", "lwf_mc"], [0, 1], workdir) == 1
  out, err = capsys.readouterr()
  assert "step 0 shared (the ft run of the same seed, via config.init_from): kd_cls" in out
  assert "lwf_mc: trains void pixels as background; step-0 loss bce is not ft's ce" in out
  assert "FAILED: ft seed 1: workdir" in err and "holds a different experiment" in err
  assert "FAILED: kd_cls seed 1: not run: its step-0 base run (ft seed 1) failed" in err
  first = read_json(os.path.join(workdir, "sweep.json"))
  assert [(r["method"], r["n"]) for r in first["methods"]] == [("kd_cls", 1), ("lwf_mc", 2)]

  os.remove(blocker)
  assert sweep.run_sweep(source, ["kd_cls", "lwf_mc"], [0, 1], workdir) == 0
  out = capsys.readouterr().out
  for name in ("ft seed 0", "kd_cls seed 0", "lwf_mc seed 0", "lwf_mc seed 1"):
    assert f"sweep: {name}: finished in" in out and f"sweep: {name}: running" not in out
  assert "sweep: ft seed 1: running" in out and "sweep: kd_cls seed 1: running" in out

  for seed in (0, 1):
    base = os.path.join(workdir, "ft", f"seed_{seed}")
    shared = os.path.join(workdir, "kd_cls", f"seed_{seed}")
    own = os.path.join(workdir, "lwf_mc", f"seed_{seed}")
    assert read_json(os.path.join(shared, "config.json"))["init_from"] == base
    assert read_json(os.path.join(own, "config.json"))["init_from"] == ""
    assert read_json(os.path.join(shared, "config.json"))["seed"] == seed
    # The base model is reused: kd_cls's step 0 is ft's, bit for bit in the metrics.
    assert (read_json(os.path.join(shared, "results.json"))["steps"][0]["metrics"]
            == read_json(os.path.join(base, "results.json"))["steps"][0]["metrics"])
  assert sorted(os.listdir(workdir)) == ["ft", "kd_cls", "lwf_mc", "sweep.csv", "sweep.json", "sweep.md"]

  summary = read_json(os.path.join(workdir, "sweep.json"))
  assert [r["method"] for r in summary["methods"]] == ["kd_cls", "lwf_mc"]  # the ft base run is not a row
  assert summary["step0"]["kd_cls"] == "shared" and summary["failed"] == [] and summary["seeds"] == [0, 1]
  for row in summary["methods"]:
    runs = [read_json(os.path.join(workdir, row["method"], f"seed_{s}", "results.json")) for s in (0, 1)]
    scores = [reporting.final_scores(r, summary["base_classes"], summary["added_classes"]) for r in runs]
    assert row["n"] == 2 and [p["miou"] for p in row["per_seed"]] == [s["miou"] for s in scores]
    assert row["mean"]["miou"] == pytest.approx((scores[0]["miou"] + scores[1]["miou"]) / 2)
  with open(os.path.join(workdir, "sweep.md")) as f:
    table = f.read()
  assert "| method | n | mIoU old (19) | mIoU new (1) | mIoU all |" in table and "| lwf_mc | 2 | " in table

  # The command line, rerun: every run is finished and skipped; the same table.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  cli = subprocess.run([sys.executable, "-m", "incseg_jax.sweep", "--config=configs/shapes.py:task=19-1,runlocal",
                        "--methods=kd_cls,lwf_mc", "--seeds=0,1", f"--workdir={workdir}", data],
                       cwd=ROOT, env=env, capture_output=True, text=True)
  assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
  assert cli.stdout.count("finished in") == 6 and "running in" not in cli.stdout
  with open(os.path.join(workdir, "sweep.md")) as f:
    assert f.read() == table
