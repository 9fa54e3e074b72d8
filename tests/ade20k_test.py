"""Tests of the ADE20K (ADEChallengeData2016) builder on a fake tree in the official layout."""

import io
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from incseg_jax.data import ade20k
from incseg_jax.data import folder
from incseg_jax.testing import fake_ade20k


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The fake tree and its build, read back as numpy (image bytes kept raw too)."""
  manual = str(tmp_path_factory.mktemp("ade_manual"))
  data_dir = str(tmp_path_factory.mktemp("ade_tfds"))
  written = fake_ade20k.write(manual)
  config = ade20k.resolve_config(manual, "auto")
  builder = folder.prepare(ade20k.Builder, data_dir=data_dir, manual_dir=manual, config=config)
  splits = {}
  for split in ("train", "val"):
    raw = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    decoded = builder.as_dataset(split=split, shuffle_files=False)
    splits[split] = {ex["id"].decode(): dict(dec, image_bytes=ex["image"])
                     for ex, dec in zip(tfds.as_numpy(raw), tfds.as_numpy(decoded))}
  return {"written": written, **splits}


def test_class_names_and_palette():
  # The constants every dataset module has are checked in real_datasets_common_test.py.
  names = ade20k.CLASS_NAMES
  assert len(set(names)) == 151
  assert (names[0], names[1], names[2], names[3], names[150]) == ("other", "wall", "building", "sky", "flag")
  assert (names[13], names[45], names[90]) == ("person", "chest of drawers", "television receiver")
  assert len({tuple(c) for c in ade20k.PALETTE.tolist()}) == 151


def test_images_are_stored_losslessly(built):
  # Ids, masks, sizes and pixel statistics are checked for every dataset in real_datasets_common_test.py.
  written = built["written"]
  for split in ("train", "val"):
    for i, ex in built[split].items():
      with Image.open(written["images"][i]) as reference:
        mode, pixels = reference.mode, np.asarray(reference.convert("RGB"))
      if mode == "RGB":  # JPEG bytes are kept and decode exactly like the file
        with open(written["images"][i], "rb") as f:
          assert ex["image_bytes"] == f.read()
        stored = tf.io.decode_jpeg(ex["image_bytes"], channels=3, dct_method="INTEGER_ACCURATE").numpy()
      else:  # grayscale JPEGs are stored as the RGB pixels PIL decodes (lossless PNG)
        stored = np.asarray(Image.open(io.BytesIO(ex["image_bytes"])))
      np.testing.assert_array_equal(stored, pixels, err_msg=i)
      assert ex["image"].shape == stored.shape


def test_label_values_are_kept(built):
  first = built["train"][built["written"]["ids"]["train"][0]]
  mask = first["label"][..., 0]
  assert set(np.unique(mask).tolist()) == {0, 1, 2, 3, 150}  # 0 stays "other", 150 is not clipped
  assert first["classes"].tolist() == [1, 2, 3, 150]
  assert first["pixel_counts"][0] == (mask == 0).sum() > 0
  with Image.open(built["written"]["images"][built["written"]["ids"]["train"][-1]]) as last:
    assert last.mode == "L"  # the fake holds a grayscale JPEG like the real training set


def test_layouts(tmp_path):
  written = fake_ade20k.write(str(tmp_path), num_train=1, num_val=1, num_gray=0)
  for where in (str(tmp_path), written["root"]):
    assert ade20k.find_root(where) == written["root"]
  records = ade20k.Builder(data_dir=str(tmp_path / "tfds")).list_records(written["root"])
  assert [r.id for r in records["val"]] == written["ids"]["val"]
  assert records["val"][0] == folder.Record(written["ids"]["val"][0], written["images"][written["ids"]["val"][0]],
                                            written["annotations"][written["ids"]["val"][0]])


def _prepare(manual, tmp_path, name="tfds", **kwargs):
  return folder.prepare(ade20k.Builder, data_dir=str(tmp_path / name), manual_dir=manual, config="default",
                        **kwargs)


def test_missing_split_directory(tmp_path):
  manual = str(tmp_path / "manual")
  written = fake_ade20k.write(manual, num_train=1, num_val=1, num_gray=0)
  missing = os.path.join(written["root"], "annotations", "validation")
  shutil.rmtree(missing)
  with pytest.raises(FileNotFoundError, match=f"directory {missing} not found"):
    _prepare(manual, tmp_path)


def test_empty_split(tmp_path):
  manual = str(tmp_path / "manual")
  written = fake_ade20k.write(manual, num_train=1, num_val=1, num_gray=0)
  os.remove(written["images"][written["ids"]["val"][0]])
  os.remove(written["annotations"][written["ids"]["val"][0]])
  with pytest.raises(ValueError, match="no .jpg images in .*validation"):
    _prepare(manual, tmp_path)


def test_bad_records_are_reported_together_or_skipped(tmp_path):
  manual = str(tmp_path / "manual")
  written = fake_ade20k.write(manual, num_train=6, num_val=1, num_gray=0)
  train = written["ids"]["train"]
  image, annotation = written["images"], written["annotations"]
  os.remove(annotation[train[0]])  # image without annotation
  os.remove(image[train[1]])  # annotation without image
  Image.fromarray(written["masks"][train[2]][:-3]).save(annotation[train[2]])  # another size
  bad = written["masks"][train[3]].copy()
  bad[0, 0] = 200  # beyond the 150 classes
  Image.fromarray(bad).save(annotation[train[3]])
  with open(image[train[4]], "r+b") as f:
    f.truncate(100)  # truncated JPEG
  expected = {
      train[0]: f"no annotation {annotation[train[0]]}",
      train[1]: f"file not found: {image[train[1]]}",
      train[2]: f"{annotation[train[2]]}: mask is",
      train[3]: f"{annotation[train[3]]}: label values [200]",
      train[4]: f"cannot decode {image[train[4]]}",
  }
  with pytest.raises(folder.BadRecordsError) as error:
    _prepare(manual, tmp_path)
  message = str(error.value)
  assert "5 of 6 records of split 'train'" in message
  for i, reason in expected.items():
    assert f"{i}: {reason}" in message, (i, message)

  builder = _prepare(manual, tmp_path, name="tfds_skip", skip_bad_records=True)
  assert builder.info.metadata["skipped_records"] == {"train": 5}
  assert [ex["id"].decode() for ex in tfds.as_numpy(builder.as_dataset(split="train"))] == [train[5]]
