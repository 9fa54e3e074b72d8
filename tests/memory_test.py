"""Exemplar memory: class-balanced choice, labels kept from when stored, batches, resume."""

import collections
import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from incseg_jax import checkpointing
from incseg_jax import experiment as experiment_lib
from incseg_jax import files
from incseg_jax import hooks
from incseg_jax import memory
from incseg_jax import train
from incseg_jax import validate
from incseg_jax.data import pipeline

E = memory.Entry


def _pool():
  """12 candidates: 6 show class 1, 3 show class 2, 2 show class 3, one shows 2 and 3."""
  shows = {}
  for i in range(6):
    shows[E(i, 0)] = {1}
  for i in range(6, 9):
    shows[E(i, 0)] = {2}
  shows[E(9, 1)] = {3}
  shows[E(10, 1)] = {3}
  shows[E(11, 1)] = {2, 3}
  return list(shows), shows


def _counts(chosen, shows):
  """How many chosen images each class round took: an image counts for the classes it shows."""
  return collections.Counter(c for e in chosen for c in shows[e])


def test_balanced_selection_takes_classes_in_rounds():
  cands, shows = _pool()
  chosen = memory.select(cands, shows, (1, 2, 3), 6, seed=0, task_index=1)
  assert len(chosen) == 6 and len(set(chosen)) == 6
  # Two rounds over three classes: every class got two images (one image may count for two classes).
  counts = _counts(chosen, shows)
  assert all(counts[c] >= 2 for c in (1, 2, 3)), counts
  assert counts[1] == 2  # class 1 is abundant but gets no more than its rounds


def test_balanced_selection_is_deterministic_in_the_seed_and_stops_when_nothing_is_left():
  cands, shows = _pool()
  a = memory.select(cands, shows, (1, 2, 3), 6, seed=0, task_index=1)
  assert a == memory.select(cands, shows, (1, 2, 3), 6, seed=0, task_index=1)
  others = {tuple(memory.select(cands, shows, (1, 2, 3), 6, seed=s, task_index=1)) for s in range(1, 6)}
  assert len(others | {tuple(a)}) > 1
  # Asking for more than there is: every candidate showing a seen class, then it stops.
  assert len(memory.select(cands, shows, (1, 2, 3), 100, seed=0, task_index=1)) == 12
  assert memory.select(cands, shows, (4,), 5, seed=0, task_index=1) == []


def test_random_policy_and_unknown_policy():
  cands, shows = _pool()
  chosen = memory.select(cands, shows, (1, 2, 3), 5, seed=0, task_index=2, policy="random")
  assert len(chosen) == 5 and set(chosen) <= set(cands)
  with pytest.raises(ValueError, match="config.memory.policy='fifo'"):
    memory.select(cands, shows, (1,), 2, seed=0, task_index=1, policy="fifo")


def test_labelled_classes_of_a_table():
  lut = np.full(256, 255, np.uint8)
  lut[0], lut[3], lut[5], lut[7] = 0, 2, 0, 1
  assert memory.labelled_classes(lut, 255) == {3, 7}


def test_label_tables_can_ignore_the_stored_background():
  lut = np.full(256, 255, np.uint8)
  lut[0], lut[3], lut[7] = 0, 2, 0  # class 7 is not labelled at this step: background
  keep = memory.label_tables([lut], 255)
  ignore = memory.label_tables([lut], 255, "ignore")
  assert keep[0, 7] == 0 and keep[0, 0] == 0 and keep[0, 3] == 2
  assert ignore[0, 7] == 255 and ignore[0, 0] == 255 and ignore[0, 3] == 2
  assert lut[0] == 0  # the step's own table is untouched
  with pytest.raises(ValueError, match="config.memory.background='drop'"):
    memory.label_tables([lut], 255, "drop")


def test_save_load_and_a_damaged_file(tmp_path):
  entries = [E(4, 0), E(9, 1)]
  memory.save(str(tmp_path), entries)
  assert memory.load(str(tmp_path)) == entries
  assert memory.load(str(tmp_path / "none")) is None
  (tmp_path / memory.MEMORY_FILE).write_text(json.dumps({"entries": [[1]]}))
  with pytest.raises(files.CorruptFileError, match=memory.MEMORY_FILE):
    memory.load(str(tmp_path))


