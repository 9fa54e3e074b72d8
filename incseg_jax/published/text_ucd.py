"""The second paper's (Yang et al., UCD) result tables, read from its plain-text copy.

The copy keeps each table as tab-separated lines after a caption line
`TABLE n: ...`: one to three header lines (scenarios, then settings when the
table has both, then the class groups; the first cell `Method` or empty),
then one line per method, until a blank line. Header cells span the columns
up to the next filled cell. Bold and underline marks (`<b>`, `<u>`) are
dropped; a `-` cell (not reported) gives no record.

The setting of a column is its header's (`Disjoint` / `Overlapped`), else the
caption's ("... disjoint setting"), else the one sentence of the text that
says which setting a dataset has (Cityscapes: overlapped only).
"""

from __future__ import annotations

import re

from incseg_jax.published import records
from incseg_jax.published import rownames

PAPER = "ucd"
MARKER = "# Uncertainty-aware Contrastive Distillation for Incremental Semantic Segmentation"
CAPTION = re.compile(r"^TABLE (\d+): (.*)$")
_MARKUP = re.compile(r"</?[bu]>")
_NUMBER = re.compile(r"^\d+(\.\d+)?$")
_DATASETS = (("Pascal-VOC 2012", "voc"), ("ADE20K", "ade20k"), ("Cityscapes", "cityscapes"))
# The sentence that gives a dataset's only setting when neither the header nor the caption does.
_PROSE_SETTING = {"cityscapes": re.compile(r"Cityscapes does not allow test on a \*?disjoint\*? setting so we only "
                                           r"propose the \*?(overlapped|disjoint)\*? one")}
SKIPPED = {
    "6": "ablation of UCD's loss components (rows are components added to MiB, not methods)",
    "7": "ablation of UCD's anchor and contrast sets (memory, time, one mIoU)",
    "8": "sensitivity to UCD's temperature",
    "9": "sensitivity to UCD's loss weight",
}


def first_sentence(caption: str) -> str:
  m = re.match(r"^(.*?\.)(?=\s|\\|$)", caption.strip())
  return m.group(1) if m else caption.strip()


def _cells_of(line: str) -> list[str]:
  return [_MARKUP.sub("", c).strip() for c in line.split("\t")]


def _filled(header: list[str]) -> list[tuple[int, str]]:
  """(column, text) of a header line's filled cells (column 0 = the first value column)."""
  return [(j - 1, c) for j, c in enumerate(header) if j > 0 and c]


def _blocks(groups: list[str], where: str) -> list[tuple[int, int]]:
  """[start, end) of each scenario's columns: the class groups of one scenario end with `all` (or `mIoU`)."""
  blocks, start = [], 0
  for j, g in enumerate(groups):
    if g in ("all", "mIoU"):
      blocks.append((start, j + 1))
      start = j + 1
  if start != len(groups) or not blocks:
    raise ValueError(f"{where}: the class-group header {groups} does not end each scenario with all/mIoU")
  return blocks


def _group(label: str, scenario: str, last_class: int, where: str) -> tuple[str, int | None, int | None]:
  """(role, first, last) of a class-group column of `scenario` whose classes end at `last_class`."""
  if label in ("all", "mIoU"):
    return "all", None, None
  m = re.match(r"^(\d+)(?:-(\d+))?$", label)
  if not m:
    raise ValueError(f"{where}: column {label!r} is neither a class range nor all/mIoU")
  first, last = int(m.group(1)), int(m.group(2) or m.group(1))
  base = int(scenario.split("-")[0])
  if (first, last) == (1, base):
    return "old", first, last
  if (first, last) == (base + 1, last_class):
    return "new", first, last
  return "step", first, last


