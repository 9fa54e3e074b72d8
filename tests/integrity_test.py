"""Integrity of what a run reuses (issue 16): checkpoint checksums, the source of dataset records, VOC+SBD layouts,
MSRC's class 0.

Each test names the exact problem and checks that nothing was overwritten; subprocesses only where the user sees
the message (`python -m incseg_jax.evaluate`).
"""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from incseg_jax import checkpointing
from incseg_jax import train
from incseg_jax import train_step as ts
from incseg_jax.testing.snapshots import snapshot

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


# --- Checkpoint checksums -------------------------------------------------------------------------------------

def tiny_state(value=1.0, method=False):
  return ts.TrainState(step=np.int32(1), params={"w": np.full((3, 4), value, np.float32)},
                       batch_stats={"m": np.zeros((4,), np.float32)},
                       opt_state={"mu": np.zeros((3, 4), np.float32)}, skipped=np.int32(0),
                       method_state={"ewc": {"f": np.full((3, 4), value, np.float32)}} if method else None)


def flip_byte(step_dir: str, item: str = "model") -> str:
  """Flips one byte in the middle of the largest file of `item` in a checkpoint; returns its path."""
  paths = [p for p in glob.glob(os.path.join(step_dir, item, "**"), recursive=True) if os.path.isfile(p)]
  path = max(paths, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0xFF
  with open(path, "wb") as f:
    f.write(data)
  return path


def test_a_flipped_byte_is_named_on_every_restore(tmp_path):
  ckpt = checkpointing.TaskCheckpointer(str(tmp_path), 0)
  ckpt.save(2, tiny_state(method=True))
  sums = json.loads(open(os.path.join(ckpt.directory, "checksums.json")).read())
  assert list(sums) == ["2"] and all(len(v) == 64 for v in sums["2"].values())
  abstract = checkpointing.abstract_like(tiny_state(method=True))
  assert float(ckpt.restore_state(abstract).params["w"][0, 0]) == 1.0  # intact: verified and restored
  path = flip_byte(os.path.join(ckpt.directory, "2"))
  before = snapshot(tmp_path)
  pattern = re.escape(f"the checkpoint {ckpt.directory}/2 is damaged: {path} differs from the checksum recorded "
                      "when it was written (sha256 ")
  with pytest.raises(checkpointing.ChecksumError, match=pattern):
    ckpt.restore_state(abstract)
  with pytest.raises(checkpointing.ChecksumError, match=pattern):
    ckpt.restore_variables({"params": abstract.params, "batch_stats": abstract.batch_stats})
  with pytest.raises(checkpointing.ChecksumError, match=pattern):
    ckpt.restore_method_state(abstract.method_state)
  ckpt.close()
  assert snapshot(tmp_path) == before


def test_checkpoints_written_before_checksums_are_accepted_silently(tmp_path, capsys):
  ckpt = checkpointing.TaskCheckpointer(str(tmp_path), 0)
  ckpt.save(1, tiny_state())
  os.remove(os.path.join(ckpt.directory, "checksums.json"))
  capsys.readouterr()
  state = ckpt.restore_state(checkpointing.abstract_like(tiny_state()))
  assert float(state.params["w"][0, 0]) == 1.0
  assert not ckpt.verify(1)
  assert capsys.readouterr().out == ""
  ckpt.close()


def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, capsys):
  ckpt = checkpointing.TaskCheckpointer(str(tmp_path), 0)
  ckpt.save(2, tiny_state(2.0))
  ckpt.save(4, tiny_state(4.0))
  path = flip_byte(os.path.join(ckpt.directory, "4"))
  state = ckpt.restore_latest_intact(checkpointing.abstract_like(tiny_state()))
  assert float(state.params["w"][0, 0]) == 2.0
  out = capsys.readouterr().out
  assert out == (f"warning: task step 0: the checkpoint {ckpt.directory}/4 is damaged: {path} differs from the "
                 f"checksum recorded when it was written (sha256 {out.split('(sha256 ')[1].split(')')[0]}); falling "
                 f"back to the previous intact checkpoint (train step 2); the damaged one is kept as "
                 f"{ckpt.directory}/damaged_4\n")
  assert ckpt.all_steps() == [2] and os.path.isdir(os.path.join(ckpt.directory, "damaged_4"))
  ckpt.save(4, tiny_state(5.0))  # training goes on and saves step 4 anew
  assert sorted(json.load(open(os.path.join(ckpt.directory, "checksums.json")))) == ["2", "4"]
  flip_byte(os.path.join(ckpt.directory, "2"))
  flip_byte(os.path.join(ckpt.directory, "4"))
  with pytest.raises(checkpointing.ChecksumError, match=re.escape(f"the checkpoint {ckpt.directory}/4 is damaged")):
    ckpt.restore_latest_intact(checkpointing.abstract_like(tiny_state()))
  ckpt.close()


