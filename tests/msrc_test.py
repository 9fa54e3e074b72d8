"""Tests of the MSRC-v2 builder on a fake tree in Microsoft's layout."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from incseg_jax import tasks
from incseg_jax.data import folder
from incseg_jax.data import msrc
from incseg_jax.testing import fake_msrc

_NAMES_21 = ("building", "grass", "tree", "cow", "sheep", "sky", "aeroplane", "water", "face", "car",
             "bicycle", "flower", "sign", "bird", "book", "chair", "road", "cat", "dog", "body", "boat")


def _read_all(builder, split: str) -> dict[str, dict]:
  """id -> example (numpy) of one split."""
  return {ex["id"].decode(): ex for ex in builder.as_dataset(split=split).as_numpy_iterator()}


def _prepare(manual_dir: str, data_dir: str, **kwargs):
  return folder.prepare(msrc.Builder, data_dir=data_dir, manual_dir=manual_dir,
                        config=msrc.resolve_config(manual_dir, ""), **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(fake tree info, prepared builder, split -> id -> example), built once."""
  root = str(tmp_path_factory.mktemp("msrc_raw"))
  fake = fake_msrc.write(root, seed=0)
  builder = _prepare(root, str(tmp_path_factory.mktemp("tfds")))
  examples = {split: _read_all(builder, split) for split in ("train", "test")}
  return fake, builder, examples


def test_module_interface():
  assert msrc.NAME == "msrc"
  assert msrc.NUM_CLASSES == 21
  assert msrc.CLASS_NAMES == _NAMES_21
  assert msrc.IGNORE_LABEL == 255
  assert not msrc.VOID_IS_ZERO
  assert (msrc.TRAIN_SPLIT, msrc.EVAL_SPLIT) == ("train", "test")
  assert msrc.Builder.name == "incseg_msrc"
  assert msrc.Builder.CLASS_NAMES == msrc.CLASS_NAMES


def test_palette_matches_voc_colour_map():
  # MSRC-v2's colours are VOC's colour map without entries 19, 20: an
  # independent check of the hand-written colour table.
  kept = [k for k in range(1, 24) if k not in (fake_msrc.HORSE, fake_msrc.MOUNTAIN)]
  np.testing.assert_array_equal(msrc.PALETTE, [fake_msrc.msrc_colour(k) for k in kept])
  assert msrc.PALETTE.dtype == np.uint8


@pytest.mark.parametrize("requested", ["", "auto", "default", " Auto ", None])
def test_resolve_config(requested):
  assert msrc.resolve_config("/nowhere", requested, data_dir="/tmp") == "default"


def test_resolve_config_rejects_unknown():
  with pytest.raises(ValueError, match="'msrc21'.*valid: 'default'"):
    msrc.resolve_config("/nowhere", "msrc21")


def test_splits_and_ids(built):
  fake, builder, examples = built
  assert set(builder.info.splits.keys()) == {"train", "test"}
  assert sorted(examples["train"]) == sorted(fake["ids"]["train"])  # Train + Validation
  assert sorted(examples["test"]) == sorted(fake["ids"]["test"])
  assert len(fake["images"]) == len(fake["ids"]["train"]) + len(fake["ids"]["test"]) + 1  # one unlisted


def test_masks_match_independent_mapping(built):
  fake, _, examples = built
  for split in ("train", "test"):
    for example_id, ex in examples[split].items():
      np.testing.assert_array_equal(ex["label"][..., 0], fake["masks"][example_id])


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


def test_images_and_size(built):
  fake, _, examples = built
  for split in ("train", "test"):
    for example_id, ex in examples[split].items():
      np.testing.assert_array_equal(ex["image"], fake["images"][example_id])  # BMP -> PNG, lossless
      assert ex["size"].tolist() == list(fake["images"][example_id].shape[:2])
  sizes = {tuple(ex["size"]) for ex in examples["train"].values()}
  assert len(sizes) > 1  # variable resolution, as in MSRC


def test_classes_and_pixel_counts(built):
  _, _, examples = built
  for split in ("train", "test"):
    for ex in examples[split].values():
      label = ex["label"].ravel()
      counts = np.bincount(label, minlength=256)[:msrc.NUM_CLASSES]
      np.testing.assert_array_equal(ex["pixel_counts"], counts)
      assert ex["pixel_counts"].sum() == np.sum(label != msrc.IGNORE_LABEL)
      np.testing.assert_array_equal(ex["classes"], np.flatnonzero(counts[1:]) + 1)


def test_frequency_order(built):
  fake, _, examples = built
  stored = sum(ex["pixel_counts"] for ex in examples["train"].values())
  order = tasks.resolve_class_order("frequency", msrc.NUM_CLASSES - 1, pixel_counts=stored)
  entries = np.concatenate([fake["msrc"][i].ravel() for i in fake["ids"]["train"]])
  per_entry = np.bincount(entries, minlength=fake_msrc.NUM_MSRC)
  # Our class c >= 1 is MSRC entry c + 1 up to sheep (skipping horse), c + 2 after mountain.
  entry_of = {c: k for c, k in enumerate(k for k in range(1, 24) if k not in (5, 8))}
  expected = sorted(range(1, 21), key=lambda c: (-per_entry[entry_of[c]], c))
  assert order == tuple(expected)
  assert order != tuple(range(1, 21))


def test_metadata(built):
  _, builder, _ = built
  assert builder.info.metadata["class_names"] == list(_NAMES_21)
  assert builder.info.metadata["palette"] == msrc.PALETTE.tolist()
  assert not builder.info.metadata["skipped_records"]


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


def test_missing_directory(tmp_path):
  os.makedirs(tmp_path / "raw" / "Pictures")  # a wrong directory, not an empty one
  with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path}/raw/{fake_msrc.DIR_NAME} not found")):
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
  assert sorted(_read_all(builder, "train")) == sorted(fake["ids"]["train"][4:])
  assert builder.info.splits["test"].num_examples == len(fake["ids"]["test"])
