"""MSRC-v2 (MSRC-21) as a tfds builder read from Microsoft's download.

Class convention. MSRC-v2 annotates 23 classes plus void with colours. As
its authors suggest (and as the first paper does), horse and mountain are
excluded as under-represented; their pixels, like void, get IGNORE_LABEL.
The remaining 21 classes keep the dataset's order and get ids 0..20:

  0 building, 1 grass, 2 tree, 3 cow, 4 sheep, 5 sky, 6 aeroplane, 7 water,
  8 face, 9 car, 10 bicycle, 11 flower, 12 sign, 13 bird, 14 book, 15 chair,
  16 road, 17 cat, 18 dog, 19 body, 20 boat.

MSRC has no background class: every one of the 21 is a real class, so
VOID_IS_ZERO = False. The framework always learns class id 0 in the first
step (it is the "background" channel elsewhere); here that slot holds
building, which is therefore always in step 0, and an image holding building
(even alone) is a training image of step 0 (ZERO_IS_CLASS). The first paper's scenarios
M0(0-19)+boat and M0(0-15)+5 start from all but the rarest 1 or 5 classes
(boat; chair, aeroplane, dog, bird, boat by its occurrence order). Building is
not among them, so an order over classes 1..20 that ends with those classes
(explicit, or `order="frequency"` if the pixel counts rank them last) gives
the paper's step-0 set and additions.

Splits: the standard split of Shotton et al. (TextonBoost, ECCV 2006) is not
part of Microsoft's download; its list files Train.txt, Validation.txt and
Test.txt must be placed next to Images/ (or in splits/ or TextonBoostSplits/
there). "train" = Train + Validation (335 images), "test" = Test (256).
Images are 24-bit BMPs, re-encoded as PNG in the records.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from incseg_jax.data import folder

NAME = "msrc"
IGNORE_LABEL = 255
VOID_IS_ZERO = False
ZERO_IS_CLASS = True  # id 0 (building) is a class learned in step 0 that selects images, not a background
TRAIN_SPLIT = "train"
EVAL_SPLIT = "test"
DIR_NAME = "MSRC_ObjCategImageDatabase_v2"
# Our split -> the TextonBoost list files it is made of.
SPLIT_LISTS = {"train": ("Train.txt", "Validation.txt"), "test": ("Test.txt",)}
_LIST_DIRS = ("", "splits", "TextonBoostSplits")  # where a list file may sit, in order

# The 24 ground-truth colours of MSRC-v2 in dataset order, and whether each
# is one of our classes (void and the two excluded classes are not).
_COLOURS = (
  ("void", (0, 0, 0), False),
  ("building", (128, 0, 0), True),
  ("grass", (0, 128, 0), True),
  ("tree", (128, 128, 0), True),
  ("cow", (0, 0, 128), True),
  ("horse", (128, 0, 128), False),
  ("sheep", (0, 128, 128), True),
  ("sky", (128, 128, 128), True),
  ("mountain", (64, 0, 0), False),
  ("aeroplane", (192, 0, 0), True),
  ("water", (64, 128, 0), True),
  ("face", (192, 128, 0), True),
  ("car", (64, 0, 128), True),
  ("bicycle", (192, 0, 128), True),
  ("flower", (64, 128, 128), True),
  ("sign", (192, 128, 128), True),
  ("bird", (0, 64, 0), True),
  ("book", (128, 64, 0), True),
  ("chair", (0, 192, 0), True),
  ("road", (128, 64, 128), True),
  ("cat", (0, 192, 128), True),
  ("dog", (128, 192, 128), True),
  ("body", (64, 64, 0), True),
  ("boat", (192, 64, 0), True),
)
EXCLUDED = ("horse", "mountain")

CLASS_NAMES: tuple[str, ...] = tuple(name for name, _, kept in _COLOURS if kept)
NUM_CLASSES = len(CLASS_NAMES)  # 21
PALETTE: np.ndarray = np.array([rgb for _, rgb, kept in _COLOURS if kept], np.uint8)


def _code(rgb) -> np.ndarray:
  """Packs RGB (..., 3) into one int per colour: 0xRRGGBB."""
  rgb = np.asarray(rgb, np.int64)
  return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colour_table() -> dict[int, int]:
  """Packed colour -> class id (0..20) or IGNORE_LABEL."""
  table, next_id = {}, 0
  for _, rgb, kept in _COLOURS:
    table[int(_code(rgb))] = next_id if kept else IGNORE_LABEL
    next_id += bool(kept)
  return table


_TABLE = _colour_table()


def resolve_config(manual_dir: str, requested: str, *, data_dir: str | None = None) -> str:
  """The builder config to use: there is only "default" (see folder.single_config)."""
  del manual_dir, data_dir  # one config: nothing to inspect
  return folder.single_config(NAME, requested)


def find_root(manual_dir: str) -> str:
  """The MSRC_ObjCategImageDatabase_v2 directory: `manual_dir` itself or its child."""
  nested = os.path.join(manual_dir, DIR_NAME)
  if os.path.isdir(nested):
    return nested
  if os.path.isdir(os.path.join(manual_dir, "Images")):
    return manual_dir
  raise FileNotFoundError(f"{NAME}: directory {nested} not found (manual_dir must be it or its parent)")


def _split_list(root: str, file_name: str) -> list[str]:
  """Image stems listed in the TextonBoost list `file_name` (raises FileNotFoundError)."""
  candidates = [os.path.join(root, d, file_name) for d in _LIST_DIRS]
  for path in candidates:
    if os.path.isfile(path):
      lines = folder.read_list(path, f"{NAME} split list {file_name}")
      return [os.path.splitext(os.path.basename(line))[0] for line in lines]
  raise FileNotFoundError(
      f"{NAME}: split list {file_name} not found (looked for {', '.join(candidates)}). The standard "
      f"split of Shotton et al. (TextonBoost, ECCV 2006) is not part of Microsoft's MSRC-v2 download: "
      f"get its Train.txt, Validation.txt and Test.txt (TextonBoostSplits.zip, one image file name per "
      f"line, e.g. 1_1_s.bmp) and put them in {root}.")


def _check_disjoint(splits: dict[str, list[str]]) -> None:
  """Raises ValueError when an image is listed in both train and test (leakage)."""
  both = sorted(set(splits["train"]) & set(splits["test"]))
  if both:
    raise ValueError(f"{NAME}: images {both[:10]} are listed in both the train and the test split lists")


def _record(root: str, stem: str) -> folder.Record:
  return folder.Record(id=stem, image=os.path.join(root, "Images", stem + ".bmp"),
                       label=os.path.join(root, "GroundTruth", stem + "_GT.bmp"))


def _unknown_colours_message(path: str, codes: np.ndarray, counts: np.ndarray) -> str:
  """BadRecord text naming up to 5 unknown colours (most frequent first) and their pixel counts."""
  order = np.argsort(-counts, kind="stable")[:5]
  listed = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255}): {n} px"
                     for c, n in zip(codes[order].tolist(), counts[order].tolist()))
  more = f" and {len(codes) - 5} more" if len(codes) > 5 else ""
  return f"{path}: colours that are not MSRC-v2 classes: {listed}{more}"


def colours_to_ids(rgb: np.ndarray, path: str) -> np.ndarray:
  """Maps an (H, W, 3) MSRC-v2 ground truth to uint8 class ids (raises folder.BadRecord)."""
  codes, inverse, counts = np.unique(_code(rgb), return_inverse=True, return_counts=True)
  ids = np.array([_TABLE.get(int(c), -1) for c in codes], np.int64)
  unknown = ids < 0
  if unknown.any():
    raise folder.BadRecord(_unknown_colours_message(path, codes[unknown], counts[unknown]))
  return ids.astype(np.uint8)[inverse.reshape(rgb.shape[:2])]


class Builder(folder.FolderBuilder, skip_registration=True):
  """MSRC-v2: 21 classes (horse and mountain excluded), TextonBoost train+val / test split."""

  name = "incseg_msrc"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 21 classes, horse / mountain / void ignored.",
                   "1.1.0": "each image's class list includes id 0 (building, a real class: 1.0.0 left it out, so "
                            "an image holding only building was never chosen)"}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="TextonBoost split.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download MSRC-v2 (MSRC_ObjCategImageDatabase_v2.zip, Microsoft Research
  Cambridge object recognition image database) and unzip it. Add the three
  list files of the standard split of Shotton et al. (TextonBoost), which are
  not in that zip. Point manual_dir at the unzipped directory or its parent:

    <manual_dir>/MSRC_ObjCategImageDatabase_v2/Images/<name>.bmp
    <manual_dir>/MSRC_ObjCategImageDatabase_v2/GroundTruth/<name>_GT.bmp
    <manual_dir>/MSRC_ObjCategImageDatabase_v2/{Train,Validation,Test}.txt
      (one image file name per line, e.g. 1_1_s.bmp; may also sit in a
      splits/ or TextonBoostSplits/ subdirectory)

  "train" = Train + Validation (335 images), "test" = Test (256).
  """
  NUM_CLASSES = NUM_CLASSES
  IGNORE_LABEL = IGNORE_LABEL
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE
  FIRST_LISTED_CLASS = 0  # building is a real class

  def list_records(self, root: str) -> dict[str, list[folder.Record]]:
    root = find_root(root)
    folder.require_dir(os.path.join(root, "Images"), f"{NAME} images")
    folder.require_dir(os.path.join(root, "GroundTruth"), f"{NAME} ground truth")
    stems = {split: [s for name in lists for s in _split_list(root, name)]
             for split, lists in SPLIT_LISTS.items()}
    _check_disjoint(stems)
    return {split: [_record(root, s) for s in names] for split, names in stems.items()}

  def read_label(self, path: str) -> np.ndarray:
    if not os.path.isfile(path):
      raise folder.BadRecord(f"ground truth not found: expected {path}")
    image = folder.open_image(path)
    return colours_to_ids(np.asarray(image.convert("RGB")), path)
