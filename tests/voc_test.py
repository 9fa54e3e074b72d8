"""Tests of the Pascal VOC 2012 (+ SBD) builder on a fake tree in the official layout."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from incseg_jax.data import folder
from incseg_jax.data import voc
from incseg_jax.testing import fake_voc


def _read(builder, split):
  """id -> example, with the stored image bytes kept raw under "image_bytes"."""
  raw = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
  decoded = builder.as_dataset(split=split, shuffle_files=False)
  out = {}
  for ex, dec in zip(tfds.as_numpy(raw), tfds.as_numpy(decoded)):
    assert ex["id"] == dec["id"]
    out[ex["id"].decode()] = dict(dec, image_bytes=ex["image"])
  return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The fake tree and its "aug" and "voc_only" builds, read back as numpy."""
  manual = str(tmp_path_factory.mktemp("voc_manual"))
  data_dir = str(tmp_path_factory.mktemp("voc_tfds"))
  written = fake_voc.write(manual)
  out = {"written": written, "manual": manual}
  for config in ("aug", "voc_only"):
    builder = folder.prepare(voc.Builder, data_dir=data_dir, manual_dir=manual, config=config)
    out[config] = {split: _read(builder, split) for split in ("train", "val")}
  return out


def test_class_names_colours_and_configs():
  # The constants every dataset module has are checked in real_datasets_common_test.py.
  assert voc.CLASS_NAMES[0] == "background"
  assert voc.CLASS_NAMES[15] == "person" and voc.CLASS_NAMES[20] == "tvmonitor"
  # The standard colour map: 1 = dark red, 15 = person pink-ish, 255 = the void cream.
  assert voc.PALETTE[1].tolist() == [128, 0, 0] and voc.PALETTE[15].tolist() == [192, 128, 128]
  assert voc.colormap(256)[255].tolist() == [224, 224, 192]
  assert [c.name for c in voc.Builder.BUILDER_CONFIGS] == ["aug", "voc_only"]
  assert "SegmentationClassAug" in voc.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_splits_and_ids(built):
  ids = built["written"]["ids"]
  assert ids["aug_train"] != ids["train_aug"]  # the fake list holds a val id to drop
  assert sorted(built["aug"]["train"]) == sorted(ids["aug_train"])
  assert sorted(built["voc_only"]["train"]) == sorted(ids["train"])
  for config in ("aug", "voc_only"):
    assert sorted(built[config]["val"]) == sorted(ids["val"])
    assert not set(built[config]["train"]) & set(built[config]["val"])


@pytest.mark.parametrize("config", ["aug", "voc_only"])
def test_masks_and_images_match_the_files(built, config):
  # Sizes, pixel counts and classes of both builds are checked in real_datasets_common_test.py.
  written = built["written"]
  for split, examples in built[config].items():
    # aug trains on SegmentationClassAug; val (and voc_only) on SegmentationClass.
    masks = written["aug_masks"] if (config, split) == ("aug", "train") else written["masks"]
    for i, ex in examples.items():
      mask = ex["label"][..., 0]
      np.testing.assert_array_equal(mask, masks[i], err_msg=i)
      assert (mask == 255).any()  # the void border is kept as ignore
      # JPEG bytes are kept, so the stored image decodes exactly like the file.
      with open(written["images"][i], "rb") as f:
        assert ex["image_bytes"] == f.read()
      with Image.open(written["images"][i]) as image:
        reference = np.asarray(image.convert("RGB"))
      exact = tf.io.decode_jpeg(ex["image_bytes"], channels=3, dct_method="INTEGER_ACCURATE").numpy()
      np.testing.assert_array_equal(exact, reference)
      # tfds' own decode uses TF's fast IDCT: equal up to rounding.
      assert ex["image"].shape == reference.shape
      assert np.abs(ex["image"].astype(int) - reference).max() <= 8


