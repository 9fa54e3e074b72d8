"""Tests of the MSRC-v2 builder on a fake tree in Microsoft's layout."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from incseg_jax.data import folder
from incseg_jax.data import msrc
from incseg_jax.testing import fake_msrc
from tests.real_datasets_common_test import read_split

_NAMES_21 = ("building", "grass", "tree", "cow", "sheep", "sky", "aeroplane", "water", "face", "car",
             "bicycle", "flower", "sign", "bird", "book", "chair", "road", "cat", "dog", "body", "boat")


def _prepare(manual_dir: str, data_dir: str, **kwargs):
  return folder.prepare(msrc.Builder, data_dir=data_dir, manual_dir=manual_dir,
                        config=msrc.resolve_config(manual_dir, ""), **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(fake tree info, prepared builder, split -> id -> example), built once."""
  root = str(tmp_path_factory.mktemp("msrc_raw"))
  fake = fake_msrc.write(root, seed=0)
  builder = _prepare(root, str(tmp_path_factory.mktemp("tfds")))
  examples = {split: read_split(builder, split) for split in ("train", "test")}
  return fake, builder, examples


def test_class_names():
  # The constants every dataset module has are checked in real_datasets_common_test.py.
  assert msrc.CLASS_NAMES == _NAMES_21


def test_palette_matches_voc_colour_map():
  # MSRC-v2's colours are VOC's colour map without entries 19, 20: an
  # independent check of the hand-written colour table.
  kept = [k for k in range(1, 24) if k not in (fake_msrc.HORSE, fake_msrc.MOUNTAIN)]
  np.testing.assert_array_equal(msrc.PALETTE, [fake_msrc.msrc_colour(k) for k in kept])
  assert msrc.PALETTE.dtype == np.uint8


def test_image_in_no_split_list_is_not_built(built):
  # That the build holds exactly the listed ids is checked for every dataset in real_datasets_common_test.py.
  fake, _, examples = built
  unlisted = set(fake["images"]) - set(examples["train"]) - set(examples["test"])
  assert len(unlisted) == 1  # the fake's one image that neither Train.txt, Validation.txt nor Test.txt lists


def test_void_and_excluded_classes_are_ignored(built):
  fake, _, examples = built
  seen = set()
  for example_id, ex in examples["train"].items():
    label, entries = ex["label"][..., 0], fake["msrc"][example_id]
    for entry in (fake_msrc.VOID, fake_msrc.HORSE, fake_msrc.MOUNTAIN):
      assert (label[entries == entry] == msrc.IGNORE_LABEL).all()
      seen.update([entry] if (entries == entry).any() else [])
    assert (label[entries == 1] == 0).all()  # building takes class id 0
  assert seen == {fake_msrc.VOID, fake_msrc.HORSE, fake_msrc.MOUNTAIN}  # the fake data has all three


def test_images_match_the_files(built):
  # Masks, sizes and pixel statistics are checked for every dataset in real_datasets_common_test.py.
  fake, _, examples = built
  for split in ("train", "test"):
    for example_id, ex in examples[split].items():
      np.testing.assert_array_equal(ex["image"], fake["images"][example_id])  # BMP -> PNG, lossless
  sizes = {tuple(ex["size"]) for ex in examples["train"].values()}
  assert len(sizes) > 1  # variable resolution, as in MSRC


def test_manual_dir_may_be_the_msrc_dir_with_lists_in_splits(tmp_path):
  fake = fake_msrc.write(str(tmp_path), seed=1, nested=False)
  os.makedirs(tmp_path / "splits")
  for name, path in fake["lists"].items():
    os.rename(path, tmp_path / "splits" / name)
  builder = msrc.Builder(data_dir=str(tmp_path / "tfds"), config="default")
  records = builder.list_records(str(tmp_path))
  assert {s: [r.id for r in recs] for s, recs in records.items()} == fake["ids"]
  assert records["test"][0].label == fake["label_paths"][fake["ids"]["test"][0]]


def test_missing_split_list(tmp_path):
  fake = fake_msrc.write(str(tmp_path / "raw"), seed=2)
  os.remove(fake["lists"]["Test.txt"])
  with pytest.raises(FileNotFoundError, match=r"split list Test\.txt not found.*Shotton.*TextonBoost"):
    _prepare(str(tmp_path / "raw"), str(tmp_path / "tfds"))


def test_missing_ground_truth_directory(tmp_path):
  fake = fake_msrc.write(str(tmp_path / "raw"), seed=2)
  os.rename(os.path.join(fake["dir"], "GroundTruth"), os.path.join(fake["dir"], "gt"))
  with pytest.raises(FileNotFoundError, match=re.escape(f"{fake['dir']}/GroundTruth not found")):
    _prepare(str(tmp_path / "raw"), str(tmp_path / "tfds"))


def test_image_in_train_and_test_lists(tmp_path):
  fake = fake_msrc.write(str(tmp_path), seed=3)
  with open(fake["lists"]["Test.txt"], "a") as f:
    f.write(f"{fake['ids']['train'][0]}.bmp\n")
  builder = msrc.Builder(data_dir=str(tmp_path / "tfds"), config="default")
  with pytest.raises(ValueError, match=f"{fake['ids']['train'][0]}.*both the train and the test"):
    builder.list_records(str(tmp_path))


def _break(fake: dict) -> dict[str, str]:
  """Damages four train records in four ways; returns id -> text the error must contain."""
  ids = fake["ids"]["train"]
  os.remove(fake["label_paths"][ids[0]])
  Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(fake["label_paths"][ids[1]], format="BMP")
  gt = np.asarray(Image.open(fake["label_paths"][ids[2]])).copy()
  gt[0, :3] = (10, 20, 30)
  gt[1, :2] = (1, 2, 3)
  Image.fromarray(gt).save(fake["label_paths"][ids[2]], format="BMP")
  with open(fake["image_paths"][ids[3]], "r+b") as f:
    f.truncate(200)
  height, width = fake["images"][ids[1]].shape[:2]
  return {
      ids[0]: f"ground truth not found: expected {fake['label_paths'][ids[0]]}",
      ids[1]: f"{fake['label_paths'][ids[1]]}: mask is 9x7 (WxH) but the image "
              f"{fake['image_paths'][ids[1]]} is {width}x{height}",
      ids[2]: f"{fake['label_paths'][ids[2]]}: colours that are not MSRC-v2 classes: "
              f"(10, 20, 30): 3 px, (1, 2, 3): 2 px",
      ids[3]: f"cannot decode {fake['image_paths'][ids[3]]}",
  }


def test_bad_records_reported_together_or_skipped(tmp_path):
  root = str(tmp_path / "raw")
  fake = fake_msrc.write(root, seed=4)
  expected = _break(fake)
  num_train = len(fake["ids"]["train"])
  with pytest.raises(folder.BadRecordsError) as error:
    _prepare(root, str(tmp_path / "tfds_a"))
  message = str(error.value)
  assert f"4 of {num_train} records of split 'train'" in message
  for example_id, reason in expected.items():
    assert f"{example_id}: {reason}" in message

  builder = _prepare(root, str(tmp_path / "tfds_b"), skip_bad_records=True)
  assert builder.info.metadata["skipped_records"] == {"train": 4}
  assert sorted(read_split(builder, "train")) == sorted(fake["ids"]["train"][4:])
  assert builder.info.splits["test"].num_examples == len(fake["ids"]["test"])
