"""The transcribed data: one `Cell` per number of a table, one `Table` per table of a paper, and their files.

Files in `incseg_jax/published/data/`:
  `<paper>.csv`  one line per cell (`CELL_FIELDS`), values as printed (in %);
  `tables.json`  every table of both papers: caption, and either what was
                 transcribed (keys, rows, cells) or why it was not.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any, Sequence

from incseg_jax.published import keys as keys_lib

CELL_FIELDS = ("paper", "table", "caption", "row", "method", "dataset", "scenario", "setting", "labeling", "order",
               "pretrain", "column", "role", "first", "last", "value", "note")
# What a column holds: mIoU of the step-0 classes, of the classes added later, of every class, of the classes of
# one later step (ADE20K 100-10 / 50-50), mean pixel accuracy, mean class accuracy.
ROLES = ("old", "new", "all", "step", "mpa", "mca")
TABLES_FILE = "tables.json"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One number of a published table.

  Attributes:
    paper: `ilt` (Michieli & Zanuttigh, CVIU 2021) or `ucd` (Yang et al.).
    table: the table's number as printed (`1`, `S2`).
    caption: the caption's first sentence.
    row: the row label as printed (whitespace collapsed; the first paper's
      sub- and superscripts come out as separate words, e.g. `Lcls−T D`).
    method: our method name, `M0` for the first paper's step-0 model, or ""
      when no preset here matches the row (`note` says why).
    dataset, scenario, setting, labeling, order, pretrain: the experiment
      (`keys.Key` fields; labeling and order written in full, "" when none).
    column: the column as printed, or for the first paper's tables without a
      header row its class range (`0-15`, `16-20`) or `mIoU` / `mPA` / `mCA`.
    role: one of `ROLES`.
    first, last: the column's classes in the paper's numbering (0 = the
      background channel, MSRC's class 0), None for `all`, `mpa`, `mca`.
    value: the number as printed, in %.
    note: how the row maps to ours when that needs saying.
  """
  paper: str
  table: str
  caption: str
  row: str
  method: str
  dataset: str
  scenario: str
  setting: str
  labeling: str
  order: str
  pretrain: str
  column: str
  role: str
  first: int | None
  last: int | None
  value: str
  note: str = ""

  @property
  def key(self) -> keys_lib.Key:
    return keys_lib.Key.make(self.dataset, self.scenario, self.setting, self.labeling, self.order, self.pretrain)

  @property
  def table_id(self) -> str:
    return f"{self.paper}/{self.table}"


@dataclasses.dataclass
class Table:
  """One table of a paper: transcribed (`cells`) or skipped (`reason`); `notes`: what the text got wrong."""
  paper: str
  table: str
  caption: str
  cells: list[Cell] = dataclasses.field(default_factory=list)
  reason: str = ""
  notes: list[str] = dataclasses.field(default_factory=list)

  @property
  def id(self) -> str:
    return f"{self.paper}/{self.table}"

  def summary(self) -> dict[str, Any]:
    """The table's entry in tables.json."""
    out: dict[str, Any] = {"id": self.id, "paper": self.paper, "table": self.table, "caption": self.caption}
    if self.reason:
      out.update(status="skipped", reason=self.reason)
      return out
    keys = list(dict.fromkeys(str(c.key) for c in self.cells))
    rows = list(dict.fromkeys(c.row for c in self.cells))
    out.update(status="transcribed", dataset=self.cells[0].dataset, keys=keys, rows=len(rows),
               cells=len(self.cells))
    if self.notes:
      out["notes"] = list(self.notes)
    return out


def cells_csv(cells: Sequence[Cell]) -> str:
  out = io.StringIO()
  w = csv.writer(out, lineterminator="\n")
  w.writerow(CELL_FIELDS)
  for c in cells:
    d = dataclasses.asdict(c)
    w.writerow(["" if d[f] is None else d[f] for f in CELL_FIELDS])
  return out.getvalue()


def read_cells_csv(text: str, source: str) -> list[Cell]:
  """Parses a `<paper>.csv` written by `cells_csv`.

  Raises:
    ValueError: the header is not `CELL_FIELDS`, or a line has a bad field (the file and line are named).
  """
  reader = csv.reader(io.StringIO(text))
  header = next(reader, None)
  if tuple(header or ()) != CELL_FIELDS:
    raise ValueError(f"{source}: header {header} is not {list(CELL_FIELDS)} (rerun "
                     "python -m incseg_jax.published.transcribe)")
  cells = []
  for n, line in enumerate(reader, start=2):
    d = dict(zip(CELL_FIELDS, line))
    try:
      if len(line) != len(CELL_FIELDS) or d["role"] not in ROLES:
        raise ValueError("wrong number of fields or an unknown role")
      float(d["value"])
      for f in ("first", "last"):
        d[f] = int(d[f]) if d[f] != "" else None
    except ValueError as e:
      raise ValueError(f"{source}, line {n}: {e}: {line}") from None
    cells.append(Cell(**d))
  return cells


def tables_json(tables: Sequence[Table], papers: dict[str, Any]) -> str:
  return json.dumps({"papers": papers, "tables": [t.summary() for t in tables]}, indent=1, ensure_ascii=False) + "\n"
