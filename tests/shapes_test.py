"""Tests for the procedural `shapes` dataset (built in its `tiny` config)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from incseg_jax.data import shapes


@pytest.fixture(scope="module")
def tiny(shapes_data_dir):
  builder = shapes.build(data_dir=shapes_data_dir, config="tiny")
  return {split: list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
          for split in ("train", "val", "test")}, builder


def test_generation_is_deterministic_and_matches_the_build(tiny):
  splits, _ = tiny
  a = shapes.generate_example("train", 7)
  b = shapes.generate_example("train", 7)
  for key in ("image", "label", "classes", "pixel_counts"):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["image"], shapes.generate_example("train", 8)["image"])
  stored = {ex["id"].decode(): ex for ex in splits["train"]}["train_000007"]
  np.testing.assert_array_equal(stored["image"], a["image"])  # PNG is lossless
  np.testing.assert_array_equal(stored["label"], a["label"])


def test_stored_class_lists_and_counts_agree_with_masks(tiny):
  splits, _ = tiny
  for split, examples in splits.items():
    assert examples, split
    for ex in examples:
      mask = ex["label"][..., 0]
      assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
      values = set(np.unique(mask).tolist())
      assert values <= set(range(21)) | {255}, (ex["id"], values)
      present = sorted(v for v in values if 0 < v < 255)
      assert ex["classes"].tolist() == present, ex["id"]
      np.testing.assert_array_equal(ex["pixel_counts"], np.bincount(mask.ravel(), minlength=256)[:21])


def test_every_class_in_both_splits_and_scenes_mix(tiny):
  splits, _ = tiny
  for split, examples in splits.items():
    seen = set().union(*(set(ex["classes"].tolist()) for ex in examples))
    assert seen == set(range(1, 21)), (split, set(range(1, 21)) - seen)
  mixed = [ex for ex in splits["train"] if min(ex["classes"]) <= 15 < max(ex["classes"])]
  assert len(mixed) >= 0.2 * len(splits["train"])  # old classes co-occur with 16..20
  per_image = [len(ex["classes"]) for ex in splits["train"]]
  assert np.mean(per_image) >= 2.0  # several objects per image
  void = np.mean([(ex["label"] == 255).any() for ex in splits["train"]])
  assert void > 0.9  # object borders are void, as in VOC


def test_confusable_pairs_share_shape_or_close_colour():
  for old, new in shapes.CONFUSABLE_PAIRS:
    a, b = shapes.CLASSES[old - 1], shapes.CLASSES[new - 1]
    distance = np.linalg.norm(np.subtract(shapes.COLOURS[a.colour], shapes.COLOURS[b.colour]))
    assert a.shape == b.shape and distance < 100 or a.colour == b.colour, (a, b)
    assert a.scene == b.scene


def test_frequencies_are_unequal_so_frequency_order_differs():
  freq = shapes.expected_class_frequencies()
  assert freq[0] == 0 and abs(freq[1:].sum() - 1) < 1e-9
  assert freq[1:].max() > 2 * freq[1:].min()
  assert list(np.argsort(-freq[1:], kind="stable") + 1) != list(range(1, 21))


def test_metadata(tiny):
  _, builder = tiny
  assert len(shapes.CLASS_NAMES) == shapes.NUM_CLASSES == 21 and shapes.PALETTE.shape == (21, 3)
  assert builder.info.metadata["class_names"] == list(shapes.CLASS_NAMES)
  assert len(builder.info.metadata["palette"]) == 21
  assert set(builder.info.splits) == {"train", "val", "test"}


def test_test_split_is_held_out(tiny):
  splits, builder = tiny
  digest = lambda ex: ex["image"].tobytes()
  seen = {digest(ex) for split in ("train", "val") for ex in splits[split]}
  assert not any(digest(ex) in seen for ex in splits["test"])  # no image shared with train or val
  assert sorted(ex["id"].decode() for ex in splits["test"]) == [f"test_{i:06d}" for i in range(64)]
