"""Shared machinery of the real-dataset tfds builders (VOC, ADE20K, Cityscapes, MSRC).

Each real dataset is read from the directory its publisher ships (tfds
`manual_dir`) and written once into tfds records. A dataset module subclasses
`FolderBuilder` and supplies two things:

* `list_records(root)`: split name -> list of `Record` (id, image path, label
  path), found from the official list files / folder layout. A missing
  directory or list file raises `FileNotFoundError` naming it.
* `read_label(path)`: the mask as uint8 class ids (H, W) with the dataset's
  ignore label, raising `BadRecord(reason)` for e.g. an unknown colour.

The base class does the rest, identically for every dataset: it decodes every
image and mask once (in a thread pool), checks that the image decodes, that
the mask has the image's size and only holds known class ids or the ignore
label, and stores per example the original image bytes (JPEG stays JPEG), the
mask as PNG, the list of classes present, the per-class pixel counts and the
size. Bad records of every split are collected and reported together in one
error after all splits were read, one line per file with the reason; `skip_bad_records=True` leaves them out instead and
prints (and stores in the dataset metadata) how many were skipped.

The records also store what they were built from (metadata `source`: the real
path of `manual_dir` and a sha256 of its files' relative paths and sizes);
`prepare` refuses to reuse them for another `manual_dir` or a changed tree
unless `rebuild=True` (`config.dataset.rebuild`), and names records of an
older builder version.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import shutil
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

# Formats whose bytes are stored unchanged; anything else (e.g. BMP, which
# not every TF decode op reads) is re-encoded as PNG.
_KEEP_FORMATS = frozenset({"JPEG", "PNG"})
_CHUNK = 64  # records decoded concurrently (bounds memory on 20k-image splits)
_MAX_LISTED = 50  # bad records listed in one error message


class BadRecord(ValueError):
  """One image/mask pair that cannot be used; the message is the reason."""


class BadRecordsError(ValueError):
  """Some records of a dataset are unusable; the message lists each with its reason."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One example on disk.

  Attributes:
    id: unique example id (the file stem, e.g. "2007_000032").
    image: path of the image file.
    label: path of the ground-truth file.
  """
  id: str
  image: str
  label: str


def source_fingerprint(manual_dir: str) -> dict:
  """What records are built from: the directory (real path) and a cheap fingerprint of its tree.

  The fingerprint is the sha256 of every file's relative path and size, in
  sorted order (no contents are read: one `stat` per file).
  """
  root = os.path.realpath(manual_dir)
  entries = []
  for parent, dirs, names in os.walk(root):
    dirs.sort()
    for name in names:
      path = os.path.join(parent, name)
      try:
        size = os.stat(path).st_size
      except OSError:  # a dangling link
        size = -1
      entries.append(f"{os.path.relpath(path, root)}\t{size}\n")
  entries.sort()
  digest = hashlib.sha256("".join(entries).encode()).hexdigest()
  total = sum(max(int(e.rsplit("\t", 1)[1]), 0) for e in entries)
  return {"dir": root, "files": len(entries), "bytes": total, "sha256": digest}


def read_list(path: str, what: str) -> list[str]:
  """Non-empty stripped lines of a list file.

  Raises:
    FileNotFoundError: the file does not exist (names it and `what`).
    ValueError: the file has no entries.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}: list file {path} not found")
  with open(path) as f:
    lines = [line.strip() for line in f if line.strip()]
  if not lines:
    raise ValueError(f"{what}: list file {path} is empty")
  return lines


