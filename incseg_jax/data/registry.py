"""Dataset registry: config name -> prepared tfds builder + metadata.

Real datasets (issue: VOC, ADE20K, Cityscapes, MSRC) plug in here with a
`manual_dir`; the built-in `shapes` is generated at build time.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What the rest of the system needs to know about a dataset.

  Attributes:
    name: registry name.
    num_classes: background + foreground classes.
    ignore_label: void label value.
    class_names: names indexed by original class id (0 = background).
    palette: (num_classes, 3) uint8 RGB colours for visualisation.
  """
  name: str
  num_classes: int
  ignore_label: int
  class_names: tuple[str, ...]
  palette: np.ndarray

  @property
  def num_fg(self) -> int:
    return self.num_classes - 1


def default_data_dir() -> str:
  return os.environ.get("INCSEG_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def _shapes(dataset_cfg) -> tuple[Any, DatasetMeta]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from incseg_jax.data import shapes  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()  # one line from us instead of redrawn bars in logs
  data_dir = dataset_cfg.data_dir or default_data_dir()
  if not os.path.isdir(os.path.join(data_dir, "shapes", dataset_cfg.builder_config)):
    print(f"building the shapes dataset ({dataset_cfg.builder_config}) into {data_dir} (once)", flush=True)
  builder = shapes.build(data_dir=data_dir, config=dataset_cfg.builder_config)
  meta = DatasetMeta(name="shapes", num_classes=shapes.NUM_CLASSES, ignore_label=shapes.IGNORE_LABEL,
                     class_names=tuple(shapes.CLASS_NAMES), palette=np.asarray(shapes.PALETTE))
  return builder, meta


_LOADERS: dict[str, Callable[[Any], tuple[Any, DatasetMeta]]] = {"shapes": _shapes}


def load(dataset_cfg) -> tuple[Any, DatasetMeta]:
  """Prepares (builds if needed) the dataset named in `dataset_cfg.name`.

  Returns:
    (tfds builder, DatasetMeta).

  Raises:
    ValueError: unknown dataset name (the message lists the known ones).
  """
  if dataset_cfg.name not in _LOADERS:
    raise ValueError(f"config.dataset.name={dataset_cfg.name!r} is not a known dataset; "
                     f"known: {', '.join(sorted(_LOADERS))}")
  return _LOADERS[dataset_cfg.name](dataset_cfg)
