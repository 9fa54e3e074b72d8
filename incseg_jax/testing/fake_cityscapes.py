"""A tiny fake Cityscapes tree in the official layout (leftImg8bit/ + gtFine/).

The writer draws class-id masks first (UCD convention: 0 void, 1..19 =
trainId + 1) and encodes them as labelIds with its own inverse table, so a
test can compare the builder's labelId -> class-id mapping against masks that
did not come from it. Void pixels get a random non-train labelId each, so
every void id occurs.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

# labelId of class id 1..19 (trainId 0..18), and the labelIds that are void.
_TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
_VOID_LABEL_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)
CITIES = {"train": ("aachen", "bremen"), "val": ("frankfurt", "lindau")}
HEIGHT, WIDTH = 32, 64


def _mask(rng: np.random.Generator, weights: np.ndarray, all_classes: bool) -> np.ndarray:
  """Class ids (H, W): random base class, 4-9 random rectangles, void bottom rows.

  With `all_classes` the top row cycles through every class id, so each
  labelId of the table occurs somewhere in the tree.
  """
  mask = np.full((HEIGHT, WIDTH), rng.choice(20, p=weights), np.uint8)
  for _ in range(int(rng.integers(4, 10))):
    y0, x0 = rng.integers(0, HEIGHT - 4), rng.integers(0, WIDTH - 4)
    h, w = rng.integers(3, HEIGHT // 2), rng.integers(3, WIDTH // 2)
    mask[y0:y0 + h, x0:x0 + w] = rng.choice(20, p=weights)
  mask[-3:] = 0  # like the ego-vehicle strip of real frames: every image has void
  if all_classes:
    mask[0] = np.arange(WIDTH) % 20
  return mask


def _label_ids(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
  """Encodes class ids as Cityscapes labelIds (void pixels: any non-train labelId)."""
  lut = np.array((0,) + _TRAIN_LABEL_IDS, np.uint8)
  label_ids = lut[mask]
  void = mask == 0
  label_ids[void] = rng.choice(_VOID_LABEL_IDS, size=int(void.sum()))
  return label_ids


def _write_example(root: str, split: str, example_id: str, image: np.ndarray,
                   label_ids: np.ndarray) -> tuple[str, str]:
  city = example_id.split("_")[0]
  image_dir = os.path.join(root, "leftImg8bit", split, city)
  label_dir = os.path.join(root, "gtFine", split, city)
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(label_dir, exist_ok=True)
  image_path = os.path.join(image_dir, f"{example_id}_leftImg8bit.png")
  label_path = os.path.join(label_dir, f"{example_id}_gtFine_labelIds.png")
  Image.fromarray(image).save(image_path)
  Image.fromarray(label_ids).save(label_path)
  # The other gtFine files of the real download, which the builder must ignore.
  Image.fromarray(image).save(os.path.join(label_dir, f"{example_id}_gtFine_color.png"))
  with open(os.path.join(label_dir, f"{example_id}_gtFine_polygons.json"), "w") as f:
    json.dump({"imgHeight": HEIGHT, "imgWidth": WIDTH, "objects": []}, f)
  return image_path, label_path


def write(root: str, *, seed: int = 0, per_city: dict[str, int] | None = None) -> dict:
  """Writes the tree under `root` (which becomes a valid manual_dir).

  Args:
    root: directory to write into (created).
    seed: everything is drawn from `np.random.default_rng(seed)`.
    per_city: split -> images per city (default train 3, val 2: 10 images).

  Returns:
    dict with "root", "ids" (split -> sorted ids), and per id "images" (uint8
    (H, W, 3)), "masks" (expected uint8 class ids), "label_ids" (the
    written labelIds), "image_paths" and "label_paths".
  """
  per_city = per_city or {"train": 3, "val": 2}
  rng = np.random.default_rng(seed)
  # Unequal class weights, so a frequency order differs from the id order.
  weights = rng.permutation(np.arange(1, 21, dtype=np.float64))
  weights /= weights.sum()
  out = {"root": root, "ids": {}, "images": {}, "masks": {}, "label_ids": {}, "image_paths": {}, "label_paths": {}}
  for split, cities in CITIES.items():
    ids = []
    for city in cities:
      for k in range(per_city[split]):
        example_id = f"{city}_{k:06d}_{19 * (k + 1):06d}"
        mask = _mask(rng, weights, all_classes=(city, k) == (cities[0], 0))
        label_ids = _label_ids(rng, mask)
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        paths = _write_example(root, split, example_id, image, label_ids)
        out["images"][example_id], out["masks"][example_id] = image, mask
        out["label_ids"][example_id] = label_ids
        out["image_paths"][example_id], out["label_paths"][example_id] = paths
        ids.append(example_id)
    out["ids"][split] = sorted(ids)
  return out