def require_dir(path: str, what: str) -> str:
  """Returns `path`, or raises FileNotFoundError naming it and `what`."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{what}: directory {path} not found")
  return path


def single_config(dataset: str, requested: str | None) -> str:
  """The builder config of a dataset that has only "default" ("", "auto" accepted too).

  Raises:
    ValueError: another name (the message lists the valid ones).
  """
  if (requested or "").strip().lower() in ("", "auto", "default"):
    return "default"
  raise ValueError(f"{dataset}: unknown builder config {requested!r}; valid: 'default' (or '' / 'auto')")


def open_image(path: str) -> Image.Image:
  """Opens and fully decodes an image file, raising BadRecord on any failure."""
  if not os.path.isfile(path):
    raise BadRecord(f"file not found: {path}")
  try:
    with open(path, "rb") as f:
      data = f.read()
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes now: a truncated or corrupt file fails here
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many types)
    reason = "not a recognised image format" if type(e).__name__ == "UnidentifiedImageError" else f"{type(e).__name__}: {e}"
    raise BadRecord(f"cannot decode {path}: {reason}") from None
  image.info["_bytes"] = data
  return image


def check_label(label: np.ndarray, num_classes: int, ignore_label: int, path: str) -> None:
  """Raises BadRecord when `label` holds a value that is neither a class id nor ignore."""
  values = np.unique(label)
  bad = [int(v) for v in values if v >= num_classes and v != ignore_label]
  if bad:
    raise BadRecord(f"{path}: label values {bad[:10]} are outside the classes 0..{num_classes - 1} "
                    f"and the ignore label {ignore_label}")


def _listed(lines: list[str]) -> str:
  """At most _MAX_LISTED lines, then how many more."""
  more = f"\n  ... and {len(lines) - _MAX_LISTED} more" if len(lines) > _MAX_LISTED else ""
  return "\n  ".join(lines[:_MAX_LISTED]) + more


class FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders that read a publisher's directory layout (see module doc).

  Subclasses set `name`, `VERSION`, `RELEASE_NOTES`, `MANUAL_DOWNLOAD_INSTRUCTIONS`,
  NUM_CLASSES, IGNORE_LABEL, CLASS_NAMES and PALETTE, and implement
  `list_records` and `read_label`.
  """
  NUM_CLASSES: int = 0
  IGNORE_LABEL: int = 255
  # The first class id listed in an example's "classes": 1 where label 0 is a
  # background or void that selects no image (VOC, ADE20K, Cityscapes), 0 where
  # it is a real class (MSRC's building).
  FIRST_LISTED_CLASS: int = 1
  CLASS_NAMES: tuple[str, ...] = ()
  PALETTE: np.ndarray = np.zeros((0, 3), np.uint8)

  def __init__(self, *, skip_bad_records: bool = False, **kwargs):
    super().__init__(**kwargs)
    self._skip_bad_records = skip_bad_records

  # --- to implement -----------------------------------------------------------
  def list_records(self, root: str) -> dict[str, list[Record]]:
    """Split name -> records, from the official lists/layout under `root`."""
    raise NotImplementedError

  def read_label(self, path: str) -> np.ndarray:
    """The mask at `path` as uint8 (H, W) class ids / IGNORE_LABEL."""
    raise NotImplementedError

  # --- tfds -------------------------------------------------------------------
  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly (not dataset_info_from_configs): no metadata files
    # are looked up next to the subclass's module.
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.Image(shape=(None, None, 1)),
            "classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "pixel_counts": tfds.features.Tensor(shape=(self.NUM_CLASSES,), dtype=np.int64),
            "size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(class_names=list(self.CLASS_NAMES),
                                        palette=np.asarray(self.PALETTE).tolist(), skipped_records={}),
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    records = self.list_records(os.fspath(root))
    for split, recs in records.items():
      if not recs:
        raise ValueError(f"{self.name}: split {split!r} lists no examples under {root}")
      ids = [r.id for r in recs]
      if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:10]
        raise ValueError(f"{self.name}: split {split!r} lists duplicate ids {dup}")
    return {split: self._generate_examples(split, recs) for split, recs in records.items()}

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    self._bad: dict[str, tuple[int, list[str]]] = {}
    # Stored with the records: a later run whose manual_dir differs or changed is told (see `prepare`).
    self.info.metadata["source"] = source_fingerprint(os.fspath(dl_manager.manual_dir))
    super()._download_and_prepare(dl_manager, download_config)
    if self._bad and not self._skip_bad_records:
      # Every split has been read, so all bad records are reported at once.
      # Raising here aborts the build: tfds keeps nothing half-written.
      total = sum(len(lines) for _, lines in self._bad.values())
      raise BadRecordsError(
          f"{self.name}: {total} unusable records:\n" +
          "\n".join(f"{len(lines)} of {n} records of split {split!r}:\n  {_listed(lines)}"
                    for split, (n, lines) in self._bad.items()) +
          "\nFix them, or pass --config.dataset.skip_bad_records=True to leave them out.")

  def _generate_examples(self, split: str, records: list[Record]) -> Iterator[tuple[str, dict]]:  # pylint: disable=arguments-differ
    bad: list[str] = []
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for start in range(0, len(records), _CHUNK):
        chunk = records[start:start + _CHUNK]
        for record, result in zip(chunk, pool.map(self._safe_example, chunk)):
          if isinstance(result, str):
            bad.append(f"{record.id}: {result}")
          else:
            yield record.id, result
    if bad:
      self._bad[split] = (len(records), bad)
      if self._skip_bad_records:
        print(f"{self.name}: skipped {len(bad)} of {len(records)} records of split {split!r}:\n  {_listed(bad)}",
              flush=True)
        self.info.metadata["skipped_records"][split] = len(bad)

  def _safe_example(self, record: Record) -> dict | str:
    try:
      return self.make_example(record)
    except BadRecord as e:
      return str(e)

  def make_example(self, record: Record) -> dict:
    """Decodes and checks one record; returns its feature dict (raises BadRecord)."""
    image = open_image(record.image)
    if image.mode not in ("RGB", "L", "P", "RGBA", "CMYK"):
      raise BadRecord(f"{record.image}: unsupported image mode {image.mode}")
    label = self.read_label(record.label)
    if label.ndim != 2:
      raise BadRecord(f"{record.label}: mask must be 2-D, got shape {label.shape}")
    width, height = image.size
    if label.shape != (height, width):
      raise BadRecord(f"{record.label}: mask is {label.shape[1]}x{label.shape[0]} (WxH) but the image "
                      f"{record.image} is {width}x{height}")
    label = label.astype(np.uint8)
    check_label(label, self.NUM_CLASSES, self.IGNORE_LABEL, record.label)
    if image.format in _KEEP_FORMATS and image.mode == "RGB":
      encoded = io.BytesIO(image.info["_bytes"])
    else:
      encoded = np.asarray(image.convert("RGB"))
    counts = np.bincount(label.ravel(), minlength=256)[:self.NUM_CLASSES].astype(np.int64)
    first = self.FIRST_LISTED_CLASS
    return {
        "image": encoded,
        "label": label[..., None],
        "classes": (np.flatnonzero(counts[first:]) + first).astype(np.int32),
        "pixel_counts": counts,
        "size": np.asarray([height, width], np.int32),
        "id": record.id,
    }


