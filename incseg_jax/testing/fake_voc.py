"""Writes a tiny fake Pascal VOC 2012 (+ SBD) tree in the publishers' layout and formats.

The tree holds real JPEGs, palette PNG masks coloured with the VOC palette in
`SegmentationClass` and single-channel PNGs in `SegmentationClassAug`, so the
`incseg_voc` builder reads it exactly like the real data. Everything is
deterministic from `seed`. Masks are a few rectangles of random classes with a
1-px void (255) border, on background 0; image sizes vary between 24 and 48 px.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from incseg_jax.data import voc

_SIZE_RANGE = (24, 49)  # exclusive upper bound, per side


def random_mask(rng: np.random.Generator, height: int, width: int, num_classes: int,
                border: int | None = 255) -> np.ndarray:
  """Background 0 with 1-4 filled rectangles of random classes 1..num_classes-1.

  Args:
    rng: randomness.
    height: mask height.
    width: mask width.
    num_classes: class ids are drawn from 1..num_classes-1.
    border: value of each rectangle's 1-px outline (VOC's void border), or None.

  Returns:
    uint8 (height, width).
  """
  mask = np.zeros((height, width), np.uint8)
  for _ in range(int(rng.integers(1, 5))):
    h, w = int(rng.integers(4, height // 2 + 1)), int(rng.integers(4, width // 2 + 1))
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    mask[y:y + h, x:x + w] = int(rng.integers(1, num_classes))
    if border is not None:
      inner = mask[y + 1:y + h - 1, x + 1:x + w - 1].copy()
      mask[y:y + h, x:x + w] = border
      mask[y + 1:y + h - 1, x + 1:x + w - 1] = inner
  return mask


def random_image(rng: np.random.Generator, mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """Noisy RGB image whose regions are tinted by the mask's class colours."""
  colours = palette[np.minimum(mask, len(palette) - 1)].astype(np.int16)
  noise = rng.integers(-40, 41, mask.shape + (3,), dtype=np.int16)
  return np.clip(colours // 2 + 64 + noise, 0, 255).astype(np.uint8)


def random_size(rng: np.random.Generator) -> tuple[int, int]:
  return int(rng.integers(*_SIZE_RANGE)), int(rng.integers(*_SIZE_RANGE))


def _write_list(path: str, lines: list[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("".join(line + "\n" for line in lines))


def _write_palette_png(path: str, mask: np.ndarray) -> None:
  image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
  image.putpalette(voc.colormap(256).ravel().tolist())
  image.save(path)


def write(root: str, *, num_train: int = 5, num_val: int = 4, num_aug_only: int = 3, with_sbd: bool = True,
          val_in_aug: int = 1, aug_list_format: str = "two_column", aug_list_at: str = "ImageSets",
          aug_list_name: str = "train_aug.txt", seed: int = 0) -> dict:
  """Writes `root/VOCdevkit/VOC2012/...` and returns what was written.

  Args:
    root: directory to write into (the tfds manual_dir).
    num_train: ids of the official train.txt.
    num_val: ids of the official val.txt.
    num_aug_only: extra SBD-only train ids (image + SegmentationClassAug mask
      only); none without SBD.
    with_sbd: also write SegmentationClassAug and train_aug.txt.
    val_in_aug: how many val ids the train_aug list also holds (the builder must
      drop them; the real list has none).
    aug_list_format: "two_column" (`/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`)
      or "ids".
    aug_list_at: where train_aug.txt goes: "ImageSets" (ImageSets/Segmentation),
      "voc2012" (VOC2012/), "splits" (VOC2012/splits/, MiB's layout), "root" (`root`/)
      or "root_splits" (`root`/splits/).
    aug_list_name: its file name ("trainaug.txt" is DeepLab's).
    seed: everything is deterministic from it.

  Returns:
    dict with "voc2012" (path), "ids" ({"train", "val", "train_aug" (as listed),
    "aug_train" (train_aug minus val)}), "masks" (id -> SegmentationClass mask),
    "aug_masks" (id -> SegmentationClassAug mask, drawn independently of "masks"
    so tests can tell which folder was read), "images" (id -> jpg path) and
    "train_aug_list" (path or None).
  """
  rng = np.random.default_rng(seed)
  voc2012 = os.path.join(root, "VOCdevkit", "VOC2012")
  dirs = {d: os.path.join(voc2012, d) for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug")}
  for name, path in dirs.items():
    if with_sbd or name != "SegmentationClassAug":
      os.makedirs(path, exist_ok=True)
  train = [f"2008_{i:06d}" for i in range(num_train)]
  val = [f"2009_{i:06d}" for i in range(num_val)]
  aug_only = [f"2010_{i:06d}" for i in range(num_aug_only if with_sbd else 0)]
  sizes = {i: random_size(rng) for i in train + val + aug_only}
  masks, aug_masks, images = {}, {}, {}
  for i, (h, w) in sizes.items():
    if i not in aug_only:
      masks[i] = random_mask(rng, h, w, voc.NUM_CLASSES)
      _write_palette_png(os.path.join(dirs["SegmentationClass"], i + ".png"), masks[i])
    if with_sbd and i not in val[:num_val - val_in_aug]:
      aug_masks[i] = random_mask(rng, h, w, voc.NUM_CLASSES)
      Image.fromarray(aug_masks[i]).save(os.path.join(dirs["SegmentationClassAug"], i + ".png"))
    images[i] = os.path.join(dirs["JPEGImages"], i + ".jpg")
    Image.fromarray(random_image(rng, masks.get(i, aug_masks.get(i)), voc.colormap(256))).save(
        images[i], quality=90)
  sets = os.path.join(voc2012, "ImageSets", "Segmentation")
  _write_list(os.path.join(sets, "train.txt"), train)
  _write_list(os.path.join(sets, "val.txt"), val)
  train_aug = sorted(train + aug_only + val[num_val - val_in_aug:])
  aug_list = None
  if with_sbd:
    places = {"ImageSets": sets, "voc2012": voc2012, "root": root, "splits": os.path.join(voc2012, "splits"),
              "root_splits": os.path.join(root, "splits")}
    aug_list = os.path.join(places[aug_list_at], aug_list_name)
    lines = (train_aug if aug_list_format == "ids" else
             [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in train_aug])
    _write_list(aug_list, lines)
  return {
      "voc2012": voc2012,
      "ids": {"train": train, "val": val, "train_aug": train_aug,
              "aug_train": [i for i in train_aug if i not in val]},
      "masks": masks,
      "aug_masks": aug_masks,
      "images": images,
      "train_aug_list": aug_list,
  }