def test_the_experiments_memory_keeps_old_classes_with_their_labels(smoke_config):
  cfg = smoke_config("task=15-1,method=ft")
  cfg.memory.size = 10
  exp = experiment_lib.build(cfg)
  assert exp.memory_for(0) == []
  for k in range(1, exp.num_steps):
    mem = exp.memory_for(k)
    assert 0 < len(mem) <= 10 and all(e.step < k for e in mem)
    previous = set(exp.memory_for(k - 1)) | {E(int(i), k - 1) for i in exp.step_indices[k - 1]}
    assert set(mem) <= previous
    # Each entry shows a class through the table it keeps, and only classes learned up to its step.
    for e in mem:
      lut = exp.plan.steps[e.step].train_lut
      shown = set(int(c) for c in exp.train_split.classes[e.index]) & memory.labelled_classes(lut, 255)
      assert shown and shown <= set(exp.plan.steps[e.step].seen_classes)
  # Balanced: over the last step's memory, per-class counts differ by at most the rounds' spill-over.
  last = exp.memory_for(exp.num_steps - 1)
  seen = exp.plan.steps[-1].old_classes
  per_class = collections.Counter(c for e in last for c in set(int(x) for x in exp.train_split.classes[e.index])
                                  & memory.labelled_classes(exp.plan.steps[e.step].train_lut, 255))
  assert len([c for c in seen if per_class[c]]) >= min(len(seen), len(last)) // 2


def test_memory_slots_are_labelled_by_their_own_table():
  rng = np.random.default_rng(0)
  enc = lambda x: tf.io.encode_png(x).numpy()
  own = rng.integers(0, 255, size=(6, 8, 8, 3), dtype=np.uint8)
  split = pipeline.EncodedSplit(images=np.asarray([enc(i) for i in own], dtype=object),
                                labels=np.asarray([enc(np.full((8, 8, 1), 3, np.uint8)) for _ in own], dtype=object),
                                classes=[np.array([3])] * 6, pixel_counts=None, ids=[str(i) for i in range(6)])
  step_lut = np.arange(256, dtype=np.uint8)  # the step's own images: 3 -> 3
  old = np.arange(256, dtype=np.uint8)
  old[3] = 9  # the table a memory image was stored with: 3 -> 9
  tables = np.stack([step_lut, old])
  cfg = ml_collections.ConfigDict(dict(batch_size=4, crop_size=8, scale_min=1.0, scale_max=1.0, flip=False,
                                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
  batches = list(pipeline.train_batches(split, np.arange(4), step_lut, cfg, seed=0, task_index=1, start_step=0,
                                        num_steps=3, ignore_label=255, memory=(np.array([4, 5]), np.array([1, 1]),
                                                                               tables), num_memory=2))
  for b in batches:
    assert "replay_class" not in b
    assert (b["label"][:2] == 3).all() and (b["label"][2:] == 9).all()


def test_memory_is_checked(smoke_config):
  cfg = smoke_config()
  cfg.memory.size = 5
  cfg.memory.per_batch = cfg.input.batch_size
  with pytest.raises(ValueError, match="config.memory.per_batch"):
    validate.config(cfg)
  cfg.memory.per_batch = 0
  cfg.replay.dir = "/somewhere"
  with pytest.raises(ValueError, match="use one"):
    validate.config(cfg)


class _Crash(hooks.Hooks):
  def after_train_step(self, task_index, step):
    if task_index == 2 and step == 1:
      raise RuntimeError("simulated crash")


def _without_seconds(results):
  for step in results["steps"]:
    step.pop("seconds", None)
  return results


@pytest.mark.long
def test_memory_is_saved_per_step_and_a_resumed_run_replays_it(smoke_config, tmp_path):
  def config():
    cfg = smoke_config("task=18-1,method=mib")
    cfg.memory.size = 6
    cfg.schedule.inc_length = 2
    cfg.checkpoint_every = 1
    return cfg

  clean = _without_seconds(train.run(config(), str(tmp_path / "clean")))
  workdir = str(tmp_path / "crashed")
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.run(config(), workdir, hooks=_Crash())
  saved = memory.load(checkpointing.task_dir(workdir, 2))
  assert saved == memory.load(checkpointing.task_dir(str(tmp_path / "clean"), 2))
  resumed = _without_seconds(train.run(config(), workdir))
  assert resumed == clean
  # The saved memory is what a resume replays, even if choosing again would give another.
  exp = experiment_lib.build(config())
  assert exp.memory_for(2) == saved
