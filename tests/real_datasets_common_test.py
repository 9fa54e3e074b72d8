"""What every real dataset (VOC, ADE20K, Cityscapes, MSRC-v2) does alike, on fake trees in the publishers' layouts.

Each dataset's own test file covers what is particular to it: its class table, annotation format, tree layouts
and the faults its reader reports.
"""

import importlib
import re
import types

import numpy as np
import pytest

from incseg_jax import tasks
from incseg_jax.data import folder
from incseg_jax.data import registry
from incseg_jax.testing import fake_ade20k
from incseg_jax.testing import fake_cityscapes
from incseg_jax.testing import fake_msrc
from incseg_jax.testing import fake_voc

DATASETS = ("voc", "ade20k", "cityscapes", "msrc")
# name -> (classes with background/void, label 0 is void, evaluation split)
EXPECTED = {"voc": (21, False, "val"), "ade20k": (151, True, "val"), "cityscapes": (20, True, "val"),
            "msrc": (21, False, "test")}
# Datasets with a single builder config (VOC has "aug" and "voc_only": voc_test.py).
SINGLE_CONFIG = ("ade20k", "cityscapes", "msrc")


def _module(name):
  return importlib.import_module(f"incseg_jax.data.{name}")


@pytest.mark.parametrize("name", DATASETS)
def test_module_interface(name):
  module = _module(name)
  num_classes, void_is_zero, eval_split = EXPECTED[name]
  assert module.NAME == name and module.NUM_CLASSES == num_classes == len(module.CLASS_NAMES)
  assert module.IGNORE_LABEL == 255 and module.VOID_IS_ZERO is void_is_zero
  assert (module.TRAIN_SPLIT, module.EVAL_SPLIT) == ("train", eval_split)
  assert module.PALETTE.shape == (num_classes, 3) and module.PALETTE.dtype == np.uint8
  assert module.Builder.name == f"incseg_{name}" and module.Builder.NUM_CLASSES == num_classes
  assert module.Builder.CLASS_NAMES == module.CLASS_NAMES
  # The registry's metadata is this class table, known without any data.
  meta = registry.meta(name)
  assert (meta.name, meta.num_classes, meta.ignore_label, meta.void_is_zero) == (name, num_classes, 255, void_is_zero)
  assert meta.class_names == module.CLASS_NAMES and np.array_equal(meta.palette, module.PALETTE)
  assert set(meta.named_orders) == ({"ilt_frequency"} if name == "voc" else set())
  assert registry.num_classes(name) == num_classes


@pytest.mark.parametrize("requested", ["", "auto", "default", " Auto ", None])
@pytest.mark.parametrize("name", SINGLE_CONFIG)
def test_resolve_config_of_a_single_config_dataset(name, requested):
  resolve = _module(name).resolve_config
  assert resolve("/nowhere", requested, data_dir="/tmp") == resolve("", requested) == "default"


@pytest.mark.parametrize("name", SINGLE_CONFIG)
def test_resolve_config_rejects_unknown(name):
  with pytest.raises(ValueError, match=re.escape("unknown builder config 'coarse'; valid: 'default'")):
    _module(name).resolve_config("/nowhere", "coarse")


# name -> (builder config, what the error says is missing from manual_dir)
MISSING_ROOT = {"voc": ("voc_only", "directory VOC2012 not found"),
                "ade20k": ("default", "directory {manual}/ADEChallengeData2016 not found"),
                "cityscapes": ("default", "directory {manual}/leftImg8bit/train not found"),
                "msrc": ("default", f"directory {{manual}}/{fake_msrc.DIR_NAME} not found")}


@pytest.mark.parametrize("name", DATASETS)
def test_manual_dir_without_the_dataset(tmp_path, name):
  config, fragment = MISSING_ROOT[name]
  manual = tmp_path / "elsewhere"
  manual.mkdir()
  (manual / "README").write_text("not a dataset")  # tfds rejects an empty manual_dir itself
  with pytest.raises(FileNotFoundError, match=re.escape(fragment.format(manual=manual))):
    folder.prepare(_module(name).Builder, data_dir=str(tmp_path / "tfds"), manual_dir=str(manual), config=config)