def test_evaluate_on_a_flipped_byte_names_the_file(smoke_config, shapes_data_dir, tmp_path):
  config = smoke_config("task=19-1")
  config.schedule.base_length, config.schedule.inc_length = 2, 1
  workdir = str(tmp_path / "run")
  train.run(config, workdir)
  step_dir = os.path.join(checkpointing.task_dir(workdir, 0), "2")
  path = flip_byte(step_dir)
  before = snapshot(workdir)
  env = dict(os.environ, INCSEG_DATA_DIR=shapes_data_dir, TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run([sys.executable, "-m", "incseg_jax.evaluate", f"--workdir={workdir}", "--step=0"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "mIoU" not in out.stdout  # no metrics printed
  errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(
      f"error: the checkpoint {step_dir} is damaged: {path} differs from the checksum recorded when it was "
      "written (sha256 "), out.stderr[-3000:]
  assert snapshot(workdir) == before


# --- Records remember their source ----------------------------------------------------------------------------

def _voc(manual, data_dir, **kwargs):
  from incseg_jax.data import folder, voc  # pylint: disable=g-import-not-at-top
  return folder.prepare(voc.Builder, data_dir=str(data_dir), manual_dir=str(manual), config="voc_only", **kwargs)


@pytest.fixture
def voc_built(tmp_path):
  """(manual_dir, data_dir, records dir) of a tiny VOC built once."""
  from incseg_jax.testing import fake_voc  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  fake_voc.write(str(manual), num_train=2, num_val=1, num_aug_only=0, with_sbd=False)
  builder = _voc(manual, tmp_path / "tfds")
  return manual, tmp_path / "tfds", str(builder.data_dir)


def test_records_built_from_another_manual_dir_are_named(voc_built, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  manual, data_dir, records = voc_built
  other = tmp_path / "other"
  shutil.copytree(manual, other)
  before = snapshot(data_dir)
  with pytest.raises(ValueError) as e:
    _voc(other, data_dir)
  assert str(e.value) == (f"config.dataset.manual_dir='{other}' ({other}) is not the directory the incseg_voc "
                          f"records in {records} were built from ({manual}); pass --config.dataset.rebuild=True to "
                          f"rebuild them from {other} (once), or point config.dataset.manual_dir at {manual}")
  assert snapshot(data_dir) == before
  _voc(manual, data_dir)  # the directory they were built from: accepted


def test_records_of_a_changed_tree_are_named_and_rebuilt_on_request(voc_built, capsys):
  manual, data_dir, records = voc_built
  mask = glob.glob(os.path.join(manual, "VOCdevkit", "VOC2012", "SegmentationClass", "*.png"))[0]
  files_before = sum(len(n) for _, _, n in os.walk(manual))
  bytes_before = sum(os.path.getsize(os.path.join(b, n)) for b, _, ns in os.walk(manual) for n in ns)
  with open(mask, "ab") as f:
    f.write(b"\0" * 7)  # resized
  before = snapshot(data_dir)
  with pytest.raises(ValueError) as e:
    _voc(manual, data_dir)
  assert str(e.value) == (f"{manual} has changed since the incseg_voc records in {records} were built from it (files "
                          f"added, removed or resized: then {files_before:,} files, {bytes_before:,} bytes, now "
                          f"{files_before:,} files, {bytes_before + 7:,} bytes); pass --config.dataset.rebuild=True "
                          "to rebuild them from it (once), or restore the directory as it was")
  assert snapshot(data_dir) == before
  capsys.readouterr()
  _voc(manual, data_dir, rebuild=True)
  assert f"--config.dataset.rebuild=True: deleting the incseg_voc records in {records}" in capsys.readouterr().out
  _voc(manual, data_dir)  # rebuilt from the tree as it is now: accepted
  before = snapshot(data_dir)
  _voc(manual, data_dir, rebuild=True)  # the flag left on rebuilds nothing that matches
  assert capsys.readouterr().out == (f"--config.dataset.rebuild=True: the incseg_voc records in {records} were built "
                                     f"from {manual} as it is now; not rebuilt\n")
  assert snapshot(data_dir) == before


def test_records_of_an_older_version_without_a_source_are_accepted_with_a_note(voc_built, capsys):
  manual, data_dir, records = voc_built
  path = os.path.join(records, "metadata.json")
  metadata = json.load(open(path))
  del metadata["source"]
  with open(path, "w") as f:
    json.dump(metadata, f)
  before = snapshot(data_dir)
  capsys.readouterr()
  _voc(manual, data_dir)
  assert capsys.readouterr().out == (
      f"note: the incseg_voc records in {records} were built by an older version that did not record their source "
      "directory; reusing them (pass --config.dataset.rebuild=True with config.dataset.manual_dir to rebuild them)\n")
  assert snapshot(data_dir) == before


# --- VOC with SBD in the common layouts -----------------------------------------------------------------------

@pytest.mark.parametrize("at, name", [("splits", "train_aug.txt"), ("root_splits", "train_aug.txt"),
                                      ("ImageSets", "trainaug.txt"), ("voc2012", "trainaug.txt")])
def test_sbd_lists_of_the_common_layouts_are_found(tmp_path, at, name):
  from incseg_jax.data import voc  # pylint: disable=g-import-not-at-top
  from incseg_jax.testing import fake_voc  # pylint: disable=g-import-not-at-top
  manual = str(tmp_path / "manual")
  written = fake_voc.write(manual, num_train=2, num_val=1, num_aug_only=2, aug_list_at=at, aug_list_name=name)
  assert voc.find_sbd(manual)[0] == written["train_aug_list"]
  assert voc.resolve_config(manual, "auto") == "aug"
  records = voc.Builder(data_dir=str(tmp_path / "tfds"), config="aug").list_records(manual)
  assert [r.id for r in records["train"]] == written["ids"]["aug_train"]


def test_fallback_to_voc_only_is_a_loud_warning_with_the_real_count(tmp_path, capsys):
  from incseg_jax.data import voc  # pylint: disable=g-import-not-at-top
  from incseg_jax.testing import fake_voc  # pylint: disable=g-import-not-at-top
  manual = str(tmp_path / "manual")
  written = fake_voc.write(manual, num_train=3, num_val=1, with_sbd=False)
  before = snapshot(manual)
  capsys.readouterr()
  assert voc.resolve_config(manual, "auto") == "voc_only"
  out = capsys.readouterr().out
  voc2012 = written["voc2012"]
  assert out.startswith(f"WARNING: Pascal VOC: SBD not found (list train_aug.txt or trainaug.txt (looked for "
                        f"{voc2012}/ImageSets/Segmentation/train_aug.txt, {voc2012}/train_aug.txt, "
                        f"{voc2012}/splits/train_aug.txt, {manual}/train_aug.txt, {manual}/splits/train_aug.txt, ")
  assert out.endswith("); training falls back to the VOC-only train.txt with 3 images instead of SBD's train_aug "
                      "(10,582 in the real data, the papers' training set); add SBD, or pass "
                      "--config.dataset.builder_config=voc_only to choose this set\n")
  assert out.count("\n") == 1
  assert snapshot(manual) == before


# --- MSRC: id 0 (building) is a real class --------------------------------------------------------------------

def test_msrc_image_holding_only_building_is_chosen_in_step_0(tmp_path):
  from incseg_jax import tasks  # pylint: disable=g-import-not-at-top
  from incseg_jax.data import folder, msrc, pipeline, registry  # pylint: disable=g-import-not-at-top
  from incseg_jax.testing import fake_msrc  # pylint: disable=g-import-not-at-top
  fake = fake_msrc.write(str(tmp_path / "manual"))
  only = fake["ids"]["train"][0]
  gt = np.zeros(fake["images"][only].shape, np.uint8)
  gt[...] = fake_msrc.msrc_colour(1)  # building everywhere
  gt[0, :] = 0  # a void row
  Image.fromarray(gt).save(fake["label_paths"][only], format="BMP")
  builder = folder.prepare(msrc.Builder, data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual"))
  train = pipeline.load_split(builder, "train")
  classes = dict(zip(train.ids, train.classes))
  assert classes[only].tolist() == [0]
  meta = registry.meta("msrc")
  assert meta.zero_is_class and not meta.void_is_zero
  for setting in ("overlapped", "disjoint", "sequential"):
    plan = tasks.make_plan("15-5", meta.num_fg, setting=setting, zero_is_class=meta.zero_is_class)
    steps = tasks.step_image_indices(plan, train.classes)
    assert train.ids.index(only) in steps[0] and all(train.ids.index(only) not in s for s in steps[1:])
  # VOC's background selects no image (unchanged)
  plan = tasks.make_plan("15-5", 20, setting="overlapped")
  assert not plan.steps[0].keep_train_image([0, 255])


def test_msrc_records_built_before_the_fix_are_named_and_rebuilt(tmp_path, capsys):
  import shutil  # pylint: disable=g-import-not-at-top
  from incseg_jax.data import folder, msrc  # pylint: disable=g-import-not-at-top
  from incseg_jax.testing import fake_msrc  # pylint: disable=g-import-not-at-top
  manual, data_dir = str(tmp_path / "manual"), str(tmp_path / "tfds")
  fake_msrc.write(manual)
  new = str(folder.prepare(msrc.Builder, data_dir=data_dir, manual_dir=manual).data_dir)
  old = os.path.join(os.path.dirname(new), "1.0.0")
  shutil.move(new, old)  # as version 1.0.0 left them
  before = snapshot(data_dir)
  with pytest.raises(FileNotFoundError) as e:
    folder.prepare(msrc.Builder, data_dir=data_dir, manual_dir="")
  assert str(e.value) == (
      f"the incseg_msrc records in {old} were built by version 1.0.0, which this version (1.1.0) cannot use: each "
      "image's class list includes id 0 (building, a real class: 1.0.0 left it out, so an image holding only "
      "building was never chosen); point config.dataset.manual_dir at the dataset's directory to build version "
      "1.1.0 (once)")
  assert snapshot(data_dir) == before
  capsys.readouterr()
  folder.prepare(msrc.Builder, data_dir=data_dir, manual_dir=manual)
  assert capsys.readouterr().out.startswith(f"note: the incseg_msrc records in {old} were built by version 1.0.0, ")
  assert os.path.isdir(new) and snapshot(old) == {k[len("incseg_msrc/default/1.0.0/"):]: v for k, v in before.items()
                                                  if k.startswith("incseg_msrc/default/1.0.0/")}