def _columns(text: str, caption: str, dataset: str, headers: list[list[str]],
             where: str) -> tuple[list[str], list[str], list[str], list[str]]:
  """(class group, scenario, setting) of every value column, and notes on a header out of place.

  Columns go to scenarios and settings by blocks (each scenario's class groups
  end with all/mIoU), in header order: the header cells' own tab positions
  are not reliable (Table 3 puts "50-50" one column early).
  """
  groups = headers[-1][1:]
  blocks = _blocks(groups, where)
  scenario_cells = _filled(headers[0])
  if any(not re.match(r"^\d+(-\d+)+$", s) for _, s in scenario_cells) or len(blocks) % len(scenario_cells):
    raise ValueError(f"{where}: scenario header {headers[0]} is not a list of scenarios like 15-5 that share "
                     f"the {len(blocks)} column blocks of {groups}")
  setting_lines = [h for h in headers[1:-1] if {c for c in h[1:] if c} <= {"Disjoint", "Overlapped"}]
  if len(headers) - 2 != len(setting_lines):
    raise ValueError(f"{where}: unexpected header lines {headers[1:-1]}")
  if setting_lines:
    block_settings = [c.lower() for _, c in _filled(setting_lines[0])]
    if len(block_settings) != len(blocks):
      raise ValueError(f"{where}: {len(block_settings)} settings in {setting_lines[0]} for {len(blocks)} blocks")
  else:
    found = re.search(r"\b(disjoint|overlapped) setting", caption)
    prose = _PROSE_SETTING.get(dataset)
    found = found or (prose.search(text) if prose else None)
    if not found:
      raise ValueError(f"{where}: no setting in the header, the caption or the text for {dataset}")
    block_settings = [found.group(1)] * len(blocks)
  per_scenario = len(blocks) // len(scenario_cells)
  scenarios, settings, moved = [""] * len(groups), [""] * len(groups), []
  for k, (start, end) in enumerate(blocks):
    position, scenario = scenario_cells[k // per_scenario]
    if k % per_scenario == 0 and position != start:
      moved.append(f"{scenario!r} at column {position + 1} of the header, its groups from column {start + 1}")
    if groups[start] != f"1-{scenario.split('-')[0]}":
      raise ValueError(f"{where}: the columns of {scenario} start with {groups[start]!r}, not its old classes "
                       f"1-{scenario.split('-')[0]}")
    for j in range(start, end):
      scenarios[j], settings[j] = scenario, block_settings[k]
  notes = [f"scenario header cells out of place ({'; '.join(moved)}): columns assigned by the class groups, "
           "each scenario's ending with all/mIoU"] if moved else []
  return groups, scenarios, settings, notes


def _table(text: str, number: str, caption: str, body: list[str]) -> records.Table:
  where = f"UCD Table {number}"
  table = records.Table(PAPER, number, caption)
  dataset = next((name for printed, name in _DATASETS if printed in caption), None)
  if dataset is None:
    raise ValueError(f"{where}: no known dataset in the caption {caption!r}")
  lines = [_cells_of(line) for line in body]
  headers = [c for c in lines if c[0] in ("Method", "method", "")]
  rows = lines[len(headers):]
  if len(headers) < 2 or not rows or any(c[0] in ("Method", "method", "") for c in rows):
    raise ValueError(f"{where}: expected header lines, then one line per method; got {body[:4]}")
  groups, scenarios, settings, table.notes = _columns(text, caption, dataset, headers, where)
  last_class = {}  # the highest class of each scenario's group columns: the dataset's class count
  for scenario, group in zip(scenarios, groups):
    m = re.match(r"^(\d+)(?:-(\d+))?$", group)
    if m:
      last_class[scenario] = max(last_class.get(scenario, 0), int(m.group(2) or m.group(1)))
  for row in rows:
    label, values = row[0], row[1:]
    if len(values) != len(groups):
      raise ValueError(f"{where}, row {label!r}: {len(values)} values, the header has {len(groups)} columns")
    method, note = rownames.method(PAPER, label, where)
    for j, value in enumerate(values):
      if value == "-":
        continue
      if not _NUMBER.match(value):
        raise ValueError(f"{where}, row {label!r}, column {j + 1}: {value!r} is not a number")
      role, first, last = _group(groups[j], scenarios[j], last_class[scenarios[j]], where)
      table.cells.append(records.Cell(
          paper=PAPER, table=number, caption=first_sentence(caption), row=" ".join(label.split()), method=method,
          dataset=dataset, scenario=scenarios[j], setting=settings[j], labeling="", order="dataset", pretrain="",
          column=groups[j], role=role, first=first, last=last, value=value, note=note))
  return table


def parse(text: str) -> list[records.Table]:
  """Every table of the UCD paper: transcribed, or skipped with the reason (`SKIPPED`).

  Raises:
    ValueError: a table whose text does not have the shape described in the
      module docstring (the table and what was found are named).
  """
  lines = text.splitlines()
  tables = []
  for i, line in enumerate(lines):
    m = CAPTION.match(line.strip())
    if not m:
      continue
    number, caption = m.group(1), m.group(2).strip()
    if number in SKIPPED:
      tables.append(records.Table(PAPER, number, caption, reason=SKIPPED[number]))
      continue
    j = i + 1
    while j < len(lines) and not lines[j].strip():
      j += 1
    body = []
    while j < len(lines) and lines[j].strip():
      body.append(lines[j])
      j += 1
    tables.append(_table(text, number, caption, body))
  return tables
