"""Dataset registry: config name -> prepared tfds builder + metadata.

The built-in `shapes` is generated at build time. The real datasets (VOC +
SBD, ADE20K, Cityscapes, MSRC-v2) are read once from the publisher's directory
(`config.dataset.manual_dir`) into tfds records under the data dir; every
later run reuses the records (see data/folder.py).
"""

from __future__ import annotations

import dataclasses
import importlib
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
    void_is_zero: label 0 means unlabelled/void (ADE20K, Cityscapes), not a
      real background class; `config.dataset.void` decides how it is used.
    zero_is_class: label 0 is a real class learned in step 0 (MSRC's
      building), so an image holding it is a training image of step 0; on
      the other datasets label 0 selects no image.
    named_orders: published class orders of this dataset, by name, usable as
      `config.class_order` (e.g. VOC's "ilt_frequency").
  """
  name: str
  num_classes: int
  ignore_label: int
  class_names: tuple[str, ...]
  palette: np.ndarray
  void_is_zero: bool = False
  zero_is_class: bool = False
  named_orders: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

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
  builder = shapes.build(data_dir=data_dir, config=dataset_cfg.builder_config, log=lambda m: print(m, flush=True))
  return builder, meta("shapes")


# The first paper's VOC order "based on the pixels' occurrence" (its Tables 2,
# 6 and 10 list the classes in this order; bottle is added last), as VOC ids.
ILT_VOC_FREQUENCY = (15, 8, 12, 7, 19, 9, 6, 18, 14, 11, 1, 13, 3, 2, 20, 4, 16, 17, 10, 5)
_NAMED_ORDERS = {"voc": {"ilt_frequency": ILT_VOC_FREQUENCY}}


def _folder_loader(module_name: str) -> Callable[[Any], tuple[Any, DatasetMeta]]:
  """Loader of a real dataset whose module follows the data/voc.py interface."""

  def load_folder(dataset_cfg) -> tuple[Any, DatasetMeta]:
    from incseg_jax.data import folder  # pylint: disable=g-import-not-at-top
    module = importlib.import_module(f"incseg_jax.data.{module_name}")
    data_dir = dataset_cfg.data_dir or default_data_dir()
    manual_dir = os.path.expanduser(dataset_cfg.manual_dir) if dataset_cfg.manual_dir else ""
    config = module.resolve_config(manual_dir, dataset_cfg.builder_config, data_dir=data_dir)
    builder = folder.prepare(module.Builder, data_dir=data_dir, manual_dir=manual_dir, config=config,
                             skip_bad_records=dataset_cfg.skip_bad_records,
                             rebuild=bool(getattr(dataset_cfg, "rebuild", False)))
    skipped = dict(builder.info.metadata.get("skipped_records", {}) or {})
    if any(skipped.values()):
      print(f"note: {module.NAME} records were built with skip_bad_records; skipped per split: {skipped}",
            flush=True)
    return builder, meta(module_name)

  return load_folder


_LOADERS: dict[str, Callable[[Any], tuple[Any, DatasetMeta]]] = {"shapes": _shapes}
_LOADERS.update({name: _folder_loader(name) for name in ("voc", "ade20k", "cityscapes", "msrc")})


def meta(name: str) -> DatasetMeta:
  """Metadata of dataset `name` from its module's class table, without reading or building any data.

  Raises:
    ValueError: unknown dataset name (the message lists the known ones).
  """
  _check_name(name)
  module = importlib.import_module(f"incseg_jax.data.{name}")
  # `shapes` has no NAME or VOID_IS_ZERO: it is not a folder dataset, and its label 0 is a real background.
  return DatasetMeta(name=getattr(module, "NAME", name), num_classes=module.NUM_CLASSES,
                     ignore_label=module.IGNORE_LABEL, class_names=tuple(module.CLASS_NAMES),
                     palette=np.asarray(module.PALETTE), void_is_zero=getattr(module, "VOID_IS_ZERO", False),
                     zero_is_class=getattr(module, "ZERO_IS_CLASS", False),
                     named_orders=_NAMED_ORDERS.get(name, {}))


def num_classes(name: str) -> int:
  """Class count (background/void included) of dataset `name`, without reading any data.

  Lets scenario strings be checked before a dataset is built or loaded.
  """
  return meta(name).num_classes


def _check_name(name: str) -> None:
  if name not in _LOADERS:
    raise ValueError(f"config.dataset.name={name!r} is not a known dataset; known: {', '.join(sorted(_LOADERS))}")


def load(dataset_cfg) -> tuple[Any, DatasetMeta]:
  """Prepares (builds if needed) the dataset named in `dataset_cfg.name`.

  Returns:
    (tfds builder, DatasetMeta).

  Raises:
    ValueError: unknown dataset name (the message lists the known ones).
  """
  _check_name(dataset_cfg.name)
  return _LOADERS[dataset_cfg.name](dataset_cfg)
