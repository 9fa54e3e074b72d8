"""Crash safety: SIGKILL a run at chosen points and rerun it; checkpoint guards.

The first test does it for real, in subprocesses.

Each kill point is named by step count through `INCSEG_FAULT` (see
incseg_jax/testing/faults.py), not by a sleep. The kills form one chain on one
workdir: every rerun resumes whatever the previous kill left (a torn
checkpoint, an unevaluated step, a done step whose successor never started)
and is itself killed at the next point, and the last rerun finishes. Its
results.json must equal that of an uninterrupted run (in this process)
except for the timing field (`seconds`), and so must the method's state
(PI's) at the end of every task step, bit for bit. One chain instead of one workdir
per point keeps this to a handful of process starts (each pays ~5 s of
imports). The other tests cover the checkpoint guards in-process: free disk
space, a full disk during a write, a checkpoint of other shapes or of another
experiment.
"""

import collections
import errno
import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from incseg_jax import checkpointing
from incseg_jax import files
from incseg_jax import runtime
from incseg_jax import train
from incseg_jax import train_step as ts
from incseg_jax.testing import faults

ROOT = os.path.join(os.path.dirname(__file__), "..")
# PLOP with PI's penalty added, one chain for both (process starts cost
# ~25 s each). PLOP: a teacher, a head initialised from it and a `prepare`
# hook (pseudo-label thresholds from one epoch of teacher outputs), all
# recomputed on resume. PI: a state (path integral, last and start
# parameters) updated by every train step, saved with every checkpoint and
# finalised into the next step's importance. The methods follow different
# label conventions, so `plop+pi` is refused; PI's term is added to PLOP's
# config by `CONFIG`, which the subprocesses load like configs/shapes.py.
CONFIG = textwrap.dedent("""
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location("shapes_config", os.path.join({root!r}, "configs", "shapes.py"))
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)

    def get_config(arg=None):
      c = shapes.get_config(arg)
      with c.unlocked():
        c.losses.pi = 500.0
        c.loss_options.pi = {{"normalize": True}}
      return c
""")
CONFIG_ARG = "task=18-1,method=plop,runlocal"
OVERRIDES = ["--config.schedule.base_length=4", "--config.schedule.inc_length=2", "--config.checkpoint_every=2",
             "--config.log_every=2"]
# (INCSEG_FAULT, what the rerun after it has to cope with). Task step 0 has
# 4 train steps (checkpoints at 2 and 4), steps 1 and 2 have 2 (final only).
KILLS = [
    ("kill:task=0,step=3,phase=train", "resume mid-step from the periodic checkpoint (with PI's state)"),
    ("kill:task=0,step=4,phase=checkpoint", "a torn final checkpoint: not chosen, removed; resume from 2"),
    ("kill:task=0,step=1,phase=eval", "final state saved but not evaluated"),
    ("kill:task=0,phase=between", "step 0 done; step 1 starts in a new process (teacher and PI state from disk)"),
    ("kill:task=1,step=2,phase=checkpoint", "step 1's only checkpoint torn: restart it (prepare again)"),
]


def write_config(directory):
  """Writes `CONFIG` into `directory`; returns its path."""
  path = os.path.join(directory, "plop_pi.py")
  with open(path, "w") as f:
    f.write(CONFIG.format(root=os.path.abspath(ROOT)))
  return path


