"""Cityscapes (fine annotations) as a tfds builder read from the official download.

Class convention (UCD's, kept so its Cityscapes scenarios are dataset order):
the 19 evaluation classes of cityscapesScripts get class id = trainId + 1
(1 road ... 19 bicycle) and every other labelId (unlabeled, ego vehicle,
parking, guard rail, caravan, ...) becomes 0, "void", which UCD trains as
background. So NUM_CLASSES = 20 and VOID_IS_ZERO = True; a user who wants the
usual convention (void ignored) turns 0 into the ignore label downstream. With
this order the 13-6 scenario (first 13 classes, then car, truck, bus, train,
motorcycle, bicycle) is plain dataset order, classes 14..19.

Only `leftImg8bit` and `gtFine/*_gtFine_labelIds.png` are read; the colour,
instance and polygon files of gtFine are ignored. Splits: "train" (2975
images) and "val" (500); the test split has no public labels.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from incseg_jax.data import folder

NAME = "cityscapes"
IGNORE_LABEL = 255
VOID_IS_ZERO = True
TRAIN_SPLIT = "train"
EVAL_SPLIT = "val"
SPLITS = ("train", "val")

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"
_MAX_LABEL_ID = 33  # labelIds 0..33 exist; license plate (-1) is never in a png

# (labelId, name, RGB) of the 19 train classes in trainId order, from
# cityscapesScripts/helpers/labels.py.
_TRAIN_CLASSES = (
  (7, "road", (128, 64, 128)),
  (8, "sidewalk", (244, 35, 232)),
  (11, "building", (70, 70, 70)),
  (12, "wall", (102, 102, 156)),
  (13, "fence", (190, 153, 153)),
  (17, "pole", (153, 153, 153)),
  (19, "traffic light", (250, 170, 30)),
  (20, "traffic sign", (220, 220, 0)),
  (21, "vegetation", (107, 142, 35)),
  (22, "terrain", (152, 251, 152)),
  (23, "sky", (70, 130, 180)),
  (24, "person", (220, 20, 60)),
  (25, "rider", (255, 0, 0)),
  (26, "car", (0, 0, 142)),
  (27, "truck", (0, 0, 70)),
  (28, "bus", (0, 60, 100)),
  (31, "train", (0, 80, 100)),
  (32, "motorcycle", (0, 0, 230)),
  (33, "bicycle", (119, 11, 32)),
)

CLASS_NAMES: tuple[str, ...] = ("void",) + tuple(name for _, name, _ in _TRAIN_CLASSES)
NUM_CLASSES = len(CLASS_NAMES)  # 20
PALETTE: np.ndarray = np.array([(0, 0, 0)] + [rgb for _, _, rgb in _TRAIN_CLASSES], np.uint8)


def _label_id_lut() -> np.ndarray:
  """uint8 (256,) labelId -> class id; ids above 33 map to IGNORE_LABEL (flagged)."""
  lut = np.full(256, IGNORE_LABEL, np.uint8)
  lut[:_MAX_LABEL_ID + 1] = 0  # every non-train labelId is void
  for class_id, (label_id, _, _) in enumerate(_TRAIN_CLASSES, start=1):
    lut[label_id] = class_id
  return lut


_LUT = _label_id_lut()


def resolve_config(manual_dir: str, requested: str, *, data_dir: str | None = None) -> str:
  """The builder config to use: there is only "default" (see folder.single_config)."""
  del manual_dir, data_dir  # one config: nothing to inspect
  return folder.single_config(NAME, requested)


def find_root(manual_dir: str) -> str:
  """The directory holding leftImg8bit/ and gtFine/: `manual_dir` or its `cityscapes/`."""
  nested = os.path.join(manual_dir, "cityscapes")
  if not os.path.isdir(os.path.join(manual_dir, "leftImg8bit")) and os.path.isdir(nested):
    return nested
  return manual_dir


def _files_by_id(split_dir: str, suffix: str) -> dict[str, str]:
  """Example id -> path of every `<city>/<id><suffix>` file under `split_dir`."""
  found = {}
  for city in sorted(os.listdir(split_dir)):
    city_dir = os.path.join(split_dir, city)
    if not os.path.isdir(city_dir):
      continue
    for name in os.listdir(city_dir):
      if name.endswith(suffix):
        found[name[:-len(suffix)]] = os.path.join(city_dir, name)
  return found


def _expected_path(root: str, tree: str, split: str, example_id: str, suffix: str) -> str:
  """Where the official layout puts the file of `example_id` (`<city>_<seq>_<frame>`)."""
  city = example_id.split("_")[0]
  return os.path.join(root, tree, split, city, example_id + suffix)


def split_records(root: str, split: str) -> list[folder.Record]:
  """Records of one split, sorted by id; unmatched files keep the expected path of their partner."""
  image_dir = folder.require_dir(os.path.join(root, "leftImg8bit", split), f"{NAME} {split} images")
  label_dir = folder.require_dir(os.path.join(root, "gtFine", split), f"{NAME} {split} fine labels")
  images = _files_by_id(image_dir, _IMAGE_SUFFIX)
  labels = _files_by_id(label_dir, _LABEL_SUFFIX)
  # A missing partner becomes a record with a non-existent path, so the base
  # class reports it with the other bad records instead of dropping it silently.
  return [
      folder.Record(
          id=i,
          image=images.get(i) or _expected_path(root, "leftImg8bit", split, i, _IMAGE_SUFFIX),
          label=labels.get(i) or _expected_path(root, "gtFine", split, i, _LABEL_SUFFIX))
      for i in sorted(images.keys() | labels.keys())
  ]


def read_label_ids(path: str) -> np.ndarray:
  """The raw labelIds (H, W) of a gtFine `*_labelIds.png` (raises folder.BadRecord)."""
  if not os.path.isfile(path):
    raise folder.BadRecord(f"ground truth not found: expected {path}")
  image = folder.open_image(path)
  if image.mode not in ("L", "P", "I", "I;16"):
    raise folder.BadRecord(f"{path}: expected a single-channel labelIds png, got mode {image.mode} "
                           f"(is it the _gtFine_color.png?)")
  label_ids = np.asarray(image)
  bad = np.unique(label_ids[(label_ids < 0) | (label_ids > _MAX_LABEL_ID)])
  if bad.size:
    raise folder.BadRecord(f"{path}: labelIds {bad[:10].tolist()} are not Cityscapes labelIds "
                           f"(valid: 0..{_MAX_LABEL_ID})")
  return label_ids


class Builder(folder.FolderBuilder, skip_registration=True):
  """Cityscapes fine annotations: 19 classes (id = trainId + 1) plus void (0)."""

  name = "incseg_cityscapes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: UCD convention (trainId + 1, void = 0)."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="gtFine train / val.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from
  https://www.cityscapes-dataset.com (registration required), unzip both into
  one directory and point manual_dir at it (or at its parent when it is named
  `cityscapes/`):

    <manual_dir>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <manual_dir>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

  Only the *_gtFine_labelIds.png ground truths are read; no preprocessing
  (e.g. createTrainIdLabelImgs) is needed.
  """
  NUM_CLASSES = NUM_CLASSES
  IGNORE_LABEL = IGNORE_LABEL
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE

  def list_records(self, root: str) -> dict[str, list[folder.Record]]:
    root = find_root(root)
    return {split: split_records(root, split) for split in SPLITS}

  def read_label(self, path: str) -> np.ndarray:
    return _LUT[read_label_ids(path)]

  def make_example(self, record: folder.Record) -> dict:
    # Checked here so a ground truth without its image names both files.
    if not os.path.isfile(record.image):
      raise folder.BadRecord(f"image not found: expected {record.image} for ground truth {record.label}")
    return super().make_example(record)
