"""Tests for incseg_jax.evaluation: device confusion matrix and host metrics."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from incseg_jax import evaluation

# ----------------------------------------------------------------------------------------
# confusion_matrix
# ----------------------------------------------------------------------------------------


def _reference_confusion(labels, preds, num_classes, ignore_label):
  """Plain NumPy reference, counting in float64 with np.add.at."""
  lab = np.asarray(labels).reshape(-1).astype(np.int64)
  pred = np.asarray(preds).reshape(-1).astype(np.int64)
  keep = (lab != ignore_label) & (lab >= 0) & (lab < num_classes)
  keep &= (pred >= 0) & (pred < num_classes)
  out = np.zeros((num_classes, num_classes), dtype=np.float64)
  np.add.at(out, (lab[keep], pred[keep]), 1.0)
  return out


def test_confusion_hand_computed_3x3():
  # Pixels (gt, pred): (0,0) (0,1) (0,0) (1,1) (1,2) (2,2); then a void pixel and a
  # label 3 >= num_classes, both skipped whatever their prediction.
  labels = jnp.array([[0, 0, 0, 1], [1, 2, 255, 3]], dtype=jnp.int32)
  preds = jnp.array([[0, 1, 0, 1], [2, 2, 0, 1]], dtype=jnp.int32)
  conf = evaluation.confusion_matrix(labels, preds, 3)
  expected = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
  assert conf.dtype == jnp.int32 and conf.shape == (3, 3)
  np.testing.assert_array_equal(np.asarray(conf), expected)


def test_confusion_hand_computed_4x4_custom_ignore():
  # ignore_label = 9; label 4 is out of range; 255 is just out of range too.
  labels = np.array([0, 3, 3, 2, 9, 4, 255, 1, 1], dtype=np.uint8)
  preds = np.array([3, 3, 0, 2, 1, 1, 1, 1, 0], dtype=np.uint8)
  conf = np.asarray(evaluation.confusion_matrix(labels, preds, 4, ignore_label=9))
  expected = np.array(
    [
      [0, 0, 0, 1],
      [1, 1, 0, 0],
      [0, 0, 1, 0],
      [1, 0, 0, 1],
    ]
  )
  np.testing.assert_array_equal(conf, expected)


def test_confusion_skips_out_of_range_predictions():
  labels = np.array([0, 1, 1], dtype=np.int32)
  preds = np.array([2, 1, -1], dtype=np.int32)  # 2 would otherwise land in row 1
  conf = np.asarray(evaluation.confusion_matrix(labels, preds, 2))
  np.testing.assert_array_equal(conf, [[0, 0], [0, 1]])


def test_confusion_uint8_no_wraparound():
  # 21 classes: label * 21 overflows uint8 unless widened first.
  labels = np.array([20, 20, 13, 255], dtype=np.uint8)
  preds = np.array([20, 5, 13, 7], dtype=np.uint8)
  conf = np.asarray(evaluation.confusion_matrix(labels, preds, 21))
  expected = np.zeros((21, 21), dtype=np.int64)
  expected[20, 20] = 1
  expected[20, 5] = 1
  expected[13, 13] = 1
  np.testing.assert_array_equal(conf, expected)


def test_confusion_random_matches_numpy_under_jit():
  rng = np.random.default_rng(0)
  num_classes = 7
  # Labels include every class, values >= num_classes and the ignore label.
  labels = rng.integers(0, num_classes + 3, size=(3, 33, 41)).astype(np.uint8)
  labels[rng.random(labels.shape) < 0.1] = 255
  preds = rng.integers(0, num_classes, size=labels.shape).astype(np.int32)
  fn = jax.jit(evaluation.confusion_matrix, static_argnums=(2, 3))
  conf = np.asarray(fn(labels, preds, num_classes, 255))
  ref = _reference_confusion(labels, preds, num_classes, 255)
  np.testing.assert_array_equal(conf.astype(np.float64), ref)
  assert conf.sum() == int(((labels < num_classes)).sum())


def test_confusion_shape_mismatch():
  with pytest.raises(ValueError, match="shape"):
    evaluation.confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), 3)


# ----------------------------------------------------------------------------------------
# segmentation_metrics
# ----------------------------------------------------------------------------------------

CONF3 = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_metrics_hand_computed_3x3():
  m = evaluation.segmentation_metrics(CONF3, old_channels=(1,), new_channels=(2,))
  # TP = [2, 1, 1], GT = [3, 2, 1], Pred = [2, 2, 2].
  np.testing.assert_allclose(m["iou"], [2 / 3, 1 / 3, 1 / 2], rtol=0, atol=1e-15)
  np.testing.assert_allclose(m["acc"], [2 / 3, 1 / 2, 1.0], rtol=0, atol=1e-15)
  assert m["miou"] == pytest.approx(0.5, abs=1e-15)
  assert m["pixel_acc"] == pytest.approx(4 / 6, abs=1e-15)
  assert m["mean_class_acc"] == pytest.approx(13 / 18, abs=1e-15)
  assert m["miou_old"] == pytest.approx(1 / 3, abs=1e-15)
  assert m["miou_old_bg"] == pytest.approx(1 / 2, abs=1e-15)  # (2/3 + 1/3) / 2
  assert m["miou_new"] == pytest.approx(1 / 2, abs=1e-15)
  assert m["miou_fg"] == pytest.approx(5 / 12, abs=1e-15)  # (1/3 + 1/2) / 2
  assert m["num_pixels"] == 6
  assert m["num_classes"] == 3
  assert "class_names" not in m


# Class 2 is absent from the ground truth but predicted once (IoU 0, excluded from means);
# class 4 is absent from both (IoU and accuracy undefined).
CONF5 = np.array(
  [
    [5, 0, 1, 0, 0],
    [1, 3, 0, 2, 0],
    [0, 0, 0, 0, 0],
    [0, 1, 0, 2, 0],
    [0, 0, 0, 0, 0],
  ],
  dtype=np.int64,
)


def test_metrics_absent_classes_excluded():
  m = evaluation.segmentation_metrics(
    CONF5, old_channels=(1,), new_channels=(2, 3, 4), class_names=list("abcde")
  )
  # TP = [5, 3, 0, 2, 0], GT = [6, 6, 0, 3, 0], Pred = [6, 4, 1, 4, 0].
  iou = m["iou"]
  assert iou[:4] == pytest.approx([5 / 7, 3 / 7, 0.0, 2 / 5], abs=1e-15)
  assert iou[4] is None
  assert m["acc"][:2] == pytest.approx([5 / 6, 1 / 2], abs=1e-15)
  assert m["acc"][2] is None and m["acc"][4] is None
  assert m["acc"][3] == pytest.approx(2 / 3, abs=1e-15)
  assert m["present"] == [True, True, False, True, False]
  assert m["miou"] == pytest.approx(18 / 35, abs=1e-15)  # (5/7 + 3/7 + 2/5) / 3
  assert m["miou_old"] == pytest.approx(3 / 7, abs=1e-15)
  assert m["miou_old_bg"] == pytest.approx(4 / 7, abs=1e-15)
  assert m["miou_new"] == pytest.approx(2 / 5, abs=1e-15)  # only class 3 is present
  assert m["miou_fg"] == pytest.approx(29 / 70, abs=1e-15)  # (3/7 + 2/5) / 2
  assert m["pixel_acc"] == pytest.approx(10 / 15, abs=1e-15)
  assert m["mean_class_acc"] == pytest.approx(2 / 3, abs=1e-15)  # (5/6 + 1/2 + 2/3) / 3
  assert m["num_pixels"] == 15
  assert m["class_names"] == ["a", "b", "c", "d", "e"]
  json.dumps(m, allow_nan=False)  # plain floats / None only


def test_metrics_empty_groups_are_none():
  m = evaluation.segmentation_metrics(CONF5, old_channels=(), new_channels=(2, 4))
  assert m["miou_old"] is None
  assert m["miou_new"] is None  # both new classes absent from the ground truth
  assert m["miou_old_bg"] == pytest.approx(5 / 7, abs=1e-15)  # background alone
  # Background passed as "old" is not counted in miou_old (MiB/UCD tables exclude it).
  m = evaluation.segmentation_metrics(CONF5, old_channels=(0,))
  assert m["miou_old"] is None
  assert m["miou_old_bg"] == pytest.approx(5 / 7, abs=1e-15)


def test_metrics_all_zero_matrix():
  m = evaluation.segmentation_metrics(
    np.zeros((3, 3), np.int32), old_channels=(1,), new_channels=(2,)
  )
  keys = ("miou", "miou_old", "miou_old_bg", "miou_new", "miou_fg", "pixel_acc")
  for key in keys + ("mean_class_acc",):
    assert m[key] is None, key
  assert m["iou"] == [None, None, None]
  assert m["acc"] == [None, None, None]
  assert m["num_pixels"] == 0
  json.dumps(m, allow_nan=False)


def test_metrics_float64_precision():
  # Counts above 2**24 would lose precision in float32; the ratio must still be exact.
  big = 2**40
  conf = np.array([[big, 1], [0, big]], dtype=np.int64)
  m = evaluation.segmentation_metrics(conf)
  assert m["iou"][0] == big / (big + 1)
  assert m["iou"][0] != 1.0
  assert m["num_pixels"] == 2 * big + 1
  assert isinstance(m["miou"], float) and isinstance(m["num_pixels"], int)


def test_metrics_from_device_matrix_end_to_end():
  labels = jnp.array([0, 0, 0, 1, 1, 2, 255, 3])
  preds = jnp.array([0, 1, 0, 1, 2, 2, 0, 1])
  conf = evaluation.confusion_matrix(labels, preds, 3)
  m = evaluation.segmentation_metrics(np.asarray(conf))
  assert m["miou"] == pytest.approx(0.5, abs=1e-15)
  assert m["num_pixels"] == 6


def test_metrics_input_validation():
  with pytest.raises(ValueError, match="square"):
    evaluation.segmentation_metrics(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="outside 0..2"):
    evaluation.segmentation_metrics(CONF3, new_channels=(3,))
  with pytest.raises(ValueError, match="class_names"):
    evaluation.segmentation_metrics(CONF3, class_names=["a", "b"])
  with pytest.raises(ValueError, match="negative"):
    evaluation.segmentation_metrics(-np.eye(2))


def test_metrics_nan_never_leaks():
  m = evaluation.segmentation_metrics(CONF5)
  for value in m["iou"] + m["acc"]:
    assert value is None or not math.isnan(value)