_REBUILD = "--config.dataset.rebuild=True"


def _size(n: int, b: int) -> str:
  return f"{n:,} files, {b:,} bytes"


def check_source(builder, manual_dir: str) -> None:
  """Checks that built records come from `manual_dir` as it is now (see `source_fingerprint`).

  Records of an older version, which recorded no source, are accepted with a
  one-line note; without `manual_dir` there is nothing to compare.

  Raises:
    ValueError: `manual_dir` is another directory, or its tree changed since the build (both named).
  """
  source = dict(builder.info.metadata.get("source", None) or {})
  where = f"the {builder.name} records in {builder.data_dir}"
  if not source:
    print(f"note: {where} were built by an older version that did not record their source directory; reusing "
          f"them (pass {_REBUILD} with config.dataset.manual_dir to rebuild them)", flush=True)
    return
  if not manual_dir:
    return
  now = os.path.realpath(manual_dir)
  if now != source["dir"]:
    raise ValueError(f"config.dataset.manual_dir={manual_dir!r} ({now}) is not the directory {where} were built "
                     f"from ({source['dir']}); pass {_REBUILD} to rebuild them from {now} (once), or point "
                     f"config.dataset.manual_dir at {source['dir']}")
  if not os.path.isdir(now):
    raise FileNotFoundError(f"config.dataset.manual_dir={manual_dir!r}: directory not found")
  current = source_fingerprint(now)
  if current["sha256"] != source["sha256"]:
    raise ValueError(f"{now} has changed since {where} were built from it (files added, removed or resized: then "
                     f"{_size(source['files'], source['bytes'])}, now {_size(current['files'], current['bytes'])}); "
                     f"pass {_REBUILD} to rebuild them from it (once), or restore the directory as it was")


