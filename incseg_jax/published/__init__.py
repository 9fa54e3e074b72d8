"""The two founding papers' published results, as data: what each table reports for each of our methods.

Transcribed from the papers' text by `python -m incseg_jax.published.transcribe`
into `data/` (docs/published.md says what is there and what is not); this
module only reads those files.

  published.rows("voc", "15-5", "overlapped")
    -> {"mib": {"old": 75.5, "new": 49.4, "all": 69.0, ..., "source": "UCD Table 1, row 'MiB [23]'"}, ...}
  published.lookup("voc/19-1/sequential/order=ilt_frequency")   # the same by key (`keys.Key`)
  published.tables()                                             # every table, transcribed or not (and why)
  published.table("ucd/1")                                       # its grid: experiments and methods

Values are in % as printed. Keys and methods are ours: `voc` / `15-5` /
`overlapped`, `mib`, `ef+kd_cls_t`, plus `M0`, the first paper's step-0 model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

from incseg_jax.published import records
from incseg_jax.published import rownames
from incseg_jax.published.keys import Key

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
STEP0 = rownames.STEP0
# The values a row gives, by role: mIoU of the step-0 classes, of the added ones, of all; mPA and mCA.
VALUES = ("old", "new", "all", "mpa", "mca")


@functools.lru_cache(maxsize=None)
def _index() -> dict[str, Any]:
  path = os.path.join(DATA_DIR, records.TABLES_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      index = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read the published tables' index ({e}); rerun "
                     "python -m incseg_jax.published.transcribe") from None
  return index


@functools.lru_cache(maxsize=None)
def cells() -> tuple[records.Cell, ...]:
  """Every transcribed number (`records.Cell`), in table and row order."""
  out = []
  for paper in _index()["papers"]:
    path = os.path.join(DATA_DIR, f"{paper}.csv")
    with open(path, encoding="utf-8") as f:
      out += records.read_cells_csv(f.read(), path)
  return tuple(out)


def papers() -> dict[str, dict[str, str]]:
  """paper id (`ilt`, `ucd`) -> title, authors, venue, short name, the text file it was read from."""
  return dict(_index()["papers"])


def tables() -> list[dict[str, Any]]:
  """Every table of both papers: id (`ucd/1`), caption, status `transcribed` (dataset, keys, rows, cells,
  notes on the text) or `skipped` (reason)."""
  return [dict(t) for t in _index()["tables"]]


def keys() -> list[str]:
  """Every experiment with published numbers (`voc/15-5/overlapped`, ...), in table order."""
  return list(dict.fromkeys(str(c.key) for c in cells()))


@dataclasses.dataclass(frozen=True)
class Grid:
  """What one table covers.

  Attributes:
    id: `ucd/1`.
    caption: the caption as printed.
    dataset: the table's dataset.
    keys: its experiments in table order.
    methods: key (as text) -> our methods in row order (`M0` included, rows
      without a preset left out).
    unmatched: (row as printed, why) of the rows no preset here matches.
  """
  id: str
  caption: str
  dataset: str
  keys: tuple[Key, ...]
  methods: dict[str, tuple[str, ...]]
  unmatched: tuple[tuple[str, str], ...]


def _table_entry(table_id: str) -> dict[str, Any]:
  entries = {t["id"]: t for t in _index()["tables"]}
  if table_id not in entries:
    known = [t["id"] for t in _index()["tables"] if t["status"] == "transcribed"]
    raise ValueError(f"published table {table_id!r}: no such table; transcribed: {', '.join(known)}")
  entry = entries[table_id]
  if entry["status"] != "transcribed":
    raise ValueError(f"published table {table_id!r} was not transcribed: {entry['reason']} (docs/published.md)")
  return entry


def table(table_id: str) -> Grid:
  """The grid of a transcribed table (`ilt/3`, `ucd/1`).

  Raises:
    ValueError: no such table (the transcribed ones are named), or one that was not transcribed (why).
  """
  entry = _table_entry(table_id)
  mine = [c for c in cells() if c.table_id == table_id]
  table_keys = tuple(dict.fromkeys(c.key for c in mine))
  methods = {str(k): tuple(dict.fromkeys(c.method for c in mine if c.key == k and c.method)) for k in table_keys}
  unmatched = tuple(dict.fromkeys((c.row, c.note) for c in mine if not c.method))
  return Grid(table_id, entry["caption"], entry["dataset"], table_keys, methods, unmatched)


def table_name(cell: records.Cell) -> str:
  """`UCD Table 1`."""
  return f"{papers()[cell.paper]['short']} Table {cell.table}"


def source(cell: records.Cell) -> str:
  """`UCD Table 1, row 'MiB [23]'`."""
  return f"{table_name(cell)}, row {cell.row!r}"


def lookup(key: str | Key, table: str | None = None) -> dict[str, dict[str, Any]]:
  """What the papers report for the experiment `key`, per our method (see `rows`).

  Raises:
    ValueError: a malformed key, a key with no published numbers (the known
      keys are named), or a `table` that does not have it.
  """
  key = key if isinstance(key, Key) else Key.parse(key)
  mine = [c for c in cells() if c.key == key and c.method]
  if table is not None:
    entry = _table_entry(table)
    mine = [c for c in mine if c.table_id == table]
    if not mine:
      raise ValueError(f"published key {key}: not in table {table} (its keys: {', '.join(entry['keys'])})")
  if not mine:
    raise ValueError(f"published key {key}: no published numbers; known keys: {', '.join(keys())}")
  out: dict[str, dict[str, Any]] = {}
  for c in mine:
    row = out.setdefault(c.method, {**{v: None for v in VALUES}, "columns": {}, "spans": {}, "steps": {},
                                    "source": source(c), "table": c.table_id, "table_name": table_name(c),
                                    "row": c.row, "note": c.note})
    if c.role == "step":
      row["steps"][c.column] = float(c.value)
      continue
    row[c.role] = float(c.value)
    row["columns"][c.role] = c.column
    if c.first is not None:
      row["spans"][c.role] = (c.first, c.last)
  return out


def rows(dataset: str, scenario: str, setting: str, *, labeling: str | None = None, order: str | None = None,
         pretrain: str | None = None, table: str | None = None) -> dict[str, dict[str, Any]]:
  """What the papers report for one experiment, per our method.

  Args:
    dataset, scenario, setting: e.g. "voc", "15-5", "overlapped".
    labeling: "background" for the first paper's incremental labeling.
    order: a class order other than the dataset's default (VOC: "ilt_frequency").
    pretrain: "imagenet" / "mscoco" for the first paper's Tables S1-S3.
    table: only this table's rows (`ucd/1`).

  Returns:
    our method (or "M0") -> {"old", "new", "all", "mpa", "mca": value in % or
    None where not reported; "columns": role -> column as printed (`1-15`,
    `0-15`: class 0 included); "spans": role -> (first, last) class of the
    column in the paper's numbering; "steps": per-step columns (ADE20K);
    "source": "UCD Table 1, row 'MiB [23]'"; "table": "ucd/1"; "table_name":
    "UCD Table 1"; "row": as printed; "note": how the row maps to ours}.

  Raises:
    ValueError: see `lookup`.
  """
  return lookup(Key.make(dataset, scenario, setting, labeling, order, pretrain), table)
