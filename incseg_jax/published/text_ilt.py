"""The first paper's (Michieli & Zanuttigh, CVIU 2021) result tables, read from its plain-text copy.

The copy lost most table headers: a table is its caption line `Table n: ...`
(continued up to a blank line or the first row), then one line per row whose
last words are the numbers (`-` where the paper prints none). A row label
set with sub- and superscripts is broken over lines: `Lcls−T`, a blank line,
then `D 92.6 85.7 ...`; a line whose label starts with the subscript `D`
takes the lines above it back to the one that starts the label (`L...`,
`EF`, `E2LF`). A table ends with the row M0(0-N), the model trained on every
class at once (our `joint`); the other reference row M0(0-a) is the step-0
model, and a and N give the scenario's class counts.

Two layouts, told apart by the text:
  * per-class tables (1-7, 10, 11, 13-15; no header, or one broken into
    letters): the IoU of classes 0..a, their mean ("mIoU old", class 0
    included), the IoU of each added class, their mean (only when more than one
    is added), mIoU, mPA, mCA. The layout is checked on every row: the
    number count, the step-0 model's `-` on the added classes, and each
    printed mean against the mean of the per-class values it summarises. Only
    the means are recorded (old, new, mIoU, mPA, mCA).
  * summary tables (16-18, S1-S3): a header `mIoU old mIoU new mIoU`, once, or
    twice under `ImageNet pre-training MSCOCO pre-training`.

The scenario comes from the caption ("the last class", "5 classes are added
at once / sequentially / two times") and the number of classes from the
M0 rows; the dataset (VOC2012, MSRC-v2), the labeling ("Incremental labeling
results": old classes labelled background) and the class order ("ordered
based on the occurrence") from the caption. MSRC's order is frequency for
every table: the text says so once (sec. 6.5), and the check is that it does.
"""

from __future__ import annotations

import re

from incseg_jax.published import records
from incseg_jax.published import rownames

PAPER = "ilt"
MARKER = "Knowledge Distillation for Incremental Learning in\nSemantic Segmentation"
CAPTION = re.compile(r"^\s*Table (S?\d+): (.*)$")
_NUMBER = re.compile(r"^(\d+(\.\d+)?|-)$")
_LABEL_START = re.compile(r"^(L|EF|E2LF)")
# Sec. 6.5's sentence, split in the copy by Tables 13-15 between "oc-" and "currence".
_MSRC_ORDER = (re.compile(r"We sort the classes according to their oc-\s*$", re.M),
               re.compile(r"^currence inside the dataset and we perform three experiments", re.M))
# How far a printed mean may be from the mean of the per-class values it summarises (both rounded to 0.1).
_MEAN_TOLERANCE = 0.1
SKIPPED = {
    "8": "mIoU, mPA and mCA after each step (M1..M5) of Table 7's methods; the final step repeats Table 7",
    "9": "per-class IoU after each step of one method (EF + Lcls-T D)",
    "12": "its cells repeat the mIoU columns of Tables S1-S3 (ImageNet / MSCOCO pre-training)",
    "S4": "differences between Tables S1-S3's numbers, not results",
    "S5": "ablation of the layers L_D^dec distils (variants with no preset here); its EF, Lenc and Ldec rows "
          "repeat Table S3's MSCOCO columns",
    **{f"S{n}": "per-class pixel accuracy; its mIoU, mPA and mCA repeat the corresponding IoU table"
       for n in range(6, 12)},
}


def first_sentence(caption: str) -> str:
  m = re.match(r"^(.*?\.)(?=\s|$)", caption.strip())
  return m.group(1) if m else caption.strip()


def _split(line: str) -> tuple[str, list[str]]:
  """(label, trailing numbers) of a line; the numbers are empty for a line that is not a row."""
  words = line.split()
  k = len(words)
  while k > 0 and _NUMBER.match(words[k - 1]):
    k -= 1
  if len(words) - k < 3 or k == 0:
    return line.strip(), []
  return " ".join(words[:k]), words[k:]


