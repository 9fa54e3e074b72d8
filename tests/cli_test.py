"""The command-line entry points, run as a user would (subprocesses)."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def run(args, data_dir, check=True):
  env = dict(os.environ, INCSEG_DATA_DIR=data_dir, TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)
  if check and out.returncode:
    raise AssertionError(f"{args} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
  return out


@pytest.mark.long
def test_main_evaluate_compare(shapes_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  out = run(["incseg_jax.main", "--config=configs/shapes.py:task=19-1,method=ft,setting=disjoint,runlocal",
             f"--workdir={workdir}", "--config.schedule.inc_length=1"], shapes_data_dir)
  assert "task step 1 (+teal_circle" in out.stdout and "| step |" in out.stdout
  for k in (0, 1):  # each task step says how long it took to start training
    assert re.search(rf"task {k}: first train step done \d+\.\d s after the task step began", out.stdout)
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  assert res["setting"] == "disjoint" and res["steps"][1]["num_train_steps"] == 1
  ev = run(["incseg_jax.evaluate", f"--workdir={workdir}", "--step=1", f"--json={tmp_path}/m.json"], shapes_data_dir)
  assert "task step 1" in ev.stdout
  with open(tmp_path / "m.json") as f:
    assert json.load(f)["metrics"] == res["steps"][1]["metrics"]
  cmp = run(["incseg_jax.compare", workdir], shapes_data_dir)
  assert "mIoU old (19)" in cmp.stdout and "M0 (step 0)" in cmp.stdout
  # Another seed on the finished workdir: accepted with the flag (refusal
  # without it: train_test), the old config kept; finished steps are reused.
  again = run(["incseg_jax.main", "--config=configs/shapes.py:task=19-1,method=ft,setting=disjoint,runlocal",
               f"--workdir={workdir}", "--config.schedule.inc_length=1", "--config.seed=5", "--allow_config_change"],
              shapes_data_dir)
  assert "config changed" in again.stdout and "seed: 0 vs 5" in again.stdout
  with open(os.path.join(workdir, "config.1.json")) as f:
    assert json.load(f)["seed"] == 0


@pytest.mark.long
def test_bad_inputs_exit_with_clear_message(shapes_data_dir, tmp_path):
  cases = [
      (["--config=configs/shapes.py:task=15-7,runlocal"], "Invalid scenario '15-7'"),
      (["--config=configs/shapes.py:method=magic,runlocal"], "unknown method 'magic'"),
      (["--config=configs/shapes.py:runlocal", "--config.setting=sideways"], "sideways"),
      (["--config=configs/shapes.py:runlocal", "--config.class_order=1,2,3"], "permutation"),
      (["--config=configs/shapes.py:runlocal", "--config.input.batch_size=abc"],
       "--config.input.batch_size=abc: config.input.batch_size expects an integer, got 'abc'"),
      (["--config=configs/shapes.py:runlocal", "--config.seed=1.5"],
       "--config.seed=1.5: config.seed expects an integer, got '1.5'"),
      (["--config=configs/shapes.py:runlocal", "--config.loss_options.ce.weight=2"],
       "--config.loss_options.ce.weight: the config has no field 'weight' there"),
      (["--config=configs/shapes.py:method=ucd,runlocal", "--config.quirks.ucd_bilinear_labels=True"],
       "config.quirks.* moved: use --config.loss_options.ucd.bilinear_labels=True"),
  ]
  for args, message in cases:
    out = run(["incseg_jax.main", f"--workdir={tmp_path}/bad", *args], shapes_data_dir, check=False)
    assert out.returncode == 2, (args, out.stderr[-2000:])
    assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
    assert len([ln for ln in out.stderr.splitlines() if ln.startswith("error:")]) == 1, out.stderr[-2000:]
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")
  out = run(["incseg_jax.evaluate", f"--workdir={tmp_path}/nothing", "--step=0"], shapes_data_dir, check=False)
  assert out.returncode == 2 and "not a run directory" in out.stderr


def test_reference_switches_are_loss_options_on_the_command_line():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  # In-process, as main parses them: the override flags must name existing fields.
  argv = ["prog", f"--config={ROOT}/configs/shapes.py:method=plop_ucd,runlocal",
          "--config.loss_options.ucd.bilinear_labels=True", "--config.loss_options.ucd.unshifted_negatives=True",
          "--config.loss_options.plop_ce.histogram_median=True"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  options = flag_values.config.loss_options
  assert options.ucd.bilinear_labels and options.ucd.unshifted_negatives and options.plop_ce.histogram_median