def test_resolve_config(tmp_path, capsys):
  with_sbd = str(tmp_path / "with")
  fake_voc.write(with_sbd, num_train=1, num_val=1, num_aug_only=0)
  for requested in ("auto", "", "default", "aug"):
    assert voc.resolve_config(with_sbd, requested) == "aug"
  assert voc.resolve_config(with_sbd, "voc_only") == "voc_only"

  without = str(tmp_path / "without")
  fake_voc.write(without, num_train=1, num_val=1, with_sbd=False)
  capsys.readouterr()
  assert voc.resolve_config(without, "auto") == "voc_only"
  message = capsys.readouterr().out
  assert message.count("\n") == 1 and "SBD not found" in message and "VOC-only" in message
  assert os.path.join(without, "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", "train_aug.txt") in message
  with pytest.raises(FileNotFoundError, match="train_aug.txt"):
    voc.resolve_config(without, "aug")
  with pytest.raises(ValueError, match="unknown builder config"):
    voc.resolve_config(without, "sbd")


def test_resolve_config_without_a_voc_tree_reuses_a_finished_build(tmp_path):
  assert voc.resolve_config("", "auto") == "aug"  # `prepare` then explains that manual_dir is needed
  info = tmp_path / "incseg_voc" / "voc_only" / "1.0.0" / "dataset_info.json"
  info.parent.mkdir(parents=True)
  info.write_text("{}")
  assert voc.resolve_config("", "auto", data_dir=str(tmp_path)) == "voc_only"
  assert voc.resolve_config(str(tmp_path / "nowhere"), "default", data_dir=str(tmp_path)) == "voc_only"
  assert voc.resolve_config("", "aug", data_dir=str(tmp_path)) == "aug"  # explicit wins


def test_layouts_and_list_formats(tmp_path):
  manual = str(tmp_path / "ids_at_root")
  written = fake_voc.write(manual, num_train=2, num_val=1, aug_list_format="ids", aug_list_at="root")
  voc2012 = written["voc2012"]
  for where in (manual, os.path.join(manual, "VOCdevkit"), voc2012):
    assert voc.find_voc2012(where) == voc2012
  assert voc.list_ids(written["train_aug_list"], "x") == written["ids"]["train_aug"]
  records = voc.Builder(data_dir=str(tmp_path / "tfds"), config="aug").list_records(manual)
  assert [r.id for r in records["train"]] == written["ids"]["aug_train"]
  assert records["train"][0].label == os.path.join(voc2012, "SegmentationClassAug",
                                                   written["ids"]["aug_train"][0] + ".png")
  two = tmp_path / "two.txt"
  two.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\n2007_000039\n")
  assert voc.list_ids(str(two), "x") == ["2007_000032", "2007_000039"]


def _prepare(manual, tmp_path, config="voc_only", **kwargs):
  return folder.prepare(voc.Builder, data_dir=str(tmp_path / "tfds"), manual_dir=manual, config=config,
                        **kwargs)


def _small(tmp_path, **kwargs):
  manual = str(tmp_path / "manual")
  return manual, fake_voc.write(manual, num_train=2, num_val=1, num_aug_only=0, **kwargs)


def test_missing_image_directory(tmp_path):
  manual, written = _small(tmp_path)
  shutil.rmtree(os.path.join(written["voc2012"], "JPEGImages"))
  with pytest.raises(FileNotFoundError, match="JPEGImages"):
    _prepare(manual, tmp_path)


def test_missing_list_file(tmp_path):
  manual, written = _small(tmp_path)
  path = os.path.join(written["voc2012"], "ImageSets", "Segmentation", "val.txt")
  os.remove(path)
  with pytest.raises(FileNotFoundError, match=f"list file {path} not found"):
    _prepare(manual, tmp_path)


def test_empty_list_file(tmp_path):
  manual, written = _small(tmp_path)
  path = os.path.join(written["voc2012"], "ImageSets", "Segmentation", "train.txt")
  with open(path, "w") as f:
    f.write("\n  \n")
  with pytest.raises(ValueError, match=f"list file {path} is empty"):
    _prepare(manual, tmp_path)


