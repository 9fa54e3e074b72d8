"""A tiny fake MSRC-v2 tree in Microsoft's layout, plus the TextonBoost split lists.

Ground truths are 24-bit colour BMPs. The writer derives the colours on its
own, from the fact that MSRC-v2's colours are the Pascal VOC bit-interleaved
colour map at indices 0..18 and 21..25 (MSRC-v2 dropped two of the original
classes), so a test compares the builder's hand-written colour table against
an independent source. Masks hold void, horse and mountain regions; the
expected class ids drop those three (ignore label) and number the other 21
MSRC classes 0..20 in dataset order.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

DIR_NAME = "MSRC_ObjCategImageDatabase_v2"
IGNORE_LABEL = 255
NUM_MSRC = 24  # void + 23 annotated classes, in dataset order
VOID, HORSE, MOUNTAIN = 0, 5, 8
_KEPT = tuple(k for k in range(1, NUM_MSRC) if k not in (HORSE, MOUNTAIN))
# TextonBoost list file -> number of images in it.
LISTS = {"Train.txt": 5, "Validation.txt": 2, "Test.txt": 4}


def voc_colour(index: int) -> tuple[int, int, int]:
  """Pascal VOC colour-map entry: the bits of `index` spread over R, G, B from the top bit."""
  rgb = [0, 0, 0]
  for bit in range(8):
    for channel in range(3):
      rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
  return tuple(rgb)


def msrc_colour(msrc_index: int) -> tuple[int, int, int]:
  """Colour of MSRC-v2 entry 0 (void) .. 23 (boat)."""
  return voc_colour(msrc_index if msrc_index <= 18 else msrc_index + 2)


def expected_ids() -> np.ndarray:
  """uint8 (24,) MSRC entry -> our class id (IGNORE_LABEL for void, horse, mountain)."""
  lut = np.full(NUM_MSRC, IGNORE_LABEL, np.uint8)
  lut[list(_KEPT)] = np.arange(len(_KEPT))
  return lut


def _msrc_mask(rng: np.random.Generator, shape: tuple[int, int], weights: np.ndarray) -> np.ndarray:
  """MSRC entries (H, W): random base region, 2-5 rectangles, a void outline around each."""
  height, width = shape
  mask = np.full(shape, rng.choice(NUM_MSRC, p=weights), np.uint8)
  for _ in range(int(rng.integers(2, 6))):
    y0, x0 = rng.integers(0, height - 6), rng.integers(0, width - 6)
    h, w = rng.integers(5, height // 2 + 1), rng.integers(5, width // 2 + 1)
    mask[y0:y0 + h, x0:x0 + w] = VOID  # like MSRC's void boundaries between objects
    mask[y0 + 1:y0 + h - 1, x0 + 1:x0 + w - 1] = rng.choice(NUM_MSRC, p=weights)
  return mask


def _colourise(mask: np.ndarray) -> np.ndarray:
  palette = np.array([msrc_colour(k) for k in range(NUM_MSRC)], np.uint8)
  return palette[mask]


def _write_bmp(path: str, array: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format="BMP")


def write(root: str, *, seed: int = 0, nested: bool = True) -> dict:
  """Writes the tree under `root`, a valid manual_dir.

  Args:
    root: directory to write into (created).
    seed: everything is drawn from `np.random.default_rng(seed)`.
    nested: write into `root/MSRC_ObjCategImageDatabase_v2` (as unzipped);
      False writes Images/, GroundTruth/ and the lists directly into `root`.

  Returns:
    dict with "dir" (the MSRC_ObjCategImageDatabase_v2 directory), "ids"
    ({"train": Train + Validation ids, "test": Test ids}, in list order),
    "lists" (list file name -> its path), and per id "images" (uint8
    (H, W, 3)), "masks" (expected class ids), "msrc" (MSRC entries 0..23),
    "image_paths" and "label_paths". One more image is written that no list
    names.
  """
  rng = np.random.default_rng(seed)
  base = os.path.join(root, DIR_NAME) if nested else root
  weights = rng.permutation(np.arange(1, NUM_MSRC + 1, dtype=np.float64)) ** 2
  weights[[HORSE, MOUNTAIN]] = weights.max()  # the excluded classes occur for sure
  weights /= weights.sum()
  out = {"dir": base, "ids": {"train": [], "test": []}, "lists": {}, "images": {}, "masks": {},
         "msrc": {}, "image_paths": {}, "label_paths": {}}
  names_by_list = {}
  counter = 0
  for list_name, count in list(LISTS.items()) + [("unlisted", 1)]:
    names_by_list[list_name] = []
    for _ in range(count):
      counter += 1
      stem = f"{counter % 7 + 1}_{counter}_s"  # MSRC names: <category>_<index>_s
      shape = (int(rng.integers(20, 37)), int(rng.integers(24, 45)))
      msrc = _msrc_mask(rng, shape, weights)
      image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
      out["image_paths"][stem] = os.path.join(base, "Images", stem + ".bmp")
      out["label_paths"][stem] = os.path.join(base, "GroundTruth", stem + "_GT.bmp")
      _write_bmp(out["image_paths"][stem], image)
      _write_bmp(out["label_paths"][stem], _colourise(msrc))
      out["images"][stem], out["msrc"][stem] = image, msrc
      out["masks"][stem] = expected_ids()[msrc]
      names_by_list[list_name].append(stem)
  for list_name in LISTS:
    out["lists"][list_name] = os.path.join(base, list_name)
    with open(out["lists"][list_name], "w") as f:
      f.write("".join(f"{stem}.bmp\n" for stem in names_by_list[list_name]))
  out["ids"]["train"] = names_by_list["Train.txt"] + names_by_list["Validation.txt"]
  out["ids"]["test"] = names_by_list["Test.txt"]
  return out
