"""Scenario strings and class orders: which foreground classes each incremental step learns.

A *scenario* such as "15-5" or "100-10" says how many foreground classes are learned in each step; a *class
order* (a permutation of `1..num_fg`) says which ones, in which order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["ORDER_NAMES", "check_num_fg", "parse_scenario", "resolve_class_order"]

ORDER_NAMES = ("dataset", "frequency", "random")

# Names accepted for "learn every class in one step" (the upper bound / offline model).
_JOINT_NAMES = ("joint", "offline")


def check_num_fg(num_fg: object, *, most: int | None = None) -> int:
  """Checks a number of foreground classes; the one validation of `num_fg` for every public entry.

  Args:
    num_fg: Number of foreground classes of the dataset (background excluded).
    most: Largest accepted value, if any (`make_plan` needs every channel and the ignore label to fit its uint8
      lookup tables).

  Returns:
    `num_fg` as a Python int.

  Raises:
    ValueError: If `num_fg` is not an int (bools included), is below 1 or is above `most`.
  """
  if isinstance(num_fg, (int, np.integer)) and not isinstance(num_fg, bool):
    if num_fg >= 1 and (most is None or num_fg <= most):
      return int(num_fg)
  bound = "a positive int" if most is None else f"an int in 1..{most}"
  raise ValueError(f"num_fg must be {bound}, got {num_fg!r}")


def _scenario_error(task: object, num_fg: int, detail: str) -> ValueError:
  """Builds the one error message format used for every malformed scenario string."""
  return ValueError(
    f"Invalid scenario {task!r} for a dataset with {num_fg} foreground classes: "
    f"{detail}. Expected 'a-b' (a classes first, then steps of b classes, where "
    f"{num_fg} - a is a positive multiple of b, e.g. '15-5' or '15-1'), "
    f"'a-b-c...' (explicit positive step sizes summing to {num_fg}, e.g. "
    f"'10-5-5'), or 'joint'/'offline' (all {num_fg} classes in one step)."
  )


def parse_scenario(task: str, num_fg: int) -> tuple[int, ...]:
  """Parses a scenario string into the number of foreground classes of each step.

  Args:
    task: "a-b" means `a` classes at step 0, then steps of `b` classes until all `num_fg` classes are covered
      ("15-1" with 20 classes gives `(15, 1, 1, 1, 1, 1)`; "50-50" with 150 gives `(50, 50, 50)`). Three or more
      parts ("10-5-5", "10-5-3-2") are the explicit step sizes and must sum to `num_fg`. "joint" (alias
      "offline") is a single step with every class. Surrounding whitespace and the case of the joint names are
      ignored.
    num_fg: Number of foreground classes of the dataset (background excluded).

  Returns:
    The step sizes, a tuple of positive ints summing to `num_fg`.

  Raises:
    ValueError: If `num_fg` is not a positive int, or if the string is malformed (non-integer or non-positive
      parts, a single number, a first step with `a >= num_fg` in the two-part form, `num_fg - a` not a multiple
      of `b`, or explicit sizes not summing to `num_fg`). The message quotes the string, says what was expected
      and gives the dataset's class count.
  """
  return _step_sizes(task, check_num_fg(num_fg))


def _step_sizes(task: str, num_fg: int) -> tuple[int, ...]:
  """`parse_scenario` for a `num_fg` already checked by `check_num_fg`."""
  if not isinstance(task, str):
    raise _scenario_error(task, num_fg, "the scenario must be a string")
  text = task.strip()
  if text.lower() in _JOINT_NAMES:
    return (num_fg,)
  sizes = []
  for part in text.split("-"):
    # Only plain decimal digits: rejects '', '+5', '5.0', '5s' (MiB's '15-5s' is our '15-1'), and negative
    # numbers (which show up as empty parts after split).
    if not re.fullmatch(r"[0-9]+", part.strip()):
      hint = ""
      if part.strip().endswith("s"):
        hint = " (MiB's 'a-bs' names are written 'a-1' here, e.g. '15-5s' is '15-1')"
      raise _scenario_error(task, num_fg, f"part {part!r} is not a non-negative integer{hint}")
    sizes.append(int(part))
  if len(sizes) < 2:
    raise _scenario_error(task, num_fg, "a single number is not a scenario")
  if any(s == 0 for s in sizes):
    raise _scenario_error(task, num_fg, "every step must add at least one class")
  if len(sizes) == 2:
    first, step = sizes
    if first > num_fg:
      raise _scenario_error(task, num_fg, f"the first step has {first} > {num_fg} classes")
    rest = num_fg - first
    if rest == 0:
      raise _scenario_error(task, num_fg, f"the first step already covers all {num_fg} classes (use 'joint')")
    if rest % step:
      raise _scenario_error(task, num_fg, f"{num_fg} - {first} = {rest} is not a multiple of {step}")
    return (first,) + (step,) * (rest // step)
  total = sum(sizes)
  if total != num_fg:
    raise _scenario_error(task, num_fg, f"the step sizes sum to {total}, not {num_fg}")
  return tuple(sizes)


def resolve_class_order(order, num_fg: int, *, seed: int = 0, pixel_counts=None) -> tuple[int, ...]:
  """Turns an order specification into an explicit permutation of `1..num_fg`.

  Args:
    order: One of

      * "dataset": `1..num_fg` (the alphabetical order of VOC, used by MiB, PLOP, UCD and the first paper's main
        tables);
      * "frequency": descending total pixel count, ties broken by the smaller class id (the first paper, section
        3.1: start from common classes, then add rarer ones);
      * "random": `np.random.default_rng(seed).permutation` of `1..num_fg`;
      * an explicit sequence of ints, or a comma-separated string "3,1,2,...".
    num_fg: Number of foreground classes.
    seed: Seed for "random"; the same seed always gives the same order.
    pixel_counts: Required for "frequency": a 1-D array of length `>= num_fg + 1` indexed by class id (index 0,
      background, is not used). Count over the training split.

  Returns:
    The class order as a tuple of ints.

  Raises:
    ValueError: If `num_fg` is not a positive int, for an unknown name (the message lists the valid names), a
      missing or too short `pixel_counts` for "frequency", or an explicit order that is not a permutation of
      `1..num_fg` (the message lists missing, duplicated and out-of-range ids).
  """
  return _class_order(order, check_num_fg(num_fg), seed=seed, pixel_counts=pixel_counts)


def _class_order(order, num_fg: int, *, seed: int, pixel_counts) -> tuple[int, ...]:
  """`resolve_class_order` for a `num_fg` already checked by `check_num_fg`."""
  unknown = (
    f"Unknown class order {order!r}; expected one of {list(ORDER_NAMES)}, a sequence of class ids or a "
    "comma-separated string such as '3,1,2'"
  )
  if isinstance(order, str):
    name = order.strip().lower()
    if name == "dataset":
      return tuple(range(1, num_fg + 1))
    if name == "frequency":
      return _frequency_order(num_fg, pixel_counts)
    if name == "random":
      rng = np.random.default_rng(seed)
      return tuple(int(c) for c in rng.permutation(np.arange(1, num_fg + 1)))
    if re.fullmatch(r"[\s0-9,]+", name) and re.search(r"[0-9]", name):
      pieces = [p.strip() for p in name.split(",")]
      if any(p == "" for p in pieces):
        raise ValueError(f"class order string {order!r} has an empty entry")
      return _validate_permutation([int(p) for p in pieces], num_fg)
    raise ValueError(unknown)
  if isinstance(order, np.ndarray):
    if order.ndim != 1:
      raise ValueError(f"class order array must be 1-D, got shape {order.shape}")
    return _validate_permutation(list(order.tolist()), num_fg)
  if isinstance(order, Sequence):
    return _validate_permutation(list(order), num_fg)
  raise ValueError(unknown)


def _frequency_order(num_fg: int, pixel_counts) -> tuple[int, ...]:
  """Class ids by descending pixel count, ties by the smaller id (see `resolve_class_order`)."""
  if pixel_counts is None:
    raise ValueError(
      f"order='frequency' needs pixel_counts (total training pixels per class id, length >= {num_fg + 1})"
    )
  counts = np.asarray(pixel_counts)
  if counts.ndim != 1 or counts.shape[0] < num_fg + 1:
    raise ValueError(
      f"pixel_counts must be 1-D with length >= num_fg + 1 = {num_fg + 1} (indexed by class id, 0 = background); "
      f"got shape {counts.shape}"
    )
  # Python sort on (-count, id): exact for large int counts (float64 would merge counts above 2**53).
  values = counts.tolist()
  return tuple(sorted(range(1, num_fg + 1), key=lambda c: (-values[c], c)))


def _validate_permutation(order: Sequence[object], num_fg: int) -> tuple[int, ...]:
  """Checks that `order` is a permutation of `1..num_fg` and returns it as ints."""
  ids = []
  for value in order:
    # Reject bools and non-integral floats: an order like (1.5, 2) is a bug upstream.
    if isinstance(value, (bool, np.bool_)):
      raise ValueError(f"class order entries must be ints, got {value!r} in {list(order)!r}")
    if isinstance(value, (int, np.integer)):
      ids.append(int(value))
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
      ids.append(int(value))
    else:
      raise ValueError(f"class order entries must be ints, got {value!r} in {list(order)!r}")
  expected = set(range(1, num_fg + 1))
  seen: set[int] = set()
  duplicated = []
  out_of_range = []
  for c in ids:
    if c not in expected:
      out_of_range.append(c)
    elif c in seen:
      duplicated.append(c)
    seen.add(c)
  missing = sorted(expected - seen)
  if missing or duplicated or out_of_range or len(ids) != num_fg:
    raise ValueError(
      f"class order must be a permutation of 1..{num_fg} (each foreground class id exactly once); got {len(ids)} "
      f"entries; missing: {missing}; duplicated: {sorted(set(duplicated))}; out of range: "
      f"{sorted(set(out_of_range))}"
    )
  return tuple(ids)