def test_aug_config_without_sbd(tmp_path):
  manual, _ = _small(tmp_path, with_sbd=False)
  with pytest.raises(FileNotFoundError, match="SegmentationClassAug"):
    _prepare(manual, tmp_path, config="aug")


def _damage(written):
  """Five different faults in the official train split; returns (file, reason) expected per id."""
  voc2012, train = written["voc2012"], written["ids"]["train"]

  def mask(i):
    return os.path.join(voc2012, "SegmentationClass", i + ".png")

  os.remove(mask(train[0]))  # image without mask
  Image.open(mask(train[1])).resize((7, 5)).save(mask(train[1]))  # mask of another size
  bad_value = np.array(Image.open(mask(train[2])))
  bad_value[0, 0] = 77  # not a VOC class and not void
  Image.fromarray(bad_value).save(mask(train[2]))
  with open(written["images"][train[3]], "rb") as f:
    data = f.read()
  with open(written["images"][train[3]], "wb") as f:
    f.write(data[:len(data) // 2])  # truncated JPEG
  Image.fromarray(written["masks"][train[4]]).convert("RGB").save(mask(train[4]))  # RGB mask
  return {
      train[0]: (mask(train[0]), "file not found"),
      train[1]: (mask(train[1]), "mask is 7x5"),
      train[2]: (mask(train[2]), "label values [77]"),
      train[3]: (written["images"][train[3]], "cannot decode"),
      train[4]: (mask(train[4]), "mode RGB; expected a palette (P)"),
  }


def test_bad_records_are_reported_together_or_skipped(tmp_path):
  manual = str(tmp_path / "manual")
  written = fake_voc.write(manual, num_train=7, num_val=2, with_sbd=False)
  expected = _damage(written)
  with pytest.raises(folder.BadRecordsError) as error:
    _prepare(manual, tmp_path)
  message = str(error.value)
  assert "5 of 7 records of split 'train'" in message
  for i, (path, reason) in expected.items():
    line = next(line for line in message.splitlines() if line.strip().startswith(i + ":"))
    assert path in line and reason in line, line
  assert "skip_bad_records" in message

  builder = folder.prepare(voc.Builder, data_dir=str(tmp_path / "tfds_skip"), manual_dir=manual,
                           config="voc_only", skip_bad_records=True)
  assert builder.info.metadata["skipped_records"] == {"train": 5}
  kept = {ex["id"].decode() for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
  assert kept == set(written["ids"]["train"]) - set(expected)
  # The count is saved with the dataset, not only held by this builder object.
  reloaded = voc.Builder(data_dir=str(tmp_path / "tfds_skip"), config="voc_only")
  assert reloaded.info.metadata["skipped_records"] == {"train": 5}


def test_missing_aug_mask_is_a_bad_record(tmp_path):
  manual = str(tmp_path / "manual")
  written = fake_voc.write(manual, num_train=2, num_val=1, num_aug_only=1)
  missing = os.path.join(written["voc2012"], "SegmentationClassAug", written["ids"]["aug_train"][0] + ".png")
  os.remove(missing)
  with pytest.raises(folder.BadRecordsError, match=f"file not found: {missing}"):
    _prepare(manual, tmp_path, config="aug")


def test_bad_records_of_every_split_come_in_one_error(tmp_path):
  manual = str(tmp_path / "manual")
  written = fake_voc.write(manual, num_train=7, num_val=3, with_sbd=False)
  _damage(written)
  val_id = written["ids"]["val"][1]
  os.remove(os.path.join(written["voc2012"], "SegmentationClass", val_id + ".png"))
  with pytest.raises(folder.BadRecordsError) as error:
    _prepare(manual, tmp_path)
  message = str(error.value)
  assert "6 unusable records" in message
  assert "5 of 7 records of split 'train'" in message and "1 of 3 records of split 'val'" in message
  assert f"{val_id}: file not found" in message
  assert not os.path.exists(os.path.join(str(tmp_path), "tfds", "incseg_voc", "voc_only", "1.0.0"))
