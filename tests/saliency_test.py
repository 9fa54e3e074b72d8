"""Saliency maps (SSUL's unknown class): shapes' approximate maps, their cache, batches, bad input."""

import dataclasses
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from incseg_jax import experiment as experiment_lib
from incseg_jax import methods
from incseg_jax import saliency
from incseg_jax import validate
from incseg_jax.data import pipeline
from incseg_jax.data import shapes
from incseg_jax.data import shapes_saliency
from incseg_jax.tools import shapes_saliency as shapes_saliency_tool

_png = lambda x: tf.io.encode_png(x).numpy()


@pytest.fixture(scope="module")
def tiny_train(shapes_data_dir):
  """The tiny shapes build's training split, encoded."""
  return pipeline.load_split(shapes.build(data_dir=shapes_data_dir, config="tiny"), "train")


def _dataset_cfg(data_dir, **overrides):
  return ml_collections.ConfigDict(dict(dict(name="shapes", builder_config="tiny", train_split="train",
                                             data_dir=data_dir, saliency_dir=""), **overrides))


# ----------------------------------------------------------------------------------------
# shapes' approximate maps and their cache
# ----------------------------------------------------------------------------------------

def test_shapes_maps_are_deterministic_close_to_the_objects_and_not_exact(tiny_train):
  maps = shapes_saliency.encoded_maps(tiny_train.labels, tiny_train.ids)
  assert maps == shapes_saliency.encoded_maps(tiny_train.labels, tiny_train.ids)  # byte for byte
  ious, exact = [], 0
  for label_bytes, map_bytes in zip(tiny_train.labels, maps):
    m = tf.io.decode_png(map_bytes).numpy()[..., 0]
    assert set(np.unique(m)) <= {0, 255}
    objects, salient = tf.io.decode_png(label_bytes).numpy()[..., 0] != 0, m > 0
    ious.append((objects & salient).sum() / max((objects | salient).sum(), 1))
    exact += np.array_equal(objects, salient)
  assert np.mean(ious) > 0.8, np.mean(ious)
  assert exact < len(maps) // 10  # blur, threshold and the deliberate errors make almost every map differ
  assert np.mean(np.asarray(ious) < 0.75) > 0.03  # some maps miss an object or add a blob


def test_the_cache_is_built_once_reused_and_rebuilt_when_missing(tiny_train, tmp_path):
  cfg = _dataset_cfg(str(tmp_path))
  lines = []
  ids, labels = tiny_train.ids[:12], tiny_train.labels[:12]
  path = shapes_saliency.ensure_cache(str(tmp_path), "tiny", "train", labels, ids, log=lines.append)
  assert path == shapes_saliency.cache_dir(str(tmp_path), "tiny", "train") and path.startswith(str(tmp_path))
  assert len(lines) == 1 and "building" in lines[0] and sorted(os.listdir(path)) == [f"{i}.png" for i in ids]
  assert not [n for n in os.listdir(os.path.dirname(path)) if ".tmp." in n]  # the temporary folder was renamed
  stamp = os.stat(os.path.join(path, f"{ids[0]}.png")).st_mtime_ns
  assert shapes_saliency.ensure_cache(str(tmp_path), "tiny", "train", labels, ids, log=lines.append) == path
  assert len(lines) == 1 and os.stat(os.path.join(path, f"{ids[0]}.png")).st_mtime_ns == stamp  # reused
  # Through `saliency.load` (what `experiment.build` calls): the whole split, aligned with its ids.
  os.rename(path, path + ".old")
  loaded = saliency.load(cfg, tiny_train)
  assert os.path.isdir(path) and len(loaded) == len(tiny_train)
  k = 5
  with open(os.path.join(path, f"{tiny_train.ids[k]}.png"), "rb") as f:
    assert loaded[k] == f.read()


def test_the_command_writes_the_cached_maps(tiny_train, shapes_data_dir, tmp_path):
  n = shapes_saliency_tool.write(str(tmp_path / "out"), "tiny", "train", shapes_data_dir)
  assert n == len(tiny_train)
  expected = shapes_saliency.encoded_maps(tiny_train.labels[:3], tiny_train.ids[:3])
  for example_id, data in zip(tiny_train.ids[:3], expected):
    assert (tmp_path / "out" / f"{example_id}.png").read_bytes() == data


