"""Approximate saliency maps for the built-in `shapes` dataset (SSUL's unknown class).

SSUL (Cha et al., NeurIPS 2021) carves an "unknown" class out of the
background with the map of an off-the-shelf saliency detector (DSS on VOC).
`shapes` has no detector, so its maps are made from the raw masks, with the
kinds of errors a detector makes, so a method never trains on the exact mask:

* the map is the union of the image's object pixels (every nonzero raw label:
  in `shapes` void is the 1-px inner border of the objects, so it belongs to
  them), blurred with a Gaussian of `SIGMA` = 1.5 px and cut at a threshold
  drawn per image from [0.35, 0.65]: boundaries move by about a pixel either
  way, corners and thin parts round off;
* in `P_MISSED` = 10% of the images one object (a connected region of one
  class, of at least `MIN_OBJECT_PIXELS`) is left out of the map;
* in `P_FALSE` = 10% of the images, independently, a false salient disc of
  radius 3-6 px (before the blur) lies on the background.

Values are 0 and 255. Every random draw of an image comes from a generator
seeded by its example id, so the maps are the same byte for byte on every run,
whatever other examples are built beside it. On the default build's training
split the maps' mean IoU with the object union is about 0.88 (a few maps miss
most objects), and 1 map in 3000 equals it exactly; 3000 maps take about a
second to build.

The maps of a split are cached once beside the dataset (`ensure_cache`), in
`<data dir>/shapes_saliency/<shapes version>-m<MAPS_VERSION>/<builder config>_<split>/<id>.png`;
`python -m incseg_jax.tools.shapes_saliency --out=DIR` writes the same files
elsewhere. Neither changes the dataset itself.
"""

from __future__ import annotations

import os
import shutil
import zlib
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from incseg_jax import files

MAPS_VERSION = 1  # bump when the maps change: the cache path holds it, so old caches are not read
SIGMA = 1.5
THRESHOLDS = (0.35, 0.65)
P_MISSED = 0.1
P_FALSE = 0.1
MIN_OBJECT_PIXELS = 20  # a missed sliver of a few pixels would be no error at all
FALSE_RADIUS = (3.0, 6.0)
_SEED = 5410221  # apart from the dataset's own streams


def saliency_map(label: np.ndarray, example_id: str) -> np.ndarray:
  """The approximate saliency map of one image (see the module docstring).

  Args:
    label: (H, W) or (H, W, 1) uint8 raw mask (0 background, 255 void).
    example_id: the example's id; seeds the map's errors.

  Returns:
    (H, W) uint8 map, 0 or 255.
  """
  label = np.asarray(label)
  label = label[..., 0] if label.ndim == 3 else label
  rng = np.random.default_rng([_SEED, zlib.crc32(example_id.encode())])
  # Every draw is made for every image, in one order, so no choice shifts another's stream.
  threshold = rng.uniform(*THRESHOLDS)
  missed, false = rng.random() < P_MISSED, rng.random() < P_FALSE
  pick, centre_pick, radius = rng.random(), rng.random(), rng.uniform(*FALSE_RADIUS)
  objects = label != 0
  if missed:
    objects &= ~_one_object(label, pick)
  if false:
    objects |= _disc(label == 0, centre_pick, radius)
  blurred = ndimage.gaussian_filter(objects.astype(np.float32), SIGMA, mode="nearest")
  return np.where(blurred >= threshold, 255, 0).astype(np.uint8)


def _one_object(label: np.ndarray, pick: float) -> np.ndarray:
  """Pixels of the object `pick` in [0, 1) chooses (with its void border); none if no object is big enough."""
  regions = []
  for c in np.unique(label):
    if c in (0, 255):
      continue
    parts, n = ndimage.label(label == c)
    sizes = np.bincount(parts.ravel(), minlength=n + 1)
    regions += [parts == k for k in range(1, n + 1) if sizes[k] >= MIN_OBJECT_PIXELS]
  if not regions:
    return np.zeros(label.shape, bool)
  region = regions[int(pick * len(regions))]
  # Its void border too: a 1-px void ring left behind would survive the blur as a faint salient outline.
  return region | (ndimage.binary_dilation(region, iterations=2) & (label == 255))


def _disc(background: np.ndarray, pick: float, radius: float) -> np.ndarray:
  """A disc of `radius` centred on the background pixel `pick` in [0, 1) chooses; none without background."""
  ys, xs = np.nonzero(background)
  if not len(ys):
    return np.zeros(background.shape, bool)
  k = int(pick * len(ys))
  yy, xx = np.mgrid[:background.shape[0], :background.shape[1]]
  return (yy - ys[k]) ** 2 + (xx - xs[k]) ** 2 <= radius ** 2


def encoded_maps(labels: Sequence[bytes], ids: Sequence[str]) -> list[bytes]:
  """PNG-encoded maps of encoded raw masks `labels`, one per id."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = []
  for label_bytes, example_id in zip(labels, ids):
    label = tf.io.decode_png(label_bytes, channels=1).numpy()
    out.append(tf.io.encode_png(saliency_map(label, example_id)[..., None]).numpy())
  return out


def write(out: str, labels: Sequence[bytes], ids: Sequence[str]) -> int:
  """Writes `out/<id>.png` for every id (the folder is created if missing); returns the count."""
  os.makedirs(out, exist_ok=True)
  for example_id, data in zip(ids, encoded_maps(labels, ids)):
    with open(os.path.join(out, f"{example_id}.png"), "wb") as f:
      f.write(data)
  return len(ids)


def cache_dir(data_dir: str, config: str, split: str) -> str:
  """Where `ensure_cache` keeps the maps of a split of the `config` build of `shapes`."""
  from incseg_jax.data import shapes  # pylint: disable=g-import-not-at-top
  return os.path.join(data_dir, "shapes_saliency", f"{shapes.Shapes.VERSION}-m{MAPS_VERSION}", f"{config}_{split}")


def ensure_cache(data_dir: str, config: str, split: str, labels: Sequence[bytes], ids: Sequence[str],
                 log: Callable[[str], None] | None = print) -> str:
  """The cached maps' folder of a split, built first if it does not exist.

  The maps are written into a temporary folder renamed into place at the
  end, so a crash never leaves a half folder, and two processes building at
  once both end with the one that was renamed first.

  Args:
    data_dir: the dataset's data dir.
    config: the `shapes` builder config ("default", "tiny").
    split: the split `labels` and `ids` are of.
    labels: encoded raw masks of the split.
    ids: their example ids.
    log: called with one line before a build (nothing when the cache exists).

  Returns:
    The folder of `<id>.png` maps.

  Raises:
    ValueError: the cache must be built but `data_dir` is not writable.
  """
  path = cache_dir(data_dir, config, split)
  if os.path.isdir(path):
    return path
  parent = os.path.dirname(path)
  problem = files.unwritable(parent)
  if problem:
    raise ValueError(f"{parent} {problem}, but the shapes saliency maps ({config}, {split}) are not built there yet "
                     "and must be written into it (once): make it writable, or point INCSEG_DATA_DIR or "
                     "--config.dataset.data_dir at a writable one, or pass --config.dataset.saliency_dir=DIR "
                     "(python -m incseg_jax.tools.shapes_saliency --out=DIR)")
  if log:
    log(f"building approximate saliency maps of shapes ({config}, {split}, {len(ids)} images) into {path} (once)")
  tmp = f"{path}.tmp.{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  write(tmp, labels, ids)
  try:
    os.rename(tmp, path)
  except OSError:
    if not os.path.isdir(path):  # not another process's finished folder: a real failure
      raise
    shutil.rmtree(tmp, ignore_errors=True)
  return path
