"""ADE20K (MIT SceneParsing, ADEChallengeData2016: 150 classes) as a tfds builder.

Read from the directory the publishers ship (tfds `manual_dir`); see
`Builder.MANUAL_DOWNLOAD_INSTRUCTIONS`. Annotations hold 0 for "other"
(unlabelled) pixels and 1..150 for the classes of objectInfo150; the ids are
stored unchanged, so label 0 is the void/background class of the incremental
protocols (VOID_IS_ZERO) and 255 never occurs in the data.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from incseg_jax.data import folder
from incseg_jax.data import voc

NAME = "ade20k"
NUM_CLASSES = 151  # 0 "other" + 150 classes
IGNORE_LABEL = 255
# Index = class id. 1..150: the first name of each entry of the official
# objectInfo150.csv (the short names every ADE20K codebase uses).
CLASS_NAMES: tuple[str, ...] = (
    "other",
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock",
    "flag",
)
# Distinct colours from the VOC bit-interleaving map (deterministic, 0 = black).
PALETTE: np.ndarray = voc.colormap(NUM_CLASSES)
VOID_IS_ZERO = True  # 0 is unlabelled "other", not a class learned like the others
TRAIN_SPLIT = "train"
EVAL_SPLIT = "val"

_ROOT = "ADEChallengeData2016"
_SPLIT_DIRS = {"train": "training", "val": "validation"}
_INDEX_MODES = ("L", "P")


def find_root(manual_dir: str) -> str:
  """ADEChallengeData2016, whether `manual_dir` is its parent or the directory itself.

  Raises:
    FileNotFoundError: neither place holds images/ and annotations/.
  """
  for candidate in (os.path.join(manual_dir, _ROOT), manual_dir):
    if os.path.isdir(os.path.join(candidate, "images")) or os.path.isdir(os.path.join(candidate, "annotations")):
      return candidate
  raise FileNotFoundError(f"ADE20K: directory {os.path.join(manual_dir, _ROOT)} not found (nor images/ and "
                          f"annotations/ directly in {manual_dir})")


def resolve_config(manual_dir: str, requested: str, *, data_dir: str | None = None) -> str:
  """The builder config to use: there is only "default" (see folder.single_config)."""
  del manual_dir, data_dir  # one config: nothing to inspect
  return folder.single_config("ADE20K", requested)


def _stems(directory: str, ext: str) -> dict[str, str]:
  """File stem -> path of the files in `directory` ending in `ext` (case-insensitive)."""
  return {os.path.splitext(f)[0]: os.path.join(directory, f)
          for f in os.listdir(directory) if f.lower().endswith(ext)}


class Builder(folder.FolderBuilder, skip_registration=True):
  """ADE20K SceneParsing (ADEChallengeData2016): 150 classes, 0 = other/unlabelled."""

  name = "incseg_ade20k"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: ADEChallengeData2016 training/validation."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="20,210 train / 2,000 val.")]
  DEFAULT_CONFIG_NAME = "default"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Point manual_dir at the directory holding ADEChallengeData2016/ (or at it
directly), as extracted from ADEChallengeData2016.zip:

  ADEChallengeData2016/
    images/training/<name>.jpg          20,210 images
    images/validation/<name>.jpg        2,000 images
    annotations/training/<name>.png     single-channel PNGs: 0 = other, 1..150 = classes
    annotations/validation/<name>.png

Images are matched to annotations by file name; splits: train (training), val
(validation).
"""
  NUM_CLASSES = NUM_CLASSES
  IGNORE_LABEL = IGNORE_LABEL
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE

  def list_records(self, root: str) -> dict[str, list[folder.Record]]:
    base = find_root(root)
    return {split: _split_records(base, sub) for split, sub in _SPLIT_DIRS.items()}

  def read_label(self, path: str) -> np.ndarray:
    if not os.path.isfile(path):
      raise folder.BadRecord(f"no annotation {path}")
    image = folder.open_image(path)
    if image.mode not in _INDEX_MODES:
      raise folder.BadRecord(f"{path}: annotation has mode {image.mode}; expected a single-channel (L) PNG "
                             f"of class ids 0..150")
    return np.asarray(image)


def _split_records(base: str, sub: str) -> list[folder.Record]:
  """Records of one split, sorted by name; unmatched files stay in so they are reported."""
  image_dir = folder.require_dir(os.path.join(base, "images", sub), f"ADE20K {sub} images")
  label_dir = folder.require_dir(os.path.join(base, "annotations", sub), f"ADE20K {sub} annotations")
  images, labels = _stems(image_dir, ".jpg"), _stems(label_dir, ".png")
  if not images and not labels:
    raise ValueError(f"ADE20K: no .jpg images in {image_dir} and no .png annotations in {label_dir}")
  # A missing file gets the path it should have: the base class reports it by name.
  return [folder.Record(stem, images.get(stem, os.path.join(image_dir, stem + ".jpg")),
                        labels.get(stem, os.path.join(label_dir, stem + ".png")))
          for stem in sorted(set(images) | set(labels))]
