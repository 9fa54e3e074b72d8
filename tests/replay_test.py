"""RECALL-style replay: labelling by the previous model, the folder reader, batches, the shapes folder, `recall`."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from incseg_jax import losses
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import replay
from incseg_jax import train
from incseg_jax import train_step as ts
from incseg_jax import validate
from incseg_jax.data import pipeline
from incseg_jax.data import shapes
from incseg_jax.tools import shapes_replay

IGNORE = 255


def _logits(maps):
  """(B, H, W, C) logits from per-image lists of (H, W) channel maps."""
  return jnp.asarray(np.stack([np.stack(m, -1) for m in maps]).astype(np.float32))


# Two 2x2 images, three old channels (background, 1, 2). Image 0 is a replay
# image of channel 2; image 1 is one of the step's own images.
_BG = np.array([[3., 0.], [0., 0.]])
_C1 = np.array([[0., 2.], [1., 5.]])
_C2 = np.array([[1., 1.], [2., 4.]])
LOGITS = _logits([[_BG, _C1, _C2], [_BG, _C1, _C2]])
LABELS = jnp.asarray(np.array([[[0, 0], [0, IGNORE]],      # replay: 0 on its pixels, padding ignored
                               [[0, 3], [IGNORE, 0]]]))    # own image: new class 3, void, background
REPLAY_CLASS = jnp.asarray(np.array([2, 0], np.int32))


def test_class_mode_labels_replay_pixels_with_the_folders_class_where_it_beats_background():
  out = np.asarray(replay.label_replay(LOGITS, LABELS, REPLAY_CLASS, mode="class", ignore_label=IGNORE))
  # Channel 2 vs background per pixel: 1<3 -> 0; 1>0 -> 2; 2>0 -> 2; padding stays ignored.
  # Channel 1 scores higher at (0, 1) and (1, 1), but a replay image of class 2 only knows class 2.
  np.testing.assert_array_equal(out[0], [[0, 2], [2, IGNORE]])
  np.testing.assert_array_equal(out[1], np.asarray(LABELS[1]))  # own images untouched


def test_argmax_mode_takes_every_old_class():
  out = np.asarray(replay.label_replay(LOGITS, LABELS, REPLAY_CLASS, mode="argmax", ignore_label=IGNORE))
  # argmax over (bg, 1, 2): (0,0) bg; (0,1) 1; (1,0) 2; (1,1) padding.
  np.testing.assert_array_equal(out[0], [[0, 1], [2, IGNORE]])
  np.testing.assert_array_equal(out[1], np.asarray(LABELS[1]))


def test_mix_labels_fills_only_the_own_images_background_with_the_old_argmax():
  out = np.asarray(replay.relabel(LOGITS, LABELS, REPLAY_CLASS, mode="class", mix_labels=True,
                                  ignore_label=IGNORE))
  np.testing.assert_array_equal(out[0], [[0, 2], [2, IGNORE]])  # replay image: its own rule only
  # Own image: background (0,0) -> argmax bg = 0; (1,1) -> argmax 1; new class 3 and void kept.
  np.testing.assert_array_equal(out[1], [[0, 3], [IGNORE, 1]])


def test_without_replay_images_and_mixing_labels_are_unchanged():
  labels = jnp.asarray(np.random.default_rng(0).integers(0, 4, size=(2, 2, 2)))
  out = replay.relabel(LOGITS, labels, jnp.zeros(2, jnp.int32), mode="class", mix_labels=False, ignore_label=IGNORE)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(labels))


def test_class_mode_against_a_per_pixel_loop():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 5, 4, 4))
  labels = np.where(rng.random((3, 5, 4)) < 0.2, IGNORE, 0)
  labels[2] = rng.integers(0, 6, size=(5, 4))
  rc = np.array([3, 1, 0])
  out = np.asarray(replay.relabel(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(rc),
                                  mode="class", mix_labels=True, ignore_label=IGNORE))
  want = labels.copy()
  for b in range(3):
    for y in range(5):
      for x in range(4):
        if labels[b, y, x] == IGNORE:
          continue
        if rc[b] > 0:
          want[b, y, x] = rc[b] if logits[b, y, x, rc[b]] > logits[b, y, x, 0] else 0
        elif labels[b, y, x] == 0:
          want[b, y, x] = int(np.argmax(logits[b, y, x]))
  np.testing.assert_array_equal(out, want)


def _write_jpg(path, seed=0, size=(6, 5)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = np.random.default_rng(seed).integers(0, 255, size=size + (3,), dtype=np.uint8)
  with open(path, "wb") as f:
    f.write(tf.io.encode_jpeg(img).numpy())


def test_read_folder_reads_each_class_in_name_order_and_limits_per_class(tmp_path):
  for name, n in (("cat", 3), ("dog", 2)):
    for i in range(n):
      _write_jpg(str(tmp_path / name / f"{i}.jpg"), seed=i)
  (tmp_path / "cat" / "notes.txt").write_text("not an image")
  rs = replay.read_folder(str(tmp_path), {4: "cat", 7: "dog"})
  assert list(rs.class_ids) == [4, 4, 4, 7, 7]
  assert [os.path.basename(p) for p in rs.paths] == ["0.jpg", "1.jpg", "2.jpg", "0.jpg", "1.jpg"]
  rs = replay.read_folder(str(tmp_path), {4: "cat", 7: "dog"}, per_class=1)
  assert list(rs.class_ids) == [4, 7]
  idx, channels = replay.read_folder(str(tmp_path), {4: "cat", 7: "dog"}).select({7: 2})
  assert list(idx) == [3, 4] and list(channels) == [2, 2]


@pytest.mark.parametrize("case, expected", [
    ("no_dir", "not a directory"),
    ("missing_class", "no folder for old class(es) ['dog']"),
    ("empty_class", "holds no images"),
    ("corrupt", "cannot be decoded"),
])
def test_read_folder_names_what_is_wrong(tmp_path, case, expected):
  root = tmp_path / "replay"
  if case != "no_dir":
    _write_jpg(str(root / "cat" / "0.jpg"))
    if case in ("empty_class", "corrupt"):
      os.makedirs(root / "dog")
    if case == "corrupt":
      (root / "dog" / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
  with pytest.raises(ValueError, match="replay") as e:
    replay.read_folder(str(root), {1: "cat", 2: "dog"})
  assert expected in str(e.value)
  if case == "corrupt":
    assert str(root / "dog" / "bad.jpg") in str(e.value)


def test_batch_composition():
  assert replay.batch_composition(16, 4, 4) == 8
  assert replay.batch_composition(16, 1, 3) == 4
  assert replay.batch_composition(16, 0, 4) == 0
  with pytest.raises(ValueError, match="whole images"):
    replay.batch_composition(6, 1, 3)


def _encoded(images, labels=None):
  enc = lambda x: tf.io.encode_png(x).numpy()
  imgs = np.asarray([enc(i) for i in images], dtype=object)
  lbls = None if labels is None else np.asarray([enc(l[..., None]) for l in labels], dtype=object)
  return imgs, lbls


def _input_cfg(batch_size):
  return ml_collections.ConfigDict(dict(batch_size=batch_size, crop_size=8, scale_min=1.0, scale_max=1.0,
                                        flip=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))


def _replay_batches(start, stop, with_replay=True):
  rng = np.random.default_rng(0)
  own = rng.integers(0, 255, size=(10, 8, 8, 3), dtype=np.uint8)
  own_lbl = np.full((10, 8, 8), 3, np.uint8)
  imgs, lbls = _encoded(own, own_lbl)
  split = pipeline.EncodedSplit(images=imgs, labels=lbls, classes=[np.array([3])] * 10, pixel_counts=None,
                                ids=[str(i) for i in range(10)])
  rep_imgs, _ = _encoded(rng.integers(0, 255, size=(6, 8, 8, 3), dtype=np.uint8))
  rp = (rep_imgs, np.array([1, 3, 5]), np.array([1, 2, 2], np.int32)) if with_replay else None
  lut = np.arange(256, dtype=np.uint8)
  return list(pipeline.train_batches(split, np.arange(10), lut, _input_cfg(4), seed=3, task_index=1,
                                     start_step=start, num_steps=stop, ignore_label=IGNORE, replay=rp,
                                     num_replay=2))


def test_replay_batches_have_the_ratio_the_classes_and_unlabelled_pixels():
  batches = _replay_batches(0, 5)
  for b in batches:
    np.testing.assert_array_equal(b["replay_class"][:2], [0, 0])
    assert set(b["replay_class"][2:]) <= {1, 2}
    assert (b["label"][:2] == 3).all()  # own images keep their labels
    assert (b["label"][2:] == 0).all()  # replay images: 0 on their pixels (no padding at scale 1)
  seen = {int(c) for b in batches for c in b["replay_class"][2:]}
  assert seen == {1, 2}


def test_replay_batches_resume_exactly():
  full, tail = _replay_batches(0, 6), _replay_batches(4, 6)
  for a, b in zip(full[4:], tail):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_without_replay_the_batches_are_those_of_every_earlier_run():
  plain = _replay_batches(0, 3, with_replay=False)
  assert "replay_class" not in plain[0]
  rng = np.random.default_rng(0)
  own = rng.integers(0, 255, size=(10, 8, 8, 3), dtype=np.uint8)
  imgs, lbls = _encoded(own, np.full((10, 8, 8), 3, np.uint8))
  seq = pipeline.sample_sequence(np.arange(10), seed=3, task_index=1, start=0, stop=12)
  for t, b in enumerate(plain):
    for j in range(4):  # scale 1, no flip, crop = image: the k-th image is the k-th of the sequence
      want = (own[seq[4 * t + j]].astype(np.float32) / 255 - 0.5) / 0.5
      np.testing.assert_allclose(b["image"][j], want, atol=1e-6)


def test_shapes_replay_folder_is_deterministic_and_of_one_class(tmp_path):
  n = shapes_replay.write(str(tmp_path / "a"), per_class=2, classes=[3, 17])
  shapes_replay.write(str(tmp_path / "b"), per_class=2, classes=[3, 17])
  assert n == 4
  for cid in (3, 17):
    name = shapes.CLASS_NAMES[cid]
    assert sorted(os.listdir(tmp_path / "a" / name)) == ["0000.jpg", "0001.jpg"]
    for f in ("0000.jpg", "0001.jpg"):
      assert (tmp_path / "a" / name / f).read_bytes() == (tmp_path / "b" / name / f).read_bytes()
    for i in range(2):
      _, mask = shapes.replay_example(cid, i)
      assert set(np.unique(mask)) <= {0, cid, IGNORE} and (mask == cid).any()


def test_replay_images_are_not_training_images():
  train_img = shapes.generate_example("train", 2)["image"]  # example 2 forces class 3
  for i in range(5):
    img, _ = shapes.replay_example(3, i)
    assert not np.array_equal(img, train_img)


def test_recall_needs_a_replay_folder_and_checks_its_fields(smoke_config, tmp_path):
  cfg = smoke_config("method=recall")
  with pytest.raises(ValueError, match="--config.replay.dir=DIR"):
    validate.config(cfg)
  cfg.replay.dir = str(tmp_path)
  cfg.replay.label = "helper"
  with pytest.raises(ValueError, match="config.replay.label='helper'"):
    validate.config(cfg)
  cfg.replay.label = "class"
  cfg.replay.ratio_old, cfg.replay.ratio_new = 1, 6
  with pytest.raises(ValueError, match="whole images"):
    validate.config(cfg)


def test_recall_method_and_combinations():
  m = methods.get("recall")
  assert m.replay and m.frozen == ("backbone",) and dict(m.losses) == {"ce": 1.0}
  combo = methods.get("mib+recall")
  assert combo.replay and "unbiased_ce" in combo.losses and "ce" not in combo.losses
  assert not methods.get("mib").replay


def test_the_train_step_trains_on_the_relabelled_targets():
  """The loss terms see the teacher's labels of the replay images, not the pipeline's zeros."""
  cfg = ml_collections.ConfigDict(dict(backbone="resnet_small", decoder="deeplab_v3", output_stride=8,
                                       aspp_channels=8, atrous_rates=(1, 2, 3), small_width=8,
                                       small_blocks=(1, 1, 1, 1), bn_frozen=False))
  teacher, student = models.build_model(cfg, (3,)), models.build_model(cfg, (3, 1))
  tvars = models.init_variables(teacher, jax.random.key(0), 16)
  svars = models.add_head(student, tvars, jax.random.key(1), 16)
  sched = ts.lr_schedule(0.0, 0.0, 0.9, 10)
  tx = ts.make_optimizer(ml_collections.ConfigDict(dict(momentum=0.9, nesterov=True, weight_decay=0.0)), sched,
                         svars["params"], ())
  task = losses.TaskInfo(index=1, num_channels=5, old_channels=(1, 2, 3), new_channels=(4,))
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
           "label": np.where(rng.random((4, 16, 16)) < 0.5, 4, 0).astype(np.int32),
           "replay_class": np.array([0, 0, 2, 3], np.int32)}
  batch["label"][2:] = 0
  teacher_logits = teacher.apply(tvars, batch["image"], train=False)["logits"]
  want = replay.relabel(teacher_logits, jnp.asarray(batch["label"]), jnp.asarray(batch["replay_class"]),
                        mode="class", mix_labels=True, ignore_label=IGNORE)
  seen = {}

  def label_sum(inputs):
    return jnp.sum(inputs.labels).astype(jnp.float32)

  with losses.registered("label_sum_probe", label_sum):
    for rp in ({"label": "class", "mix_labels": True}, None):
      state = ts.TrainState(step=np.int32(0), params=svars["params"], batch_stats=svars["batch_stats"],
                            opt_state=tx.init(svars["params"]), skipped=np.int32(0))
      step = ts.make_train_step(student, teacher, [("label_sum_probe", 1.0, {})], task, tx, sched, replay=rp)
      _, metrics = step(state, tvars, batch, jax.random.key(0))
      seen[rp is not None] = float(metrics["loss_label_sum_probe"])
  assert seen[True] == float(jnp.sum(want))
  assert seen[False] == float(batch["label"].sum())
  assert seen[True] != seen[False]


def test_label_images_uses_each_images_own_class_and_size():
  cfg = _input_cfg(4)
  imgs = [np.zeros((5, 7, 3), np.uint8), np.zeros((3, 4, 3), np.uint8)]
  encoded = [tf.io.encode_png(i).numpy() for i in imgs]

  def forward(x, valid):  # channel 2 beats background on the left half of the real pixels, channel 1 nowhere
    logits = np.zeros(x.shape[:3] + (3,), np.float32)
    logits[..., 1] = -1.0
    logits[:, :, :2, 2] = 1.0
    assert valid.sum() == 35 + 12 and x.shape[1] % 32 == 0  # both images in one padded batch
    return jnp.asarray(logits)

  out = replay.label_images(forward, np.asarray(encoded, dtype=object), np.array([2, 1]), mode="class",
                            input_cfg=cfg)
  first, second = (tf.io.decode_png(o).numpy()[..., 0] for o in out)
  assert first.shape == (5, 7) and second.shape == (3, 4)
  assert (first[:, :2] == 2).all() and (first[:, 2:] == 0).all()
  assert (second == 0).all()  # an image of class 1, which never beats background


def test_labels_are_kept_only_when_complete(tmp_path):
  names = ["a__0.png", "b__1.png"]
  assert replay.load_labels(str(tmp_path / "l"), names) is None
  replay.save_labels(str(tmp_path / "l"), names, [b"x", b"y"])
  assert replay.load_labels(str(tmp_path / "l"), names) == [b"x", b"y"]
  os.remove(tmp_path / "l" / "done")  # a write cut short: labelled again
  assert replay.load_labels(str(tmp_path / "l"), names) is None
  assert replay.label_file("/r/red_circle/0007.jpg") == "red_circle__0007.png"


def test_labelled_replay_batches_carry_their_stored_labels():
  rng = np.random.default_rng(0)
  imgs, lbls = _encoded(rng.integers(0, 255, size=(4, 8, 8, 3), dtype=np.uint8), np.full((4, 8, 8), 3, np.uint8))
  split = pipeline.EncodedSplit(images=imgs, labels=lbls, classes=[np.array([3])] * 4, pixel_counts=None,
                                ids=[str(i) for i in range(4)])
  rep_imgs, rep_lbls = _encoded(rng.integers(0, 255, size=(2, 8, 8, 3), dtype=np.uint8),
                                np.full((2, 8, 8), 2, np.uint8))
  rp = (rep_imgs, np.array([0, 1]), np.array([2, 2], np.int32), rep_lbls)
  for b in pipeline.train_batches(split, np.arange(4), np.arange(256, dtype=np.uint8), _input_cfg(4), seed=0,
                                  task_index=1, start_step=0, num_steps=2, ignore_label=IGNORE, replay=rp,
                                  num_replay=2):
    assert (b["label"][:2] == 3).all() and (b["label"][2:] == 2).all()
    np.testing.assert_array_equal(b["replay_class"], [0, 0, 2, 2])


@pytest.mark.parametrize("labeller", ["learned", "previous"])
def test_recall_runs_end_to_end(smoke_config, tmp_path, labeller):
  shapes_replay.write(str(tmp_path / "replay"), per_class=2)
  cfg = smoke_config("method=recall,task=18-1")
  cfg.replay.dir = str(tmp_path / "replay")
  cfg.replay.labeller = labeller
  workdir = str(tmp_path / "run")
  results = train.run(cfg, workdir)
  assert len(results["steps"]) == 3
  made = sorted(os.listdir(os.path.join(workdir, replay.LABELS_DIR))) if labeller == "learned" else []
  # Step 0's 18 classes are labelled by step 0's model, step 1's class by step 1's; nothing else.
  assert made == (["task_00", "task_01"] if labeller == "learned" else [])
  if labeller == "learned":
    labels = [f for f in os.listdir(os.path.join(workdir, replay.LABELS_DIR, "task_00")) if f.endswith(".png")]
    assert len(labels) == 18 * 2
