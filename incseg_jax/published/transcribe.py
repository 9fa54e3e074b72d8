"""Writes the papers' result tables into `incseg_jax/published/data/`, parsed from their plain-text copies.

  python -m incseg_jax.published.transcribe [--papers=DIR] [--out=DIR]

`--papers` (default `../shared/papers` beside the repository root) holds the
text copies; each paper is found by a line of its own text, not by its file
name. Every number comes from the text by the parsers (`text_ilt`,
`text_ucd`); a table whose text does not have the expected shape stops the
transcription naming the table and row. Tables that are not result tables
of our methods (ablations, per-step evolutions, repeats) are listed with the
reason in `tables.json` and printed. The files written (`--out`, default the
package's `data/`) are committed: the package reads them, never the papers.
tests/published_test.py checks that rerunning this reproduces them exactly.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from incseg_jax.published import records
from incseg_jax.published import text_ilt
from incseg_jax.published import text_ucd

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

PAPERS = {
    "ilt": {"title": "Knowledge distillation for incremental learning in semantic segmentation",
            "authors": "U. Michieli, P. Zanuttigh", "venue": "CVIU 2021", "short": "Michieli & Zanuttigh",
            "marker": text_ilt.MARKER},
    "ucd": {"title": "Uncertainty-aware Contrastive Distillation for Incremental Semantic Segmentation",
            "authors": "G. Yang et al.", "venue": "TPAMI", "short": "UCD", "marker": text_ucd.MARKER},
}
_PARSERS = {"ilt": text_ilt.parse, "ucd": text_ucd.parse}


def default_papers_dir() -> str:
  """`../shared/papers` beside the repository root (where CI checks out the shared material)."""
  return os.path.join(os.path.dirname(REPO_ROOT), "shared", "papers")


def find_papers(papers_dir: str) -> dict[str, str]:
  """paper id -> path of its text copy in `papers_dir` (`*.txt`, recognised by `PAPERS[id]["marker"]`).

  Raises:
    FileNotFoundError: no such directory, or a paper is not among its files.
  """
  if not os.path.isdir(papers_dir):
    raise FileNotFoundError(f"--papers={papers_dir}: no such directory (the papers' text copies)")
  found = {}
  for name in sorted(os.listdir(papers_dir)):
    if not name.endswith(".txt"):
      continue
    with open(os.path.join(papers_dir, name), encoding="utf-8") as f:
      text = f.read()
    for paper, meta in PAPERS.items():
      if meta["marker"] in text:
        found.setdefault(paper, os.path.join(papers_dir, name))
  missing = [f"{p} ({PAPERS[p]['title']})" for p in PAPERS if p not in found]
  if missing:
    raise FileNotFoundError(f"--papers={papers_dir}: no text copy of " + "; ".join(missing))
  return found


def check_unique(tables: Sequence[records.Table]) -> None:
  """One number per (experiment, method, column) over all tables, so a lookup is never ambiguous.

  Raises:
    ValueError: naming the experiment, method, column and the tables that both give it.
  """
  seen = collections.defaultdict(list)
  for t in tables:
    for c in t.cells:
      if c.method:
        seen[(str(c.key), c.method, c.column)].append(f"{c.table_id} row {c.row!r}")
  twice = {k: v for k, v in seen.items() if len(v) > 1}
  if twice:
    k, v = next(iter(twice.items()))
    raise ValueError(f"{len(twice)} cells are given twice, e.g. {k[0]} {k[1]} {k[2]}: {', '.join(v)}")


def note_repeats(tables: Sequence[records.Table]) -> None:
  """Adds a note to each pre-training table whose MSCOCO columns repeat a main table's numbers.

  The main tables are MSCOCO-pretrained (sec. 5), so Tables S1-S3's MSCOCO
  columns should repeat them; the note names the table they do repeat and
  says when its class order is not the one the caption describes (S1).
  """
  main = [t for t in tables if t.cells and not any(c.pretrain for c in t.cells)]
  for t in tables:
    coco = {(c.method, c.role): c for c in t.cells if c.pretrain == "mscoco"}
    if not coco:
      continue
    c0 = next(iter(coco.values()))
    for m in main:
      shared = [(c, coco[(c.method, c.role)]) for c in m.cells if (c.method, c.role) in coco]
      if (not shared or m.paper != t.paper or m.cells[0].dataset != c0.dataset or m.cells[0].scenario != c0.scenario
          or m.cells[0].labeling != c0.labeling or any(a.value != b.value for a, b in shared)):
        continue
      note = f"its MSCOCO columns repeat Table {m.table}'s numbers ({len(shared)} cells)"
      if m.cells[0].order != c0.order:
        note += (f", whose class order is {m.cells[0].order} ({m.caption.split(', i.e.')[0].strip()}), while this "
                 f"caption gives order {c0.order}; recorded as the caption says")
      t.notes.append(note)


def transcribe(papers_dir: str) -> tuple[list[records.Table], dict[str, dict[str, str]]]:
  """Every table of both papers, and the papers' descriptions (with the file each was read from).

  Raises:
    FileNotFoundError: see `find_papers`.
    ValueError: a table the parsers cannot read, or a number given twice.
  """
  paths = find_papers(papers_dir)
  tables, papers = [], {}
  for paper, path in paths.items():
    with open(path, encoding="utf-8") as f:
      tables += _PARSERS[paper](f.read())
    papers[paper] = {k: v for k, v in PAPERS[paper].items() if k != "marker"}
    papers[paper]["file"] = os.path.basename(path)
  check_unique(tables)
  note_repeats(tables)
  return tables, papers


def render(tables: Sequence[records.Table], papers: dict[str, dict[str, str]]) -> dict[str, str]:
  """File name -> content: `<paper>.csv` per paper and `tables.json`."""
  files = {f"{p}.csv": records.cells_csv([c for t in tables if t.paper == p for c in t.cells]) for p in papers}
  files[records.TABLES_FILE] = records.tables_json(tables, papers)
  return files


def report(tables: Sequence[records.Table]) -> str:
  lines = []
  for t in tables:
    if t.reason:
      lines.append(f"{t.id}: skipped: {t.reason}")
      continue
    s = t.summary()
    lines.append(f"{t.id}: {s['cells']} cells, {s['rows']} rows: {', '.join(s['keys'])}")
    lines += [f"{t.id}:   note: {n}" for n in t.notes]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  fv = flags.FLAGS
  try:
    tables, papers = transcribe(fv.papers or default_papers_dir())
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(report(tables))
  out = fv.out or DATA_DIR
  os.makedirs(out, exist_ok=True)
  for name, text in render(tables, papers).items():
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
      f.write(text)
  print(f"wrote {', '.join(sorted(render(tables, papers)))} to {out}")


if __name__ == "__main__":
  flags.DEFINE_string("papers", "", "Directory of the papers' text copies (default: ../shared/papers beside the "
                      "repository root).")
  flags.DEFINE_string("out", "", "Where to write the data files (default: incseg_jax/published/data).")
  app.run(main)