# ----------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------

def _input_cfg(crop=32, scale=(0.5, 1.5), flip=True):
  return ml_collections.ConfigDict(dict(batch_size=4, crop_size=crop, scale_min=scale[0], scale_max=scale[1],
                                        flip=flip, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))


def _blob_split(n=8, size=24):
  """Random images with asymmetric random label blobs (classes 1-3, void borders), and 255 * foreground maps."""
  rng = np.random.default_rng(3)
  images, labels, maps = [], [], []
  yy, xx = np.mgrid[:size, :size]
  for i in range(n):
    label = np.zeros((size, size), np.uint8)
    for c in (1, 2, 3):
      cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(2, 7))]
      label[(yy - cy) ** 2 + 2 * (xx - cx) ** 2 <= r * r] = c
    label[0, : size // 3] = 255
    images.append(_png(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
    labels.append(_png(label[..., None]))
    maps.append(_png(np.where((label > 0) & (label < 255), 255, 0).astype(np.uint8)[..., None]))
  split = pipeline.EncodedSplit(images=np.asarray(images, object), labels=np.asarray(labels, object),
                                classes=[np.array([1, 2, 3])] * n, pixel_counts=None, ids=[f"b{i}" for i in range(n)])
  return split, np.asarray(maps, object)


def test_saliency_is_augmented_exactly_like_the_label_and_changes_nothing_else():
  split, maps = _blob_split()
  lut = np.arange(256, dtype=np.uint8)
  kw = dict(seed=1, task_index=2, start_step=0, num_steps=6, ignore_label=255)
  plain = list(pipeline.train_batches(split, np.arange(8), lut, _input_cfg(), **kw))
  with_maps = list(pipeline.train_batches(split, np.arange(8), lut, _input_cfg(), saliency=maps, **kw))
  for a, b in zip(plain, with_maps):
    assert set(a) == {"image", "label"} and set(b) == {"image", "label", "saliency"}
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert b["saliency"].dtype == np.uint8 and b["saliency"].shape == b["label"].shape
    # Padding is void in the label and 0 in the map, as the label's own void pixels are.
    np.testing.assert_array_equal(b["saliency"], np.where((b["label"] > 0) & (b["label"] < 255), 255, 0))
  labels = np.stack([b["label"] for b in with_maps])
  assert (labels == 255).mean() > 0.05 and (labels > 0).mean() < 0.9  # padding, flips and scales did happen


def test_memory_and_replay_slots_carry_no_saliency():
  split, _ = _blob_split(n=6, size=8)
  ones = np.asarray([_png(np.full((8, 8, 1), 255, np.uint8))] * 6, object)
  lut = np.arange(256, dtype=np.uint8)
  cfg = _input_cfg(crop=8, scale=(1.0, 1.0), flip=False)
  kw = dict(seed=0, task_index=1, start_step=0, num_steps=3, ignore_label=255, saliency=ones)
  replay_images = np.asarray([_png(np.zeros((10, 12, 3), np.uint8))] * 2, object)
  for extra in (dict(memory=(np.array([4, 5]), np.array([0, 0]), lut[None]), num_memory=2),
                dict(replay=(replay_images, np.arange(2), np.array([1, 2], np.int32)), num_replay=2)):
    for b in pipeline.train_batches(split, np.arange(4), lut, cfg, **kw, **extra):
      assert (b["saliency"][:2] == 255).all() and (b["saliency"][2:] == 0).all()


def test_an_experiment_with_a_saliency_dir_carries_it_in_every_batch(smoke_config, shapes_data_dir, tmp_path):
  out = str(tmp_path / "maps")
  shapes_saliency_tool.write(out, "tiny", "train", shapes_data_dir)
  cfg = smoke_config("task=15-5")
  cfg.dataset.saliency_dir = out
  validate.config(cfg)
  exp = experiment_lib.build(cfg)
  assert len(exp.saliency) == len(exp.train_split)
  batch = next(exp.train_batches(exp.step(1), 0, 1))
  assert batch["saliency"].shape == batch["label"].shape and batch["saliency"].dtype == np.uint8
  assert set(np.unique(batch["saliency"])) <= {0, 255} and batch["saliency"].any()
  cfg.dataset.saliency_dir = ""
  plain = experiment_lib.build(cfg)
  assert plain.saliency is None and "saliency" not in next(plain.train_batches(plain.step(1), 0, 1))


def test_a_method_that_needs_saliency_gets_the_shapes_cache(smoke_config, monkeypatch):
  real_get = methods.get
  monkeypatch.setattr(methods, "get", lambda name: dataclasses.replace(real_get(name), needs_saliency=True))
  cfg = smoke_config("task=15-5")
  exp = experiment_lib.build(cfg)
  cache = shapes_saliency.cache_dir(cfg.dataset.data_dir, "tiny", "train")
  assert os.path.isdir(cache) and len(exp.saliency) == len(exp.train_split)
  with open(os.path.join(cache, f"{exp.train_split.ids[0]}.png"), "rb") as f:
    assert exp.saliency[0] == f.read()
  cfg.dataset.name = "voc"  # no maps built in: the folder must be given
  with pytest.raises(ValueError, match="pass --config.dataset.saliency_dir"):
    validate.config(cfg)


# ----------------------------------------------------------------------------------------
# bad input: named, at build time
# ----------------------------------------------------------------------------------------

def _folder(tmp_path, maps):
  path = tmp_path / "sal"
  path.mkdir()
  for name, data in maps.items():
    (path / f"{name}.png").write_bytes(data)
  return str(path)


def test_bad_folders_are_named(tmp_path):
  good = _png(np.zeros((6, 5, 1), np.uint8))
  ids, sizes = ["a", "b", "c"], np.array([[6, 5]] * 3)
  with pytest.raises(ValueError, match=r"config.dataset.saliency_dir.*nowhere is not a directory"):
    saliency.read_folder(str(tmp_path / "nowhere"), ids, sizes)
  directory = _folder(tmp_path, {"a": good})
  with pytest.raises(ValueError, match=r"2 of the 3 training images have no saliency map, e\.g\. .*b\.png"):
    saliency.read_folder(directory, ids, sizes)
  (tmp_path / "sal" / "b.png").write_bytes(_png(np.zeros((5, 6, 1), np.uint8)))
  (tmp_path / "sal" / "c.png").write_bytes(good)
  with pytest.raises(ValueError, match=r"b\.png is 5x6 \(height x width\), but its image is 6x5"):
    saliency.read_folder(directory, ids, sizes)
  (tmp_path / "sal" / "b.png").write_bytes(tf.io.encode_jpeg(np.zeros((6, 5, 1), np.uint8)).numpy())
  with pytest.raises(ValueError, match=r"b\.png is not a PNG file"):
    saliency.read_folder(directory, ids, sizes)
  (tmp_path / "sal" / "b.png").write_bytes(good[:-20])  # truncated: a valid header, a broken body
  with pytest.raises(ValueError, match=r"config.dataset.saliency_dir: .*b\.png is not a decodable PNG"):
    saliency.read_folder(directory, ids, sizes)
  (tmp_path / "sal" / "b.png").write_bytes(good)
  assert list(saliency.read_folder(directory, ids, sizes)) == [good] * 3


def test_a_bad_saliency_dir_fails_validation_and_the_build(smoke_config, tmp_path):
  cfg = smoke_config()
  cfg.dataset.saliency_dir = str(tmp_path / "missing")
  with pytest.raises(ValueError, match="config.dataset.saliency_dir=.*not an existing directory"):
    validate.config(cfg)
  with pytest.raises(ValueError, match="config.dataset.saliency_dir=.*is not a directory"):
    experiment_lib.build(cfg)
  (tmp_path / "file").write_text("x")
  cfg.dataset.saliency_dir = str(tmp_path / "file")
  with pytest.raises(ValueError, match="config.dataset.saliency_dir=.*a file, not a directory"):
    validate.config(cfg)
  (tmp_path / "empty").mkdir()
  cfg.dataset.saliency_dir = str(tmp_path / "empty")
  with pytest.raises(ValueError, match=r"config.dataset.saliency_dir=.*160 of the 160 training images .*"
                                       r"train_000000\.png is missing"):
    experiment_lib.build(cfg)
