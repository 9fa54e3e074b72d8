"""Tests for the input pipeline: determinism, resume, augmentation, eval padding."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from incseg_jax.data import pipeline


def input_cfg(crop=32):
  return ml_collections.ConfigDict(dict(batch_size=4, crop_size=crop, scale_min=0.5, scale_max=1.5, flip=True,
                                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))


def fake_split(n=6, size=24):
  rng = np.random.default_rng(0)
  images, labels, classes = [], [], []
  for i in range(n):
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    lbl = np.zeros((size, size, 1), np.uint8)
    lbl[: size // 2, : size // 2] = 1 + i % 3
    lbl[0, :] = 255
    images.append(tf.io.encode_png(img).numpy())
    labels.append(tf.io.encode_png(lbl).numpy())
    classes.append(np.array([1 + i % 3]))
  return pipeline.EncodedSplit(images=np.asarray(images, object), labels=np.asarray(labels, object),
                               classes=classes, pixel_counts=None, ids=[f"x{i}" for i in range(n)])


def test_sample_sequence_epochs_and_resume():
  idx = np.array([3, 5, 7, 9, 11])
  full = pipeline.sample_sequence(idx, seed=1, task_index=2, start=0, stop=23)
  for e in range(4):  # each epoch is a permutation of the step's images
    assert sorted(full[5 * e:5 * e + 5]) == sorted(idx)
  np.testing.assert_array_equal(pipeline.sample_sequence(idx, seed=1, task_index=2, start=7, stop=23), full[7:])
  other = pipeline.sample_sequence(idx, seed=1, task_index=3, start=0, stop=23)
  assert not np.array_equal(full, other)  # the task step changes the order
  with pytest.raises(ValueError, match="no training images"):
    pipeline.sample_sequence(np.array([], np.int64), seed=0, task_index=4, start=0, stop=1)


def test_train_batches_resume_is_exact_and_labels_remapped():
  split = fake_split()
  lut = np.full(256, 255, np.uint8)
  lut[0], lut[1], lut[2], lut[3] = 0, 0, 1, 0  # only class 2 is learned -> channel 1
  kw = dict(seed=0, task_index=1, num_steps=5, ignore_label=255)
  full = list(pipeline.train_batches(split, np.arange(6), lut, input_cfg(), start_step=0, **kw))
  resumed = list(pipeline.train_batches(split, np.arange(6), lut, input_cfg(), start_step=3, **kw))
  assert len(full) == 5 and len(resumed) == 2
  for a, b in zip(full[3:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  labels = np.concatenate([b["label"].ravel() for b in full])
  assert set(np.unique(labels)) <= {0, 1, 255} and (labels == 1).any()
  assert full[0]["image"].shape == (4, 32, 32, 3) and full[0]["image"].dtype == np.float32


def test_augment_keeps_image_and_mask_aligned():
  # A mask equal to a function of the image: after joint geometry it must still be.
  img = np.zeros((20, 30, 3), np.uint8)
  img[:, 10:] = 200
  lbl = (img[..., :1] > 100).astype(np.uint8)
  for s in range(8):
    image, label = pipeline.augment(tf.constant(img), tf.constant(lbl), tf.constant([s, 7], tf.int64), crop_size=16,
                                    scale_min=1.0, scale_max=1.0, flip=True, ignore_label=255)
    image, label = image.numpy(), label.numpy()
    inside = label != 255
    np.testing.assert_array_equal(label[inside], (image[..., 0][inside] > 100).astype(np.uint8))


def test_eval_batches_pad_with_ignore():
  split = fake_split(n=5)
  lut = np.arange(256, dtype=np.uint8)
  batches = list(pipeline.eval_batches(split, lut, input_cfg(), batch_size=4, ignore_label=255))
  assert len(batches) == 2
  last = batches[-1]["label"]
  assert (last[1:] == 255).all() and not (last[0] == 255).all()  # 5 images -> 3 blank slots


def variable_split(sizes):
  """An encoded split whose example i is sizes[i] (H, W), label = i + 1 everywhere."""
  rng = np.random.default_rng(1)
  images, labels = [], []
  for i, (h, w) in enumerate(sizes):
    images.append(tf.io.encode_jpeg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).numpy())
    labels.append(tf.io.encode_png(np.full((h, w, 1), i + 1, np.uint8)).numpy())
  return pipeline.EncodedSplit(images=np.asarray(images, object), labels=np.asarray(labels, object),
                               classes=[np.array([i + 1]) for i in range(len(sizes))], pixel_counts=None,
                               ids=[f"v{i}" for i in range(len(sizes))], sizes=np.asarray(sizes))


@pytest.mark.parametrize("bucket", [0, 16])
def test_eval_at_original_resolution_counts_every_pixel_once(bucket):
  # Variable sizes: every real pixel appears exactly once with its label, the
  # padding is all ignore, and the shapes are the split max or the buckets.
  sizes = [(20, 30), (33, 17), (20, 30), (8, 40), (31, 31)]
  split = variable_split(sizes)
  shapes = pipeline.eval_shapes(split, bucket)
  if bucket == 0:
    assert {tuple(s) for s in shapes} == {(33, 40)}
  else:
    np.testing.assert_array_equal(shapes, [(32, 32), (48, 32), (32, 32), (16, 48), (32, 32)])
  lut = np.arange(256, dtype=np.uint8)
  batches = list(pipeline.eval_batches(split, lut, input_cfg(), batch_size=2, ignore_label=255, bucket=bucket))
  counts = np.zeros(256, np.int64)
  for b in batches:
    assert b["label"].shape[1:] == b["image"].shape[1:3]
    counts += np.bincount(b["label"].ravel(), minlength=256)
  for i, (h, w) in enumerate(sizes):
    assert counts[i + 1] == h * w
  assert counts[1:255].sum() == sum(h * w for h, w in sizes)


def test_eval_shapes_of_a_fixed_size_dataset_come_from_the_first_image():
  split = fake_split(n=2, size=24)  # like `shapes`: no per-example sizes stored
  assert split.sizes is None
  np.testing.assert_array_equal(pipeline.eval_shapes(split), [(24, 24), (24, 24)])


def test_eval_batches_mark_each_images_real_pixels():
  sizes = [(20, 30), (33, 17), (8, 40)]
  split = variable_split(sizes)
  batches = list(pipeline.eval_batches(split, np.arange(256, dtype=np.uint8), input_cfg(), batch_size=2,
                                       ignore_label=255))
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.shape == (4, 33, 40) and valid.dtype == bool
  for i, (h, w) in enumerate(sizes):
    assert valid[i, :h, :w].all() and valid[i].sum() == h * w
  assert not valid[3].any()  # the filler slot
