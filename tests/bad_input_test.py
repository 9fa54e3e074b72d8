"""Bad input and concurrent runs, as a user meets them: one `error:` line naming the problem, nothing written.

Each case that reached the user as a traceback is run as the user runs it, a
`python -m incseg_jax.main` subprocess (~5 s of imports each), and asserts
the exact message, exit code 2, no traceback, and that nothing was written or
overwritten. Cases whose message is a ValueError raised before the run starts
(every one of them is printed by the same `runtime.clear_errors`) are checked
in this process, which is faster.

Read-only directories: as root, permission bits do not apply, so those
subprocesses run without the capabilities that bypass them (`setpriv`), as
an ordinary user would.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from incseg_jax import checkpointing
from incseg_jax import compare
from incseg_jax import config_lib
from incseg_jax import evaluate
from incseg_jax import files
from incseg_jax import runtime
from incseg_jax import sweep
from incseg_jax import train
from incseg_jax import workdir as workdir_lib
from incseg_jax.testing.snapshots import snapshot

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RUNLOCAL = "--config=configs/shapes.py:task=19-1,runlocal"


def as_user() -> list[str]:
  """A command prefix under which permission bits apply (an ordinary user, or root without its override)."""
  if os.geteuid() != 0:
    return []
  if not shutil.which("setpriv"):
    pytest.skip("running as root without setpriv: read-only directories cannot be tested")
  return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def run(args, data_dir, prefix=(), module="incseg_jax.main"):
  env = dict(os.environ, INCSEG_DATA_DIR=data_dir, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([*prefix, sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)


def error_line(out) -> str:
  """The one `error:` line of a refused command (exit 2, no traceback)."""
  assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
  assert len(lines) == 1, out.stderr[-3000:]
  return lines[0]


def read_only(path):
  os.makedirs(path, exist_ok=True)
  os.chmod(path, 0o555)
  return str(path)


# --- A stack trace reached the user -------------------------------------------------------------------------


def test_missing_config_file_is_named(shapes_data_dir, tmp_path):
  out = run(["--config=configs/nope.py:runlocal", f"--workdir={tmp_path}/run"], shapes_data_dir)
  assert error_line(out) == (
      f"error: --config=configs/nope.py:runlocal: the config file 'configs/nope.py' does not exist (relative paths "
      f"start at {ROOT}); expected a Python file defining get_config(arg), e.g. configs/shapes.py; the config files "
      "in configs: ade20k.py, cityscapes.py, msrc.py, shapes.py, voc.py")
  assert not os.path.exists(tmp_path / "run")


def test_read_only_data_dir_when_the_records_must_be_built(shapes_data_dir, tmp_path):
  prefix = as_user()
  data = read_only(tmp_path / "data")
  out = run([RUNLOCAL, f"--workdir={tmp_path}/run"], data, prefix)
  assert error_line(out) == (
      f"error: data dir {data} is not writable (permission denied), but the shapes dataset (tiny) is not built "
      "there yet and must be written into it (once); expected a writable directory: make it writable, or point "
      "INCSEG_DATA_DIR or --config.dataset.data_dir at a writable one")
  assert os.listdir(data) == [] and not os.path.exists(tmp_path / "run")


def test_read_only_data_dir_when_the_builtin_backbone_must_be_built(shapes_data_dir, tmp_path):
  prefix = as_user()
  data = read_only(tmp_path / "data")
  out = run(["--config=configs/shapes.py:task=19-1", f"--workdir={tmp_path}/run"], data, prefix)
  assert error_line(out).startswith(
      f"error: config.pretrained='shapes_builtin': the backbone is not built yet and must be written (once) to "
      f"{data}/shapes_pretrain/")
  assert (f"cannot be created: '{data}' is not writable (permission denied); expected a writable data dir: make it "
          "writable, point INCSEG_DATA_DIR or --config.dataset.data_dir at a writable one, or pass "
          "--config.pretrained=FILE") in out.stderr
  assert os.listdir(data) == [] and not os.path.exists(tmp_path / "run")


def test_workdir_that_is_a_file(shapes_data_dir, tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("mine")
  out = run([RUNLOCAL, f"--workdir={path}"], shapes_data_dir)
  assert error_line(out) == (
      f"error: workdir {path} is an existing file, not a directory; expected a run directory (created if missing): "
      "a run writes its checkpoints, logs and results there. Choose another --workdir.")
  assert path.read_text() == "mine" and os.listdir(tmp_path) == ["notes.txt"]


def test_read_only_workdir(shapes_data_dir, tmp_path):
  prefix = as_user()
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("x")
  read_only(workdir)
  before = snapshot(workdir)
  out = run([RUNLOCAL, f"--workdir={workdir}"], shapes_data_dir, prefix)
  assert error_line(out) == (
      f"error: workdir {workdir} is not writable (permission denied); expected a directory this process can create "
      "and write: a run writes its checkpoints, logs and results there. Make it writable or choose another "
      "--workdir.")
  assert snapshot(workdir) == before


def test_other_permission_errors_are_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    with runtime.clear_errors():
      raise PermissionError(errno.EACCES, "Permission denied", "/data/incseg_voc/1.0.0")
  assert e.value.code == 2
  assert capsys.readouterr().err == (
      "error: cannot write or read /data/incseg_voc/1.0.0 (Permission denied); expected a location this process may "
      "use: check its permissions, or choose another directory\n")


# --- A workdir lock -----------------------------------------------------------------------------------------

# Takes the lock through the same function as a run (`files.hold_lock`, under `workdir.locked`) and holds it
# until killed; importing only `incseg_jax.files` keeps it a 1-second start.
_HOLDER = ("import sys; from incseg_jax import files; lock = files.hold_lock(sys.argv[1], 'workdir'); "
           "lock.__enter__(); print('locked', flush=True); sys.stdin.read()")


def test_second_run_on_a_workdir_is_refused_naming_the_first_and_a_crash_frees_it(shapes_data_dir, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = snapshot(workdir)
    out = run([RUNLOCAL, f"--workdir={workdir}"], shapes_data_dir)
    line = error_line(out)
    assert line.startswith(f"error: workdir {workdir} is in use by another run: process {holder.pid} ("), line
    assert f"-c import sys; from incseg_jax import files" in line and line.endswith(
        f"Wait for it to finish or stop it; its lock ({workdir}/run.lock) is released when that process exits, even "
        "if it is killed.")
    assert snapshot(workdir) == before  # the refused run wrote nothing, not even into the lock file
    # In this process too (the in-process sweep calls train.run): refused before anything is built.
    with pytest.raises(files.LockedError, match=f"process {holder.pid} "):
      train.run(config_lib.base_config(), str(workdir))
  finally:
    holder.send_signal(signal.SIGKILL)  # a crash: no cleanup runs, the lock file stays behind
    holder.wait()
  assert json.loads((workdir / "run.lock").read_text())["pid"] == holder.pid
  with workdir_lib.locked(str(workdir)):  # the kernel released the dead holder's lock: taken over
    assert json.loads((workdir / "run.lock").read_text())["pid"] == os.getpid()
  assert os.listdir(workdir) == []  # released on exit, the lock file removed


def test_a_refused_run_leaves_no_workdir_behind(tmp_path):
  workdir = tmp_path / "a" / "run"
  config = config_lib.base_config()
  config.seed = -1
  with pytest.raises(ValueError, match="config.seed=-1"):
    train.run(config, str(workdir))
  assert os.listdir(tmp_path) == []  # the directories the lock created are removed again


# --- Numeric fields, validated up front ---------------------------------------------------------------------


def test_crop_size_0_and_a_negative_seed_are_named_before_training(shapes_data_dir, tmp_path):
  out = run([RUNLOCAL, f"--workdir={tmp_path}/run", "--config.input.crop_size=0", "--config.seed=-3"],
            shapes_data_dir)
  assert error_line(out) == (
      "error: config.input.crop_size=0: expected a positive finite number (the training crop size in pixels); "
      "config.seed=-3: expected an integer from 0 to 2**32 - 1 (the seed of data order, augmentation and "
      "initialisation)")
  assert "non-finite" not in out.stderr and "numpy" not in out.stderr
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("field, value, message", [
    ("schedule.base_lr", -0.1, "config.schedule.base_lr=-0.1: expected a positive finite number (the learning rate "
                               "of task step 0)"),
    ("schedule.inc_lr", float("nan"), "config.schedule.inc_lr=nan: expected a positive finite number"),
    ("schedule.base_lr", float("inf"), "config.schedule.base_lr=inf: expected a positive finite number"),
    ("schedule.end_lr", 0.5, "config.schedule.end_lr=0.5 is above config.schedule.base_lr=0.1: expected the poly "
                             "schedule to decay"),
    ("schedule.power", -1.0, "config.schedule.power=-1.0: expected a non-negative finite number"),
    ("schedule.base_length", 0, "config.schedule.base_length=0: expected a positive finite number (the length of "
                                "task step 0)"),
    ("schedule.inc_length", -2, "config.schedule.inc_length=-2: expected a positive finite number"),
    ("input.crop_size", 4, "config.input.crop_size=4: expected at least config.model.output_stride=8"),
    ("input.scale_min", 2.0, "config.input.scale_min=2.0 is above config.input.scale_max=1.5: expected "
                             "scale_min <= scale_max"),
    ("input.scale_min", 0.0, "config.input.scale_min=0.0: expected a positive finite number"),
    ("input.batch_size", 0, "config.input.batch_size=0: expected a positive finite number (the training batch "
                            "size)"),
    ("eval_batch_size", -8, "config.eval_batch_size=-8: expected a positive finite number"),
    ("input.std", (0.2, 0.0, 0.2), r"config.input.std=(0.2, 0.0, 0.2): expected positive finite numbers"),
    ("input.mean", (0.5, 0.5), "config.input.mean=(0.5, 0.5): expected 3 numbers (red, green, blue)"),
    ("seed", -1, "config.seed=-1: expected an integer from 0 to 2**32 - 1"),
    ("order_seed", 2 ** 40, "config.order_seed=1099511627776: expected an integer from 0 to 2**32 - 1"),
    ("optim.momentum", 1.5, "config.optim.momentum=1.5: expected a number below 1"),
    ("optim.weight_decay", -1e-4, "config.optim.weight_decay=-0.0001: expected a non-negative finite number"),
    ("eval_bucket", -1, "config.eval_bucket=-1: expected a non-negative finite number"),
    ("model.aspp_channels", 0, "config.model.aspp_channels=0: expected a positive finite number"),
    ("model.small_blocks", (1, 0, 1, 1), "config.model.small_blocks=(1, 0, 1, 1): expected positive finite numbers"),
    ("checkpoint_every", 0, "config.checkpoint_every=0: expected a positive finite number"),
    ("losses.ce", -1.0, "config.losses.ce=-1.0: expected a non-negative finite number (the weight of loss term 'ce'"),
])
def test_numeric_fields_are_validated_up_front(smoke_config, tmp_path, field, value, message):
  config = smoke_config()
  *parents, name = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[name] = value
  with pytest.raises(ValueError) as e:
    train.run(config, str(tmp_path / "run"))
  assert message in str(e.value)
  assert not os.path.exists(tmp_path / "run")


def test_empty_workdir_is_named(shapes_data_dir, tmp_path):
  out = run([RUNLOCAL, "--workdir="], shapes_data_dir)
  assert error_line(out) == ("error: --workdir is empty: expected the path of a run directory (created if missing); "
                             "a run writes its checkpoints, logs and results there")
  with pytest.raises(ValueError, match="^--workdir is empty"):  # evaluate only reads, and says the same
    evaluate.evaluate("")


# --- Damaged JSON files, named ------------------------------------------------------------------------------


def test_misspelled_field_names_the_flag_and_the_suggestion(shapes_data_dir, tmp_path):
  out = run([RUNLOCAL, f"--workdir={tmp_path}/run", "--config.input.crop_sze=32"], shapes_data_dir)
  assert error_line(out) == ("error: --config.input.crop_sze: the config has no field 'crop_sze' there (did you "
                             "mean --config.input.crop_size?); pass --helpfull to see the fields")
  assert not os.path.exists(tmp_path / "run")


def test_damaged_config_json_is_named(smoke_config, shapes_data_dir, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"seed": 0, "task": "19')  # truncated
  before = snapshot(workdir)
  out = run([f"--workdir={workdir}"], shapes_data_dir, module="incseg_jax.evaluate")
  assert error_line(out) == (
      f"error: {workdir}/config.json is damaged or truncated (not valid JSON: Unterminated string starting at: line "
      "1 column 21 (char 20)); it holds the config of the run in this workdir. Delete it to save this run's config "
      "there anew (the checkpoints stay protected by their identity.json files), or use a new --workdir.")
  assert snapshot(workdir) == before
  with pytest.raises(files.CorruptFileError, match="config.json is damaged"):  # main, too, before any write
    train.run(smoke_config("task=19-1"), str(workdir))
  assert snapshot(workdir) == before


@pytest.fixture
def saved_run(smoke_config, tmp_path):
  """(config, workdir) of a run that has only its config.json: enough for every check before training."""
  config = smoke_config("task=19-1")
  workdir = tmp_path / "run"
  os.makedirs(checkpointing.task_dir(str(workdir), 0))
  (workdir / "config.json").write_text(config_lib.to_json(config))
  return config, workdir


@pytest.mark.parametrize("name, what", [
    ("done.json", "it holds the record of finished task step 0. Delete it and rerun the run's command: the step is "
                  "evaluated again from its final checkpoint and the record rewritten."),
    ("identity.json", "it holds the identity of the states in"),
])
def test_damaged_step_files_are_named_before_anything_is_written(saved_run, name, what):
  config, workdir = saved_run
  path = os.path.join(checkpointing.task_dir(str(workdir), 0), name)
  with open(path, "w") as f:
    f.write("")  # truncated to nothing
  before = snapshot(workdir)
  with pytest.raises(files.CorruptFileError) as e:
    train.run(config, str(workdir))
  assert str(e.value).startswith(f"{path} is damaged or truncated (not valid JSON: Expecting value: line 1 column 1 "
                                 "(char 0)); ") and what in str(e.value)
  assert snapshot(workdir) == before


def test_damaged_results_json_is_named(saved_run):
  config, workdir = saved_run
  (workdir / "results.json").write_bytes(b'{"steps": [\xff')
  with pytest.raises(files.CorruptFileError, match=re.escape(f"{workdir}/results.json is damaged (not UTF-8 text")):
    compare.load(str(workdir))
  (workdir / "results.json").write_text('{"steps": [')
  message = (f"{workdir}/results.json is damaged or truncated (not valid JSON: Expecting value: line 1 column 12 "
             "(char 11)); it holds the run's results (the records of its finished task steps). Rerun the run's "
             "command to rewrite it")
  with pytest.raises(files.CorruptFileError, match=re.escape(message)):
    sweep.is_finished(config, str(workdir))


# --- Nothing is written until every check has passed ----------------------------------------------------------


def test_a_config_refused_after_start_up_writes_nothing(smoke_config, tmp_path):
  # config.init_from is checked with the workdir's checkpoints, before config.json is written: a refusal there
  # used to leave config.json behind, so the corrected command was refused as "a different experiment".
  config = smoke_config("task=19-1")
  config.init_from = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=f"config.init_from={tmp_path}/nowhere: no config.json there"):
    train.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