def _caption(lines: list[str], i: int) -> tuple[str, int]:
  """The caption starting at line i (continued to a blank line or a row) and the index after it."""
  text = [CAPTION.match(lines[i]).group(2).strip()]
  j = i + 1
  while j < len(lines) and lines[j].strip() and not _split(lines[j])[1]:
    text.append(lines[j].strip())
    j += 1
  return " ".join(text), j


def _rows(lines: list[str], start: int, where: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
  """The rows from `start` to the second M0 row, and the lines before the first row (a header, if any)."""
  rows, header, m0 = [], [], 0
  for j in range(start, len(lines)):
    if CAPTION.match(lines[j]):
      break
    label, numbers = _split(lines[j])
    if not numbers:
      if not rows:
        header.append(lines[j].strip())
      continue
    if label == "D" or label.startswith("D "):
      parts, k = [label], j - 1
      while True:
        if k < start or _split(lines[k])[1]:
          raise ValueError(f"{where}: the row label ending {label!r} (line {j + 1}) has no start above it")
        if lines[k].strip():
          parts.insert(0, lines[k].strip())
          if _LABEL_START.match(lines[k].strip()):
            break
        k -= 1
      label = " ".join(" ".join(parts).split())
    rows.append((label, numbers))
    if rownames.STEP0_LABEL.match(label):
      m0 += 1
      if m0 == 2:
        return rows, header
  raise ValueError(f"{where}: no two M0(0-k) reference rows before the next table")


def _scenario(caption: str, total: int, where: str) -> tuple[str, int]:
  """(our scenario, number of step-0 classes besides class 0) from the caption and the number of classes."""
  if "when the last class" in caption:
    return f"{total - 1}-1", total - 1
  m = re.search(r"when (?:the )?(\d+) classes are added\s+(at\s+once|sequentially|two times)", caption)
  if not m:
    raise ValueError(f"{where}: no scenario in the caption {caption!r}")
  n, how = int(m.group(1)), m.group(2).split()[0]
  if how == "at":
    return f"{total - n}-{n}", total - n
  if how == "sequentially":
    return f"{total - n}-1", total - n
  return f"{total - 2 * n}-{n}-{n}", total - 2 * n


def _mean_mismatches(label: str, values: list[str], spans: list[tuple[int, int, int]]) -> list[str]:
  """Each printed mean at index i that is not the mean of values[a:b] (spans of (i, a, b)), described."""
  out = []
  for i, a, b in spans:
    parts = [float(v) for v in values[a:b] if v != "-"]
    if values[i] == "-" or not parts:
      continue
    if abs(sum(parts) / len(parts) - float(values[i])) > _MEAN_TOLERANCE + 1e-9:
      out.append(f"row {label!r}: printed mean {values[i]} at position {i + 1}, mean of positions {a + 1}-{b} "
                 f"{sum(parts) / len(parts):.2f}")
  return out


def _dataset_order(caption: str, text: str, where: str) -> tuple[str, str]:
  """(dataset, class order as our config names it) of a table."""
  if "VOC2012" in caption:
    return "voc", ("ilt_frequency" if "occurrence" in caption else "dataset")
  if "MSRC-v2" in caption:
    if not all(p.search(text) for p in _MSRC_ORDER):
      raise ValueError(f"{where}: the text no longer says that the MSRC classes are sorted by occurrence")
    return "msrc", "frequency"
  raise ValueError(f"{where}: no known dataset in the caption {caption!r}")


def _layout(header: list[str], base: int, total: int) -> tuple[int, list[tuple], list[tuple[int, int, int]]]:
  """(numbers per row, recorded columns, mean checks) of a table whose step 0 has classes 0..base of 0..total.

  Recorded columns are (position, column, role, first, last, pretrain); mean
  checks (position of a mean, first and end position of what it averages).
  """
  new = total - base
  old_col, new_col = f"0-{base}", (f"{base + 1}-{total}" if new > 1 else f"{total}")
  if any(h.split()[-5:] == ["mIoU", "old", "mIoU", "new", "mIoU"] for h in header):
    pre = [h for h in header if "pre-training" in h]
    groups = [g.lower() for g in re.findall(r"(ImageNet|MSCOCO) pre-training", pre[0])] if pre else [""]
    columns = [(old_col, "old", 0, base), (new_col, "new", base + 1, total), ("mIoU", "all", None, None)]
    layout = [(3 * g + k, *column, pretrain) for g, pretrain in enumerate(groups) for k, column in enumerate(columns)]
    return 3 * len(groups), layout, []
  width = (base + 1) + 1 + new + (1 if new > 1 else 0) + 3
  new_at = base + 2 + new if new > 1 else base + 2
  layout = [(base + 1, old_col, "old", 0, base, ""), (new_at, new_col, "new", base + 1, total, ""),
            (width - 3, "mIoU", "all", None, None, ""), (width - 2, "mPA", "mpa", None, None, ""),
            (width - 1, "mCA", "mca", None, None, "")]
  checks = [(base + 1, 0, base + 1)] + ([(new_at, base + 2, base + 2 + new)] if new > 1 else [])
  return width, layout, checks


def _table(text: str, lines: list[str], i: int) -> records.Table:
  number = CAPTION.match(lines[i]).group(1)
  caption, start = _caption(lines, i)
  where = f"Michieli & Zanuttigh Table {number}"
  table = records.Table(PAPER, number, caption)
  if number in SKIPPED:
    table.reason = SKIPPED[number]
    return table
  rows, header = _rows(lines, start, where)
  base, total = [int(m.group(1)) for m in (rownames.STEP0_LABEL.match(label) for label, _ in rows) if m]
  scenario, expected_base = _scenario(caption, total, where)
  if base != expected_base:
    raise ValueError(f"{where}: the caption gives scenario {scenario}, but the step-0 row is M0(0-{base})")
  dataset, order = _dataset_order(caption, text, where)
  labeling = "background" if caption.startswith("Incremental labeling results") else "keep"
  width, layout, checks = _layout(header, base, total)
  for label, values in rows:
    if len(values) != width:
      raise ValueError(f"{where}, row {label!r}: {len(values)} numbers, expected {width} for scenario {scenario}")
    step0 = rownames.STEP0_LABEL.match(label)
    if step0:
      method, note = (rownames.STEP0 if int(step0.group(1)) == base else "joint"), ""
    else:
      method, note = rownames.method(PAPER, label, where)
    if checks:
      added = values[base + 2:base + 2 + total - base]
      if (method == rownames.STEP0) != all(v == "-" for v in added):
        raise ValueError(f"{where}, row {label!r}: the added classes' IoUs {added} do not fit the layout "
                         "(only the step-0 model has none)")
      table.notes += _mean_mismatches(label, values, checks)
    for position, column, role, first, last, pretrain in layout:
      if values[position] == "-":
        continue
      table.cells.append(records.Cell(
          paper=PAPER, table=number, caption=first_sentence(caption), row=label, method=method, dataset=dataset,
          scenario=scenario, setting="sequential", labeling=labeling, order=order, pretrain=pretrain,
          column=column, role=role, first=first, last=last, value=values[position], note=note))
  return table


def parse(text: str) -> list[records.Table]:
  """Every table of the first paper (and its supplement): transcribed, or skipped with the reason (`SKIPPED`).

  Raises:
    ValueError: a table whose text does not fit the layouts of the module
      docstring (the table, the row and what was found are named).
  """
  lines = text.splitlines()
  return [_table(text, lines, i) for i, line in enumerate(lines) if CAPTION.match(line)]
