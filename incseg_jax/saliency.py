"""Per-image saliency maps of the training split (SSUL's unknown class), read and checked up front.

SSUL (Cha et al., NeurIPS 2021) labels the salient pixels of a step's
background as "unknown". Its maps come as a folder with one PNG per training
image, `config.dataset.saliency_dir/<id>.png` (SSUL ships VOC's as
`saliency_map/<id>.png`): the id is the example's id (`EncodedSplit.ids`,
e.g. `2007_000032`), one channel (a colour or palette PNG is read as its
grey level), the image's height and width, nonzero = salient.

`load` reads the folder once into an object array of the encoded PNG bytes,
aligned with the split's examples (as `EncodedSplit.labels`); the input
pipeline decodes them and augments them with their image. Every problem (no
folder, a missing map, a file that is not a decodable PNG, a map whose size
is not its image's) is a ValueError naming the field and the file, raised
before anything trains. For `shapes` without a folder, approximate maps are
built once beside the dataset (`data/shapes_saliency.py`).
"""

from __future__ import annotations

import os
import re
import struct
from typing import Sequence

import numpy as np

from incseg_jax.data import pipeline

FIELD = "config.dataset.saliency_dir"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load(dataset_cfg, split: pipeline.EncodedSplit) -> np.ndarray:
  """The saliency maps of the training split `split`: `dataset_cfg.saliency_dir`'s, or built ones for `shapes`.

  Args:
    dataset_cfg: `config.dataset`.
    split: the training split (`dataset_cfg.train_split`).

  Returns:
    (N,) object array of PNG bytes, entry i the map of `split.ids[i]`.

  Raises:
    ValueError: no folder for a dataset other than `shapes`, or a problem
      with the folder (see `read_folder`).
  """
  directory = dataset_cfg.get("saliency_dir", "")
  if directory:
    return read_folder(directory, split.ids, image_sizes(split), f"{FIELD}={directory!r}")
  if dataset_cfg.name != "shapes":
    raise ValueError(f"{FIELD} is empty, but this experiment trains with saliency maps and dataset "
                     f"{dataset_cfg.name!r} has none built in: pass --config.dataset.saliency_dir=DIR, a folder "
                     "with <id>.png per training image (for VOC, SSUL's saliency_map folder)")
  from incseg_jax.data import registry  # pylint: disable=g-import-not-at-top
  from incseg_jax.data import shapes_saliency  # pylint: disable=g-import-not-at-top
  data_dir = dataset_cfg.data_dir or registry.default_data_dir()
  path = shapes_saliency.ensure_cache(data_dir, dataset_cfg.builder_config, dataset_cfg.train_split, split.labels,
                                      split.ids, log=lambda m: print(m, flush=True))
  return read_folder(path, split.ids, image_sizes(split),
                     f"the shapes saliency cache {path} ({FIELD} is empty; delete the folder to rebuild it)")


def image_sizes(split: pipeline.EncodedSplit) -> np.ndarray:
  """(N, 2) (height, width) of every image of `split` (fixed-size data: its first image's, for all)."""
  if split.sizes is not None:
    return np.asarray(split.sizes, np.int64)
  return pipeline.eval_shapes(split)


def read_folder(directory: str, ids: Sequence[str], sizes: np.ndarray, what: str = FIELD) -> np.ndarray:
  """Reads `directory/<id>.png` for every id, checking each.

  Args:
    directory: the folder of maps.
    ids: example ids, in the split's order.
    sizes: (N, 2) (height, width) of each example's image.
    what: names the folder in messages (the config field and its value).

  Returns:
    (N,) object array of the files' bytes, in the order of `ids`.

  Raises:
    ValueError: naming `what` and the file at fault: the folder does not
      exist, maps are missing (the first named, all counted), a file is not a
      decodable PNG, or a map's size differs from its image's.
  """
  directory = os.path.expanduser(directory)
  if not os.path.isdir(directory):
    raise ValueError(f"{what}: {directory} is not a directory; expected a folder with one <id>.png saliency map per "
                     "training image")
  paths = [os.path.join(directory, f"{i}.png") for i in ids]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise ValueError(f"{what}: {len(missing)} of the {len(ids)} training images have no saliency map, e.g. "
                     f"{missing[0]} is missing")
  data = np.empty(len(paths), object)
  for k, path in enumerate(paths):
    with open(path, "rb") as f:
      data[k] = f.read()
    _check_size(data[k], tuple(int(d) for d in sizes[k]), path, what)
  _check_decodes(data, paths, what)
  return data


def _check_size(data: bytes, size: tuple[int, int], path: str, what: str) -> None:
  """A PNG's signature, and its size (from its header, without decoding) against its image's."""
  if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
    raise ValueError(f"{what}: {path} is not a PNG file")
  width, height = struct.unpack(">II", data[16:24])
  if (height, width) != size:
    raise ValueError(f"{what}: {path} is {height}x{width} (height x width), but its image is {size[0]}x{size[1]}")


def _check_decodes(data: np.ndarray, paths: list[str], what: str) -> None:
  """Every map decodes (a truncated or damaged file would fail in the middle of training)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.from_tensor_slices(list(data)).map(lambda b: tf.shape(tf.io.decode_png(b, channels=1)),
                                                          num_parallel_calls=tf.data.AUTOTUNE).batch(256)
  try:
    for _ in ds:
      pass
    return
  except tf.errors.OpError:
    pass
  for blob, path in zip(data, paths):  # one failed: find which, one file at a time
    try:
      tf.io.decode_png(blob, channels=1)
    except tf.errors.OpError as e:
      reason = re.sub(r"\{\{.*?\}\}\s*", "", e.message.splitlines()[0])  # TF's "{{function_node ...}}" prefix
      raise ValueError(f"{what}: {path} is not a decodable PNG ({reason})") from None
  raise ValueError(f"{what}: a saliency map does not decode")  # the batch decode failed but no file alone did