def read_split(builder, split: str) -> dict[str, dict]:
  """id -> example (numpy) of one split."""
  return {ex["id"].decode(): ex for ex in builder.as_dataset(split=split).as_numpy_iterator()}


def _write_fake(name, builder_config, root):
  """Writes the default fake tree of `name`; returns split -> id -> the label mask its build must hold."""
  if name == "voc":
    written = fake_voc.write(root)
    if builder_config == "voc_only":
      return {split: {i: written["masks"][i] for i in written["ids"][split]} for split in ("train", "val")}
    # "aug" trains on SegmentationClassAug (train_aug less val) and evaluates on SegmentationClass.
    return {"train": {i: written["aug_masks"][i] for i in written["ids"]["aug_train"]},
            "val": {i: written["masks"][i] for i in written["ids"]["val"]}}
  writer = {"ade20k": fake_ade20k.write, "cityscapes": fake_cityscapes.write, "msrc": fake_msrc.write}[name]
  written = writer(root, seed=0)
  return {split: {i: written["masks"][i] for i in ids} for split, ids in written["ids"].items()}


# (dataset, builder config): VOC's two builds read different lists and masks.
BUILDS = [("voc", "aug"), ("voc", "voc_only"), ("ade20k", "auto"), ("cityscapes", "auto"), ("msrc", "auto")]


@pytest.fixture(scope="module", params=BUILDS, ids=[f"{name}-{config}" for name, config in BUILDS])
def built(request, tmp_path_factory):
  """A dataset built through the registry from its default fake tree, read back as numpy."""
  name, builder_config = request.param
  root = str(tmp_path_factory.mktemp(f"{name}_raw"))
  masks = _write_fake(name, builder_config, root)
  dataset_cfg = types.SimpleNamespace(name=name, data_dir=str(tmp_path_factory.mktemp(f"{name}_tfds")),
                                      manual_dir=root, builder_config=builder_config, skip_bad_records=False)
  builder, _ = registry.load(dataset_cfg)
  examples = {split: read_split(builder, split) for split in masks}
  return types.SimpleNamespace(module=_module(name), builder=builder, masks=masks, examples=examples)


def test_splits_masks_sizes_and_stats(built):
  module = built.module
  assert set(built.builder.info.splits.keys()) == {module.TRAIN_SPLIT, module.EVAL_SPLIT} == set(built.masks)
  for split, masks in built.masks.items():
    assert sorted(built.examples[split]) == sorted(masks)
    for i, ex in built.examples[split].items():
      label = ex["label"][..., 0]
      np.testing.assert_array_equal(label, masks[i], err_msg=i)
      assert ex["size"].tolist() == list(label.shape)
      counts = np.bincount(label.ravel(), minlength=256)[:module.NUM_CLASSES]
      np.testing.assert_array_equal(ex["pixel_counts"], counts, err_msg=i)
      first = 0 if getattr(module, "ZERO_IS_CLASS", False) else 1  # MSRC's 0 (building) is a real class
      assert ex["classes"].tolist() == (np.flatnonzero(counts[first:]) + first).tolist()


def test_frequency_order_from_stored_counts(built):
  num_fg = built.module.NUM_CLASSES - 1
  stored = sum(ex["pixel_counts"] for ex in built.examples["train"].values())
  order = tasks.resolve_class_order("frequency", num_fg, pixel_counts=stored)
  counts = sum(np.bincount(mask.ravel(), minlength=256) for mask in built.masks["train"].values())
  assert order == tuple(sorted(range(1, num_fg + 1), key=lambda c: (-counts[c], c)))  # ties: smaller id first
  assert order != tuple(range(1, num_fg + 1))  # the fake data is not trivially in id order


def test_metadata(built):
  metadata = built.builder.info.metadata
  assert metadata["class_names"] == list(built.module.CLASS_NAMES)
  assert np.array_equal(metadata["palette"], built.module.PALETTE)
  assert metadata["skipped_records"] == {}
