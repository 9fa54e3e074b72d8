"""Tests of the Cityscapes builder on a fake tree in the official layout."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from incseg_jax.data import cityscapes
from incseg_jax.data import folder
from incseg_jax.testing import fake_cityscapes
from tests.real_datasets_common_test import read_split


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(fake tree info, prepared builder, split -> id -> example), built once."""
  root = str(tmp_path_factory.mktemp("cityscapes_raw"))
  fake = fake_cityscapes.write(root, seed=0)
  config = cityscapes.resolve_config(root, "auto")
  builder = folder.prepare(cityscapes.Builder, data_dir=str(tmp_path_factory.mktemp("tfds")),
                           manual_dir=root, config=config)
  examples = {split: read_split(builder, split) for split in ("train", "val")}
  return fake, builder, examples


def test_class_order_is_ucd_convention():
  # The constants every dataset module has are checked in real_datasets_common_test.py.
  names = cityscapes.CLASS_NAMES
  assert names[0] == "void"
  assert names[1:14] == ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                         "traffic sign", "vegetation", "terrain", "sky", "person", "rider")
  # The second paper's 13-6: the six added classes are ids 14..19, in this order.
  assert names[14:20] == ("car", "truck", "bus", "train", "motorcycle", "bicycle")


def test_records_sorted_by_id(built):
  fake, builder, _ = built
  records = builder.list_records(fake["root"])
  assert [r.id for r in records["train"]] == fake["ids"]["train"]


def test_fake_tree_covers_every_label_id(built):
  # Guards the mask check of real_datasets_common_test.py (same fake tree): every labelId 0..33, void ones
  # included, occurs.
  fake, _, _ = built
  for split in ("train", "val"):
    values = np.unique(np.concatenate([fake["label_ids"][i].ravel() for i in fake["ids"][split]]))
    assert values.tolist() == list(range(34))


def test_void_is_zero_and_nothing_ignored(built):
  fake, _, examples = built
  for example_id, ex in examples["train"].items():
    label = ex["label"][..., 0]
    assert (label[fake["label_ids"][example_id] == 0] == 0).all()  # unlabeled
    assert (label[-3:] == 0).all()  # the fake ego-vehicle strip
    assert not (label == cityscapes.IGNORE_LABEL).any()


def test_images_match_the_files(built):
  # Ids, masks, sizes and pixel statistics are checked for every dataset in real_datasets_common_test.py.
  fake, _, examples = built
  for split in ("train", "val"):
    for example_id, ex in examples[split].items():
      np.testing.assert_array_equal(ex["image"], fake["images"][example_id])


def test_parent_with_single_cityscapes_dir_is_accepted(tmp_path):
  fake = fake_cityscapes.write(str(tmp_path / "cityscapes"), seed=3, per_city={"train": 1, "val": 1})
  builder = cityscapes.Builder(data_dir=str(tmp_path / "tfds"), config="default")
  records = builder.list_records(str(tmp_path))
  assert {s: [r.id for r in recs] for s, recs in records.items()} == fake["ids"]


def test_missing_directory(tmp_path):
  root = tmp_path / "raw"
  fake_cityscapes.write(str(root), seed=4, per_city={"train": 1, "val": 1})
  os.rename(root / "gtFine", root / "gtFine_old")
  with pytest.raises(FileNotFoundError, match=re.escape(f"directory {root}/gtFine/train not found")):
    folder.prepare(cityscapes.Builder, data_dir=str(tmp_path / "tfds"), manual_dir=str(root),
                   config="default")


def _break(fake: dict) -> dict[str, str]:
  """Damages five train records in five ways; returns id -> text the error must contain."""
  ids = fake["ids"]["train"]
  os.remove(fake["label_paths"][ids[0]])
  os.remove(fake["image_paths"][ids[1]])
  Image.fromarray(np.zeros((16, 32), np.uint8)).save(fake["label_paths"][ids[2]])
  label_ids = fake["label_ids"][ids[3]].copy()
  label_ids[0, :5] = [40, 40, 34, 200, 7]
  Image.fromarray(label_ids).save(fake["label_paths"][ids[3]])
  with open(fake["image_paths"][ids[4]], "r+b") as f:
    f.truncate(100)
  return {
      ids[0]: f"ground truth not found: expected {fake['label_paths'][ids[0]]}",
      ids[1]: f"image not found: expected {fake['image_paths'][ids[1]]}",
      ids[2]: f"{fake['label_paths'][ids[2]]}: mask is 32x16 (WxH) but the image",
      ids[3]: f"{fake['label_paths'][ids[3]]}: labelIds [34, 40, 200] are not Cityscapes labelIds",
      ids[4]: f"cannot decode {fake['image_paths'][ids[4]]}",
  }


def test_bad_records_reported_together_or_skipped(tmp_path):
  root = str(tmp_path / "raw")
  fake = fake_cityscapes.write(root, seed=5, per_city={"train": 3, "val": 1})
  expected = _break(fake)
  with pytest.raises(folder.BadRecordsError) as error:
    folder.prepare(cityscapes.Builder, data_dir=str(tmp_path / "tfds_a"), manual_dir=root, config="default")
  message = str(error.value)
  assert "5 of 6 records of split 'train'" in message
  for example_id, reason in expected.items():
    assert f"{example_id}: {reason}" in message

  data_dir = str(tmp_path / "tfds_b")
  builder = folder.prepare(cityscapes.Builder, data_dir=data_dir, manual_dir=root, config="default",
                           skip_bad_records=True)
  assert builder.info.metadata["skipped_records"] == {"train": 5}
  assert builder.info.splits["train"].num_examples == 1
  assert builder.info.splits["val"].num_examples == 2
  # The count survives reloading the built dataset.
  reloaded = folder.prepare(cityscapes.Builder, data_dir=data_dir, manual_dir="", config="default")
  assert reloaded.info.metadata["skipped_records"] == {"train": 5}
