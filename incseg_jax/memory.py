"""Exemplar memory: a few training images of the classes seen so far, replayed in later steps.

SSUL-M's memory (Cha et al., NeurIPS 2021; public code clovaai/SSUL,
`utils/memory.py`), usable with any method (`mib` + memory, ...), configured
by `config.memory`:

* **What is kept.** Before task step k > 0 the memory is chosen anew from the
  previous memory and step k-1's training images: `memory.size` images,
  class-balanced as the SSUL code does it. The candidates are shuffled, the
  classes seen so far are put in a random order, and rounds over the classes
  take, for each class in turn, the first candidate still unused that shows
  it, until the memory is full. (`policy="random"` takes a uniform sample
  instead.) The shuffles are seeded by (seed, step), so the choice is
  deterministic.
* **With which labels.** An entry is a dataset index plus the task step whose
  training labels it keeps: the labels the image had when it was stored,
  which show the classes of that step (and no later class). Channels never
  change once assigned, so a label stored at step j is valid at every later
  step. The SSUL code reloads the ground truth of every old class for its
  memory images instead. Here the memory keeps what a system that stores
  (image, label) pairs would have.
* **Where it lives.** `checkpoints/task_XX/memory.json` in the workdir,
  written before the step trains. A resume reads it back, so the step sees
  the same memory.
* **How it is replayed.** `memory.per_batch` images of every batch (default
  half, as the code replaces `batch_size // 2` images of each batch) come
  from the memory, in their own order. This uses the batch slots of
  `incseg_jax.replay`'s images, so the two cannot be combined.

A candidate counts as showing a class when the class is in the image's stored
class list and the label table it keeps maps the class to a channel.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from incseg_jax import files

POLICIES = ("balanced", "random")
MEMORY_FILE = "memory.json"


@dataclasses.dataclass(frozen=True)
class Entry:
  """One remembered image: its index in the training split and the task step whose labels it keeps."""
  index: int
  step: int


def labelled_classes(train_lut: np.ndarray, ignore_label: int) -> set[int]:
  """Original class ids (foreground) that a step's training label table maps to a channel."""
  return {c for c in range(1, len(train_lut)) if c != ignore_label and train_lut[c] not in (0, ignore_label)}


def select(candidates: Sequence[Entry], shows: dict[Entry, set[int]], classes: Sequence[int], size: int, *,
           seed: int, task_index: int, policy: str = "balanced") -> list[Entry]:
  """The memory of task step `task_index`: at most `size` of `candidates`.

  Args:
    candidates: the previous memory followed by the previous step's images.
    shows: the classes each candidate's kept label shows.
    classes: the foreground classes seen so far (original ids).
    size: the memory size.
    seed: the experiment seed.
    task_index: the step the memory is for (folds into the shuffles).
    policy: "balanced" (SSUL-M) or "random".

  Returns:
    The chosen entries, in the order they were chosen.
  """
  if policy not in POLICIES:
    raise ValueError(f"config.memory.policy={policy!r}: expected one of {', '.join(POLICIES)}")
  rng = np.random.default_rng([seed, task_index, 0x6D656D])  # 'mem': apart from the batch order's streams
  pool = [candidates[i] for i in rng.permutation(len(candidates))]
  if policy == "random":
    return pool[:size]
  order = [int(c) for c in rng.permutation(np.asarray(sorted(classes), np.int64))]
  chosen: list[Entry] = []
  while len(chosen) < size:
    took = False
    for cls in order:
      hit = next((i for i, e in enumerate(pool) if cls in shows[e]), None)
      if hit is None:
        continue  # no image of this class left (the SSUL code would loop forever here)
      chosen.append(pool.pop(hit))
      took = True
      if len(chosen) >= size:
        break
    if not took:
      break
  return chosen


BACKGROUNDS = ("keep", "ignore")


def label_tables(train_luts: Sequence[np.ndarray], ignore_label: int, background: str = "keep") -> np.ndarray:
  """(T, 256) label tables of memory entries, one per task step they were stored at.

  `background="ignore"`: a memory image's background pixels do not count in
  the loss. Its stored label calls background every class learned after the
  image's step, so in a later step it would teach that step's new classes as
  background (docs/results_shapes.md).
  """
  if background not in BACKGROUNDS:
    raise ValueError(f"config.memory.background={background!r}: expected one of {', '.join(BACKGROUNDS)}")
  tables = np.stack(train_luts).copy()
  if background == "ignore":
    tables[tables == 0] = ignore_label
  return tables


def path(task_dir: str) -> str:
  return os.path.join(task_dir, MEMORY_FILE)


def save(task_dir: str, entries: Sequence[Entry]) -> None:
  """Writes the memory of a task step (atomically) into its task directory."""
  os.makedirs(task_dir, exist_ok=True)
  files.write_json_atomic(path(task_dir), {"entries": [[e.index, e.step] for e in entries]})


def load(task_dir: str) -> list[Entry] | None:
  """The memory saved for a task step, or None when there is none (a damaged file is named)."""
  p = path(task_dir)
  if not os.path.exists(p):
    return None
  data = files.read_json(p, "the exemplar memory of this task step",
                         "Delete it to choose the memory again (the choice is deterministic).")
  try:
    return [Entry(int(i), int(s)) for i, s in data["entries"]]
  except (KeyError, TypeError, ValueError):
    raise files.CorruptFileError(f"{p} is damaged (expected {{'entries': [[index, step], ...]}}); it holds the "
                                 "exemplar memory of this task step. Delete it to choose the memory again.") from None
