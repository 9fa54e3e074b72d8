"""Pascal VOC 2012 segmentation (optionally with the SBD `train_aug` set) as a tfds builder.

Read from the directory the publishers ship (tfds `manual_dir`); see
`Builder.MANUAL_DOWNLOAD_INSTRUCTIONS` for the layout. Two builder configs:

* "aug": train = the SBD-augmented `train_aug` list (10,582 images in the real
  data) with masks from `SegmentationClassAug`, the standard training set of
  the incremental-segmentation papers (MiB, PLOP, UCD);
* "voc_only": train = the official `ImageSets/Segmentation/train.txt` (1,464
  images) with masks from `SegmentationClass`.

Val is always the official `val.txt` (1,449 images) with `SegmentationClass`.
`resolve_config` picks "aug" when the SBD files are there, else "voc_only".
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from incseg_jax.data import folder

NAME = "voc"
NUM_CLASSES = 21
IGNORE_LABEL = 255
CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor")
VOID_IS_ZERO = False  # 0 is the real "background" class, not unlabelled pixels
TRAIN_SPLIT = "train"
EVAL_SPLIT = "val"

_AUTO_NAMES = ("auto", "", "default")
_AUG_LIST = "train_aug.txt"
# The SBD train list's names and places in common layouts: ours, MiB's `splits/train_aug.txt`, DeepLab's `trainaug.txt`.
_AUG_LISTS = ("train_aug.txt", "trainaug.txt")
_AUG_DIR = "SegmentationClassAug"
# Modes whose pixel values are the class ids themselves (palette indices / gray).
_INDEX_MODES = ("P", "L")


def colormap(n: int = 256) -> np.ndarray:
  """The standard VOC colour map: bits of the class id interleaved into R, G, B.

  Returns:
    uint8 (n, 3); entry 255 (void) is (224, 224, 192) like the official masks.
  """
  cmap = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, rgb = i, [0, 0, 0]
    for bit in range(7, -1, -1):  # low bits of the id go to the high bits of the colour
      for channel in range(3):
        rgb[channel] |= ((c >> channel) & 1) << bit
      c >>= 3
    cmap[i] = rgb
  return cmap


PALETTE: np.ndarray = colormap(NUM_CLASSES)


def find_voc2012(manual_dir: str) -> str:
  """The VOC2012 directory, whether `manual_dir` is its grandparent, parent or itself.

  Raises:
    FileNotFoundError: none of the three places holds it (names all of them).
  """
  for candidate in (os.path.join(manual_dir, "VOCdevkit", "VOC2012"), os.path.join(manual_dir, "VOC2012")):
    if os.path.isdir(candidate):
      return candidate
  markers = ("JPEGImages", "SegmentationClass", "ImageSets")
  if os.path.basename(os.path.normpath(manual_dir)) == "VOC2012" or any(
      os.path.isdir(os.path.join(manual_dir, m)) for m in markers):
    return manual_dir
  raise FileNotFoundError(
      f"Pascal VOC: directory VOC2012 not found: looked for {os.path.join(manual_dir, 'VOCdevkit', 'VOC2012')}, "
      f"{os.path.join(manual_dir, 'VOC2012')} and {manual_dir} itself (with JPEGImages/, ImageSets/)")


def _aug_list_candidates(manual_dir: str, voc2012: str) -> list[str]:
  dirs = [os.path.join(voc2012, "ImageSets", "Segmentation"), voc2012, os.path.join(voc2012, "splits"), manual_dir,
          os.path.join(manual_dir, "splits")]
  out = [os.path.join(d, name) for name in _AUG_LISTS for d in dirs]
  return list(dict.fromkeys(out))  # manual_dir may be voc2012 itself


def _aug_dir_candidates(manual_dir: str, voc2012: str) -> list[str]:
  return [os.path.join(voc2012, _AUG_DIR), os.path.join(manual_dir, _AUG_DIR)]


def find_sbd(manual_dir: str) -> tuple[str | None, str | None, str]:
  """Locates the SBD augmented set under `manual_dir`.

  Returns:
    (train_aug list path or None, SegmentationClassAug dir or None, a sentence
    naming what was not found, empty when both were).
  """
  voc2012 = find_voc2012(manual_dir)
  lists = _aug_list_candidates(manual_dir, voc2012)
  dirs = _aug_dir_candidates(manual_dir, voc2012)
  aug_list = next((p for p in lists if os.path.isfile(p)), None)
  aug_dir = next((p for p in dirs if os.path.isdir(p)), None)
  missing = []
  if aug_list is None:
    missing.append(f"list {' or '.join(_AUG_LISTS)} (looked for {', '.join(lists)})")
  if aug_dir is None:
    missing.append(f"directory {_AUG_DIR} (looked for {', '.join(dirs)})")
  return aug_list, aug_dir, "; ".join(missing)


def _sbd_missing(manual_dir: str) -> str | None:
  """What of SBD is missing under `manual_dir` ("" = nothing), or None when there is no VOC tree to look in."""
  if not manual_dir or not os.path.isdir(manual_dir):
    return None
  try:
    return find_sbd(manual_dir)[2]
  except FileNotFoundError:  # no VOC2012 at all: `prepare` reports it if a build is needed
    return None


def _built_config(data_dir: str | None) -> str | None:
  """A config already built in `data_dir` ("aug" first), or None."""
  for config in Builder.BUILDER_CONFIGS:
    if data_dir and os.path.isfile(
        os.path.join(data_dir, Builder.name, config.name, str(Builder.VERSION), "dataset_info.json")):
      return config.name
  return None


def resolve_config(manual_dir: str, requested: str, *, data_dir: str | None = None) -> str:
  """The builder config to use: "aug" or "voc_only".

  Args:
    manual_dir: the publisher's directory (see MANUAL_DOWNLOAD_INSTRUCTIONS).
    requested: "aug", "voc_only", or "auto" / "" / "default" (aug when SBD is
      present under `manual_dir`, else voc_only with a printed note).
    data_dir: optional tfds data dir; only used for "auto" when `manual_dir`
      holds no VOC tree (unset, missing), to pick a config already built there.

  Raises:
    FileNotFoundError: "aug" was requested but SBD is not under `manual_dir`.
    ValueError: an unknown config name.
  """
  name = (requested or "").strip().lower()
  valid = [c.name for c in Builder.BUILDER_CONFIGS]
  if name not in valid and name not in _AUTO_NAMES:
    raise ValueError(f"Pascal VOC: unknown builder config {requested!r}; valid: {', '.join(valid)} or auto")
  if name == "voc_only":
    return name
  missing = _sbd_missing(manual_dir)
  if missing is None:  # nothing to inspect: reuse a finished build, else `prepare` explains manual_dir
    return name if name == "aug" else (_built_config(data_dir) or "aug")
  if not missing:
    return "aug"
  if name == "aug":
    raise FileNotFoundError(f"Pascal VOC config 'aug' needs the SBD augmented set: {missing}")
  print(f"WARNING: Pascal VOC: SBD not found ({missing}); training falls back to the VOC-only train.txt with "
        f"{_count_train(manual_dir)} instead of SBD's train_aug (10,582 in the real data, the papers' training set); "
        "add SBD, or pass --config.dataset.builder_config=voc_only to choose this set", flush=True)
  return "voc_only"


def _count_train(manual_dir: str) -> str:
  """"N images" of the official train.txt under `manual_dir`, or why it cannot be counted."""
  path = os.path.join(find_voc2012(manual_dir), "ImageSets", "Segmentation", "train.txt")
  try:
    n = len(folder.read_list(path, "Pascal VOC train"))
  except (FileNotFoundError, ValueError) as e:
    return f"? images ({e})"
  return f"{n:,} image{'s' if n != 1 else ''}"


def list_ids(path: str, what: str) -> list[str]:
  """Ids of a list file with bare ids or `/JPEGImages/<id>.jpg /Segm.../<id>.png` lines."""
  return [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in folder.read_list(path, what)]


class Builder(folder.FolderBuilder, skip_registration=True):
  """Pascal VOC 2012 semantic segmentation, 20 classes + background (255 = void border)."""

  name = "incseg_voc"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: VOC 2012 train/val, optional SBD train_aug."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="aug", description="train = SBD train_aug minus val (10,582 images)."),
      tfds.core.BuilderConfig(name="voc_only", description="train = VOC 2012 train.txt (1,464 images)."),
  ]
  DEFAULT_CONFIG_NAME = "aug"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Point manual_dir at the directory holding VOCdevkit/ (or at VOCdevkit/ or
VOCdevkit/VOC2012/ itself), as extracted from VOCtrainval_11-May-2012.tar:

  VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png            palette PNGs: pixel index = class id, 255 = void
    ImageSets/Segmentation/train.txt      one id per line
    ImageSets/Segmentation/val.txt
    SegmentationClassAug/<id>.png         SBD augmented masks ("aug" config only):
                                          single-channel PNGs of class ids, 255 = void
    ImageSets/Segmentation/train_aug.txt  SBD list ("aug" config only); also accepted at
                                          VOC2012/, VOC2012/splits/ (MiB's layout), <manual_dir>/ or
                                          <manual_dir>/splits/, and named trainaug.txt (DeepLab's name);
                                          lines are ids or "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"

SegmentationClassAug may also sit directly in manual_dir. Without the SBD files
use config "voc_only" (train = train.txt).
"""
  NUM_CLASSES = NUM_CLASSES
  IGNORE_LABEL = IGNORE_LABEL
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE

  def list_records(self, root: str) -> dict[str, list[folder.Record]]:
    voc2012 = find_voc2012(root)
    images = folder.require_dir(os.path.join(voc2012, "JPEGImages"), "Pascal VOC images")
    masks = folder.require_dir(os.path.join(voc2012, "SegmentationClass"), "Pascal VOC masks")
    lists = os.path.join(voc2012, "ImageSets", "Segmentation")
    val = list_ids(os.path.join(lists, "val.txt"), "Pascal VOC val")
    if self.builder_config.name == "aug":
      train, train_masks = self._aug_train(root, set(val))
    else:
      train, train_masks = list_ids(os.path.join(lists, "train.txt"), "Pascal VOC train"), masks
    return {"train": _records(train, images, train_masks), "val": _records(val, images, masks)}

  def _aug_train(self, root: str, val: set[str]) -> tuple[list[str], str]:
    """The SBD train ids (val ids removed) and the SegmentationClassAug dir."""
    aug_list, aug_dir, missing = find_sbd(root)
    if missing:
      raise FileNotFoundError(f"Pascal VOC config 'aug' needs the SBD augmented set: {missing}")
    ids = list_ids(aug_list, "Pascal VOC SBD train_aug")
    train = [i for i in ids if i not in val]
    # Training on val images would inflate every reported mIoU; the standard list has none.
    print(f"{self.name}: {aug_list}: {len(ids)} ids, removed {len(ids) - len(train)} that are in val",
          flush=True)
    return train, aug_dir

  def read_label(self, path: str) -> np.ndarray:
    image = folder.open_image(path)  # BadRecord "file not found" / "cannot decode"
    if image.mode not in _INDEX_MODES:
      raise folder.BadRecord(f"{path}: mask has mode {image.mode}; expected a palette (P) or single-channel "
                             f"(L) PNG whose pixel values are class ids")
    return np.asarray(image)


def _records(ids: list[str], images: str, masks: str) -> list[folder.Record]:
  return [folder.Record(i, os.path.join(images, i + ".jpg"), os.path.join(masks, i + ".png")) for i in ids]
