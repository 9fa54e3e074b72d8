"""Writes a tiny fake ADE20K (ADEChallengeData2016) tree in the publishers' layout and formats.

JPEG images and single-channel ("L") PNG annotations (0 = other, 1..150 =
classes), matched by file name, deterministic from `seed`; sizes vary between
24 and 48 px. The first training mask always holds classes 1, 2, 3 and 150 so
the extreme ids are exercised, and `num_gray` training images are grayscale
JPEGs like a few of the real ones.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from incseg_jax.data import ade20k
from incseg_jax.testing import fake_voc

_SPLIT_DIRS = {"train": "training", "val": "validation"}
_PREFIX = {"train": "ADE_train", "val": "ADE_val"}


def _forced_mask(height: int, width: int) -> np.ndarray:
  """Quadrants of classes 1, 2, 3 and 150 around a band of 0 ("other")."""
  mask = np.zeros((height, width), np.uint8)
  h, w = height // 2, width // 2
  mask[:h - 1, :w - 1], mask[:h - 1, w + 1:] = 1, 2
  mask[h + 1:, :w - 1], mask[h + 1:, w + 1:] = 3, 150
  return mask


def write(root: str, *, num_train: int = 6, num_val: int = 4, num_gray: int = 1, seed: int = 0) -> dict:
  """Writes `root/ADEChallengeData2016/...` and returns what was written.

  Args:
    root: directory to write into (the tfds manual_dir).
    num_train: training images.
    num_val: validation images.
    num_gray: how many training images are saved as grayscale JPEGs.
    seed: everything is deterministic from it.

  Returns:
    dict with "root" (the ADEChallengeData2016 path), "ids" ({"train", "val"},
    sorted), "masks" (id -> annotation array), "images" (id -> jpg path) and
    "annotations" (id -> png path).
  """
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "ADEChallengeData2016")
  ids, masks, images, annotations = {}, {}, {}, {}
  palette = ade20k.PALETTE
  for split, count in (("train", num_train), ("val", num_val)):
    image_dir = os.path.join(base, "images", _SPLIT_DIRS[split])
    label_dir = os.path.join(base, "annotations", _SPLIT_DIRS[split])
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    ids[split] = [f"{_PREFIX[split]}_{i + 1:08d}" for i in range(count)]
    for k, i in enumerate(ids[split]):
      h, w = fake_voc.random_size(rng)
      forced = split == "train" and k == 0
      masks[i] = _forced_mask(h, w) if forced else fake_voc.random_mask(rng, h, w, ade20k.NUM_CLASSES, None)
      image = Image.fromarray(fake_voc.random_image(rng, masks[i], palette))
      if split == "train" and count - num_gray <= k:
        image = image.convert("L")
      images[i] = os.path.join(image_dir, i + ".jpg")
      annotations[i] = os.path.join(label_dir, i + ".png")
      image.save(images[i], quality=90)
      Image.fromarray(masks[i]).save(annotations[i])
  return {"root": base, "ids": ids, "masks": masks, "images": images, "annotations": annotations}