def main(workdir, data_dir, config_path, fault=None):
  env = dict(os.environ, INCSEG_DATA_DIR=data_dir, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop(faults.ENV, None)
  if fault:
    env[faults.ENV] = fault
  args = [f"--config={config_path}:{CONFIG_ARG}", *OVERRIDES]
  return subprocess.run([sys.executable, "-m", "incseg_jax.testing.faults", f"--workdir={workdir}", *args],
                        cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def results_without_timings(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  for step in res["steps"]:
    step.pop("seconds")  # the only timing field (reporting.step_record)
  return res


def clean_config(config_path, data_dir):
  """The config the subprocesses get, built in-process."""
  spec = importlib.util.spec_from_file_location("plop_pi", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(CONFIG_ARG)
  config.dataset.data_dir = data_dir
  config.schedule.base_length = 4
  config.schedule.inc_length = 2
  config.checkpoint_every = 2
  config.log_every = 2
  return config


def final_method_state(workdir, task_index):
  return checkpointing.restore_method_state(workdir, task_index, ["pi"])["pi"]


@pytest.mark.long
def test_killed_runs_resume_to_identical_results_and_state(shapes_data_dir, tmp_path):
  t0 = time.time()
  # The uninterrupted reference runs in this process (no import cost).
  config_path = write_config(str(tmp_path))
  train.run(clean_config(config_path, shapes_data_dir), str(tmp_path / "clean"))
  workdir = str(tmp_path / "killed")
  for fault, situation in KILLS:
    out = main(workdir, shapes_data_dir, config_path, fault)
    assert out.returncode == -signal.SIGKILL, (fault, situation, out.returncode, out.stderr[-3000:])
    assert not os.path.exists(os.path.join(workdir, "results.json")), fault
    if fault == "kill:task=0,step=4,phase=checkpoint":
      # The kill left an uncommitted write behind, and it is not a checkpoint.
      task0 = checkpointing.task_dir(workdir, 0)
      assert glob.glob(os.path.join(task0, "4.orbax-checkpoint-tmp*")), os.listdir(task0)
      ckpt = checkpointing.TaskCheckpointer(workdir, 0, read_only=True)
      assert ckpt.latest_step() == 2
      ckpt.close()
  final = main(workdir, shapes_data_dir, config_path)
  assert final.returncode == 0, final.stderr[-3000:]
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*", "*orbax-checkpoint-tmp*"))
  assert results_without_timings(workdir) == results_without_timings(str(tmp_path / "clean"))
  # PI's state at the end of every task step, bit for bit.
  for k in range(3):
    clean, killed = final_method_state(str(tmp_path / "clean"), k), final_method_state(workdir, k)
    assert jax.tree.structure(clean) == jax.tree.structure(killed)
    for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(killed)):
      np.testing.assert_array_equal(a, b)
  assert "importance" in final_method_state(workdir, 2) and "importance" not in final_method_state(workdir, 0)
  print(f"{len(KILLS)} kill points, identical results and state; {len(KILLS) + 2} runs in {time.time() - t0:.0f} s")


def tiny_state(width=3):
  return ts.TrainState(step=np.int32(1), params={"w": np.ones((width, 4), np.float32)},
                       batch_stats={"m": np.zeros((4,), np.float32)},
                       opt_state={"mu": np.zeros((width, 4), np.float32)}, skipped=np.int32(0))


def test_no_free_space_is_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
  ckpt = checkpointing.TaskCheckpointer(str(tmp_path), 0)
  ckpt.save(1, tiny_state())
  free = collections.namedtuple("usage", "total used free")(10 << 20, 10 << 20, 1000)
  monkeypatch.setattr(files.shutil, "disk_usage", lambda path: free)
  with pytest.raises(checkpointing.NoSpaceError) as e:
    ckpt.save(2, tiny_state())
  message = str(e.value)
  assert e.value.errno == errno.ENOSPC
  assert ckpt.directory in message and "1,000 free" in message and "needs about 1,048," in message
  assert "the last complete checkpoint (train step 1) is kept" in message
  assert ckpt.latest_step() == 1
  ckpt.close()


def test_disk_filling_up_during_the_write_is_the_same_clear_error(tmp_path, monkeypatch):
  ckpt = checkpointing.TaskCheckpointer(str(tmp_path), 0)

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ckpt._manager, "save", full)  # pylint: disable=protected-access
  with pytest.raises(checkpointing.NoSpaceError, match="disk filled up while writing a checkpoint in .*task_00"):
    ckpt.save(2, tiny_state())
  ckpt.close()


def test_expected_errors_exit_2_with_one_line(capsys):
  for error in (checkpointing.NoSpaceError("no room in /x"), FloatingPointError("nan at step 3"),
                checkpointing.CheckpointMismatchError("other experiment")):
    with pytest.raises(SystemExit) as e:
      with runtime.clear_errors():
        raise error
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"
  with pytest.raises(PermissionError):  # not an expected failure: keeps its traceback
    with runtime.clear_errors():
      raise PermissionError(errno.EACCES, "denied")


def test_restoring_a_checkpoint_of_other_shapes_names_it(tmp_path):
  ckpt = checkpointing.TaskCheckpointer(str(tmp_path), 0)
  ckpt.save(1, tiny_state(width=3))
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"cannot restore the checkpoint .*task_00/1: "
                     r"it does not match"):
    ckpt.restore_state(checkpointing.abstract_like(tiny_state(width=5)))
  ckpt.close()


def test_identity_mismatch_says_what_differs(tmp_path):
  identity = {"dataset": "shapes", "model": {"small_width": 8}, "heads": 2, "step_classes": [["a", "b"], ["c"]]}
  checkpointing.write_identity(str(tmp_path), 1, identity)
  assert checkpointing.check_identity(str(tmp_path), 1, identity)
  assert not checkpointing.check_identity(str(tmp_path), 2, identity)  # nothing saved there
  other = dict(identity, model={"small_width": 4}, step_classes=[["a", "b"], ["d"]])
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"(?s)holds task step 1 of a different experiment.*model.small_width: 8 vs 4.*"
                           r"step_classes\[1\]\[0\]: 'c' vs 'd'"):
    checkpointing.check_identity(str(tmp_path), 1, other, what="the teacher")
  # A model field added after the identity was saved counts at its default.
  newer = dict(identity, model={"small_width": 8, "activation": "relu"})
  assert checkpointing.check_identity(str(tmp_path), 1, newer, defaults={"model": {"activation": "relu"}})
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"model.activation: '<absent>' vs 'leaky_relu'"):
    checkpointing.check_identity(str(tmp_path), 1, dict(identity, model={"small_width": 8, "activation": "leaky_relu"}),
                                 defaults={"model": {"activation": "relu"}})


def test_fault_spec():
  hooks = faults.KillAt("kill:task=1,step=2,phase=train")
  assert hooks.armed("train", 1, 2)
  assert not hooks.armed("train", 1, 3) and not hooks.armed("eval", 1, 2) and not hooks.armed("train", 0, 2)
  assert faults.KillAt("kill:task=0,phase=between").armed("between", 0)
  with pytest.raises(ValueError, match="bad item 'phase=sometime'"):
    faults.KillAt("kill:task=0,phase=sometime")