def prepare(builder_cls, *, data_dir: str, manual_dir: str, config: str | None = None,
            skip_bad_records: bool = False, rebuild: bool = False):
  """Builds the records of a FolderBuilder once (idempotent) and returns the builder.

  Args:
    builder_cls: the dataset's FolderBuilder subclass.
    data_dir: tfds data directory where the records are written.
    manual_dir: the publisher's directory (read when records are missing; its
      path and tree are compared with those the records were built from).
    config: builder config name, or None for the default.
    skip_bad_records: leave unusable records out instead of failing.
    rebuild: delete built records and build them again from `manual_dir`,
      unless they were built from it as it is now.

  Raises:
    FileNotFoundError: the records are not built yet (or `rebuild`) and
      `manual_dir` is empty or missing.
    ValueError: built records come from another directory or an older state
      of `manual_dir` (`check_source`).
  """
  tfds.disable_progress_bar()
  builder = builder_cls(data_dir=data_dir, config=config, skip_bad_records=skip_bad_records)
  if builder.is_prepared() and not rebuild:
    check_source(builder, manual_dir)
    return builder
  if builder.is_prepared() and manual_dir and builder.info.metadata.get("source", None):
    try:
      check_source(builder, manual_dir)
    except (ValueError, FileNotFoundError):
      pass  # they differ: rebuilt below
    else:  # a flag left on (e.g. in a sweep) never rebuilds records that match their source
      print(f"{_REBUILD}: the {builder_cls.name} records in {builder.data_dir} were built from {manual_dir} as it "
            "is now; not rebuilt", flush=True)
      return builder
  if not builder.is_prepared():
    _explain_older_version(builder_cls, builder, manual_dir)
  elif not manual_dir:
    raise FileNotFoundError(f"{_REBUILD}: config.dataset.manual_dir is not set; point it at the directory to "
                            f"rebuild the {builder_cls.name} records in {builder.data_dir} from")
  if not manual_dir:
    raise FileNotFoundError(
        f"dataset {builder_cls.name} is not built in {data_dir} and config.dataset.manual_dir is not set; "
        f"point it at the dataset's directory:\n{builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"config.dataset.manual_dir={manual_dir!r}: directory not found")
  if not os.listdir(manual_dir):
    raise FileNotFoundError(f"config.dataset.manual_dir={manual_dir!r} is empty; expected:\n"
                            f"{builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if builder.is_prepared():  # rebuild: manual_dir was checked above, the old records go now
    print(f"{_REBUILD}: deleting the {builder_cls.name} records in {builder.data_dir}", flush=True)
    shutil.rmtree(builder.data_dir)
    builder = builder_cls(data_dir=data_dir, config=config, skip_bad_records=skip_bad_records)
  print(f"building {builder_cls.name} ({builder.builder_config.name if builder.builder_config else 'default'}) "
        f"from {manual_dir} into {data_dir} (once)", flush=True)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return builder


def _explain_older_version(builder_cls, builder, manual_dir: str) -> None:
  """Names records of an older builder version beside the missing ones (rebuilt from `manual_dir`, else refused)."""
  config_dir = os.path.dirname(os.fspath(builder.data_dir))
  current = str(builder_cls.VERSION)
  older = sorted(v for v in (os.listdir(config_dir) if os.path.isdir(config_dir) else [])
                 if v != current and os.path.isfile(os.path.join(config_dir, v, "dataset_info.json")))
  if not older:
    return
  why = builder_cls.RELEASE_NOTES.get(current, "")
  message = (f"the {builder_cls.name} records in {os.path.join(config_dir, older[-1])} were built by version "
             f"{older[-1]}, which this version ({current}) cannot use: {why}")
  if not manual_dir:
    raise FileNotFoundError(f"{message}; point config.dataset.manual_dir at the dataset's directory to build "
                            f"version {current} (once)")
  print(f"note: {message}; building version {current} from {manual_dir}", flush=True)
