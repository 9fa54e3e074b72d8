"""Class-incremental task plans: scenario strings -> per-step classes, filters and label maps.

A *scenario* such as ``"15-5"`` or ``"100-10"`` says how many foreground classes are
learned in each step. Together with a *setting* (which training images a step may use
and how their labels are rewritten), a *class order* and a few evaluation conventions it
defines a :class:`TaskPlan`: one :class:`TaskStep` per incremental step.

Conventions used throughout (pure Python/NumPy, no TF, no JAX):

* The dataset has foreground classes ``1..num_fg``, background ``0`` and an ignore label
 (``255`` by default). Values above ``num_fg`` other than the ignore label are treated as
 ignore.
* A *class order* is a permutation of ``1..num_fg``.
* Model *channels* are in learning order: channel 0 is background, channels ``1..n0`` are
 the step-0 classes in order, then step 1's classes, and so on. Channel ``c >= 1`` is the
 original class ``order[c - 1]``.
* Every label rewrite is a 256-entry ``uint8`` lookup table (LUT) applied to the original
 label values, so the data pipeline only ever does ``lut[label]``.

Settings (see ``/work/shared/papers``):

* ``"overlapped"`` (MiB; UCD paper, section 3.1): an image enters step ``k`` when it holds
 at least one class of step ``k``; it may also hold old and future classes, and may be
 used by several steps.
* ``"disjoint"`` (MiB; UCD section 3.1 and section 4.1: "each learning step contains a
 unique set of images, whose pixels belong to classes seen either in the current or in
 the previous learning steps"): additionally every foreground class of the image must
 be old or current.
* ``"sequential"`` (the first paper, ILT journal version, section 3.1: step ``k`` uses
 images that contain only classes of ``S_{k-1} ∪ U_k`` and at least one class of
 ``U_k``, disjoint from previously used samples): the same image filter as disjoint,
 but old classes keep their labels (``labeling="keep"``, the paper's incremental
 learning) or become background (``labeling="background"``, its section 3.2
 "incremental labeling").

The filtering rules of the public MiB code are REFERENCE_NOTES item 9; the training and
test label conventions are item 10.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
  "SETTINGS",
  "LABELINGS",
  "UNSEEN_EVAL",
  "ORDER_NAMES",
  "parse_scenario",
  "resolve_class_order",
  "TaskStep",
  "TaskPlan",
  "make_plan",
  "step_image_indices",
  "count_step_images",
  "check_nonempty",
]

SETTINGS = ("overlapped", "disjoint", "sequential")
LABELINGS = ("keep", "background")
UNSEEN_EVAL = ("ignore", "background")
ORDER_NAMES = ("dataset", "frequency", "random")

# Names accepted for "learn every class in one step" (the upper bound / offline model).
_JOINT_NAMES = ("joint", "offline")
# The LUTs are uint8 and the ignore label must differ from every class id.
_LUT_SIZE = 256


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
    task: ``"a-b"`` means ``a`` classes at step 0, then steps of ``b`` classes until
      all ``num_fg`` classes are covered (``"15-1"`` with 20 classes gives
      ``(15, 1, 1, 1, 1, 1)``; ``"50-50"`` with 150 gives ``(50, 50, 50)``).
      Three or more parts (``"10-5-5"``, ``"10-5-3-2"``) are the explicit step sizes
      and must sum to ``num_fg``. ``"joint"`` (alias ``"offline"``) is a single step
      with every class. Surrounding whitespace and the case of the joint names are
      ignored.
    num_fg: Number of foreground classes of the dataset (background excluded).

  Returns:
    The step sizes, a tuple of positive ints summing to ``num_fg``.

  Raises:
    ValueError: If the string is malformed (non-integer or non-positive parts, a
      single number, a first step with ``a >= num_fg`` in the two-part form,
      ``num_fg - a`` not a multiple of ``b``, or explicit sizes not summing to
      ``num_fg``). The message quotes the string, says what was expected and
      gives the dataset's class count.
  """
  if not isinstance(num_fg, (int, np.integer)) or isinstance(num_fg, bool) or num_fg < 1:
    raise ValueError(f"num_fg must be a positive int, got {num_fg!r}")
  num_fg = int(num_fg)
  if not isinstance(task, str):
    raise _scenario_error(task, num_fg, "the scenario must be a string")
  text = task.strip()
  if text.lower() in _JOINT_NAMES:
    return (num_fg,)
  parts = text.split("-")
  sizes = []
  for part in parts:
    # Only plain decimal digits: rejects '', '+5', '5.0', '5s' (MiB's '15-5s' is our
    # '15-1'), and negative numbers (which show up as empty parts after split).
    if not re.fullmatch(r"[0-9]+", part.strip()):
      hint = ""
      if part.strip().endswith("s"):
        hint = " (MiB's 'a-bs' names are written 'a-1' here, e.g. '15-5s' is '15-1')"
      raise _scenario_error(
        task, num_fg, f"part {part!r} is not a non-negative integer{hint}"
      )
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
      raise _scenario_error(
        task, num_fg, f"the first step already covers all {num_fg} classes (use 'joint')"
      )
    if rest % step:
      raise _scenario_error(
        task, num_fg, f"{num_fg} - {first} = {rest} is not a multiple of {step}"
      )
    return (first,) + (step,) * (rest // step)
  total = sum(sizes)
  if total != num_fg:
    raise _scenario_error(task, num_fg, f"the step sizes sum to {total}, not {num_fg}")
  return tuple(sizes)


def _validate_permutation(order: Sequence[object], num_fg: int) -> tuple[int, ...]:
  """Checks that ``order`` is a permutation of ``1..num_fg`` and returns it as ints."""
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
      f"class order must be a permutation of 1..{num_fg} (each foreground class id "
      f"exactly once); got {len(ids)} entries; missing: {missing}; duplicated: "
      f"{sorted(set(duplicated))}; out of range: {sorted(set(out_of_range))}"
    )
  return tuple(ids)


def resolve_class_order(
  order, num_fg: int, *, seed: int = 0, pixel_counts=None
) -> tuple[int, ...]:
  """Turns an order specification into an explicit permutation of ``1..num_fg``.

  Args:
    order: One of

      * ``"dataset"``: ``1..num_fg`` (the alphabetical order of VOC, used by MiB,
       PLOP, UCD and the first paper's main tables);
      * ``"frequency"``: descending total pixel count, ties broken by the smaller
       class id (the first paper, section 3.1: start from common classes, then
       add rarer ones);
      * ``"random"``: ``np.random.default_rng(seed).permutation`` of ``1..num_fg``;
      * an explicit sequence of ints, or a comma-separated string ``"3,1,2,..."``.
    num_fg: Number of foreground classes.
    seed: Seed for ``"random"``; the same seed always gives the same order.
    pixel_counts: Required for ``"frequency"``: a 1-D array of length
      ``>= num_fg + 1`` indexed by class id (index 0, background, is not used).
      Count over the training split.

  Returns:
    The class order as a tuple of ints.

  Raises:
    ValueError: For an unknown name (the message lists the valid names), a missing
      or too short ``pixel_counts`` for ``"frequency"``, or an explicit order that
      is not a permutation of ``1..num_fg`` (the message lists missing, duplicated
      and out-of-range ids).
  """
  if not isinstance(num_fg, (int, np.integer)) or isinstance(num_fg, bool) or num_fg < 1:
    raise ValueError(f"num_fg must be a positive int, got {num_fg!r}")
  num_fg = int(num_fg)
  if isinstance(order, str):
    name = order.strip()
    if name.lower() == "dataset":
      return tuple(range(1, num_fg + 1))
    if name.lower() == "frequency":
      if pixel_counts is None:
        raise ValueError(
          "order='frequency' needs pixel_counts (total training pixels per "
          f"class id, length >= {num_fg + 1})"
        )
      counts = np.asarray(pixel_counts)
      if counts.ndim != 1 or counts.shape[0] < num_fg + 1:
        raise ValueError(
          f"pixel_counts must be 1-D with length >= num_fg + 1 = {num_fg + 1} "
          f"(indexed by class id, 0 = background); got shape {counts.shape}"
        )
      # Python sort on (-count, id): exact for large int counts, ties by class id.
      values = counts.tolist()
      return tuple(sorted(range(1, num_fg + 1), key=lambda c: (-values[c], c)))
    if name.lower() == "random":
      rng = np.random.default_rng(seed)
      return tuple(int(c) for c in rng.permutation(np.arange(1, num_fg + 1)))
    if re.fullmatch(r"[\s0-9,]+", name) and re.search(r"[0-9]", name):
      pieces = [p.strip() for p in name.split(",")]
      if any(p == "" for p in pieces):
        raise ValueError(f"class order string {order!r} has an empty entry")
      return _validate_permutation([int(p) for p in pieces], num_fg)
    raise ValueError(
      f"Unknown class order {order!r}; expected one of {list(ORDER_NAMES)}, a "
      "sequence of class ids or a comma-separated string such as '3,1,2'"
    )
  if isinstance(order, np.ndarray):
    if order.ndim != 1:
      raise ValueError(f"class order array must be 1-D, got shape {order.shape}")
    return _validate_permutation(list(order.tolist()), num_fg)
  if isinstance(order, Sequence):
    return _validate_permutation(list(order), num_fg)
  raise ValueError(
    f"Unknown class order {order!r}; expected one of {list(ORDER_NAMES)}, a sequence "
    "of class ids or a comma-separated string such as '3,1,2'"
  )


def _fg_ids(present: Iterable[object], fg: frozenset[int]) -> set[int]:
  """Foreground class ids among ``present``; background, ignore and junk values drop out."""
  out = set()
  for value in present:
    c = int(value)
    if c in fg:
      out.add(c)
  return out


@dataclasses.dataclass(frozen=True)
class TaskStep:
  """One incremental step of a :class:`TaskPlan`.

  Attributes:
    index: Step index, 0 for the base step.
    new_classes: Original class ids learned in this step, in learning order.
    old_classes: Original foreground ids learned in earlier steps, in learning order.
    new_channels: Channel ids of ``new_classes``. Step 0 does not list background
      (channel 0) here.
    old_channels: Channel ids of ``old_classes`` (foreground only; background is
      channel 0).
    num_channels: ``1 +`` number of foreground classes seen up to and including this
      step, i.e. the model's output width at this step.
    train_lut: ``(256,)`` uint8, original label -> training target (channel id or the
      ignore label). Read-only.
    eval_lut: ``(256,)`` uint8, original label -> evaluation target. Read-only.
    setting: The plan's setting; decides :meth:`keep_train_image`.
    future_classes: Original foreground ids learned in later steps. Together with
      ``old_classes`` and ``new_classes`` these are all foreground classes, which
      lets :meth:`keep_train_image` discard background, ignore and junk values.
  """

  index: int
  new_classes: tuple[int, ...]
  old_classes: tuple[int, ...]
  new_channels: tuple[int, ...]
  old_channels: tuple[int, ...]
  num_channels: int
  # Arrays do not support == / hash as dataclass fields need; the LUTs are fully
  # determined by the other fields of the plan anyway.
  train_lut: np.ndarray = dataclasses.field(repr=False, compare=False)
  eval_lut: np.ndarray = dataclasses.field(repr=False, compare=False)
  setting: str = "overlapped"
  future_classes: tuple[int, ...] = ()

  @property
  def seen_classes(self) -> tuple[int, ...]:
    """Old and new foreground classes, in learning order."""
    return self.old_classes + self.new_classes

  def keep_train_image(self, present: Iterable[int]) -> bool:
    """Whether a training image takes part in this step.

    Overlapped: the image holds at least one class of this step (old and future
    classes may also be present). Disjoint and sequential: additionally every
    foreground class of the image is old or new (REFERENCE_NOTES item 9; the first
    paper's ``D_k^tr``). Images with no foreground class are in no step.

    Args:
      present: Class ids present in the image. Background 0, the ignore label and
        any value that is not a foreground class of the plan are disregarded, so
        ``np.unique(label)`` can be passed as is.

    Returns:
      True if the image belongs to this step's training set.
    """
    fg = frozenset(self.old_classes) | frozenset(self.new_classes) | frozenset(
      self.future_classes
    )
    ids = _fg_ids(present, fg)
    if not ids.intersection(self.new_classes):
      return False
    if self.setting == "overlapped":
      return True
    # disjoint / sequential: no class of a later step may appear.
    return ids.isdisjoint(self.future_classes)


@dataclasses.dataclass(frozen=True)
class TaskPlan:
  """All steps of a class-incremental scenario.

  Attributes:
    scenario: The scenario string as given (stripped), e.g. ``"15-1"``.
    setting: One of :data:`SETTINGS`.
    labeling: ``None`` for overlapped/disjoint; ``"keep"`` or ``"background"`` for
      sequential.
    order: The class order, a permutation of ``1..num_fg``.
    num_fg: Number of foreground classes.
    ignore_label: The ignore label value.
    steps: One :class:`TaskStep` per step.
  """

  scenario: str
  setting: str
  labeling: str | None
  order: tuple[int, ...]
  num_fg: int
  ignore_label: int
  steps: tuple[TaskStep, ...]

  @property
  def num_steps(self) -> int:
    """Number of steps."""
    return len(self.steps)

  @property
  def classes_per_step(self) -> tuple[int, ...]:
    """Classifier head sizes: ``(1 + n0, n1, n2, ...)``; background is in head 0."""
    sizes = [len(s.new_classes) for s in self.steps]
    return (1 + sizes[0],) + tuple(sizes[1:])

  def channel_names(self, class_names: Sequence[str]) -> list[str]:
    """Names of the final model's channels in channel order.

    Args:
      class_names: Names indexed by original class id (index 0 = background),
        length ``>= num_fg + 1``.

    Returns:
      ``num_fg + 1`` names: background, then ``class_names[order[c - 1]]``.
    """
    if len(class_names) < self.num_fg + 1:
      raise ValueError(
        f"class_names has {len(class_names)} entries; need >= {self.num_fg + 1} "
        "(indexed by class id, 0 = background)"
      )
    return [str(class_names[0])] + [str(class_names[c]) for c in self.order]

  def describe(self, class_names: Sequence[str] | None = None) -> str:
    """Human-readable summary: a header line, then one line per step.

    Args:
      class_names: Optional names indexed by original class id.

    Returns:
      A multi-line string.
    """
    header = (
      f"scenario {self.scenario!r}: {self.num_steps} step(s) {list(self.classes_per_step)} "
      f"(heads incl. background), setting {self.setting}"
      + (f", labeling {self.labeling}" if self.labeling else "")
      + f", {self.num_fg} foreground classes, ignore {self.ignore_label}"
    )
    lines = [header]
    for step in self.steps:
      if class_names is not None:
        new = ", ".join(f"{c}:{class_names[c]}" for c in step.new_classes)
      else:
        new = ", ".join(str(c) for c in step.new_classes)
      first, last = step.new_channels[0], step.new_channels[-1]
      chans = f"channel {first}" if first == last else f"channels {first}..{last}"
      lines.append(
        f"step {step.index}: +{len(step.new_classes)} classes [{new}] -> {chans}; "
        f"{len(step.old_classes)} old; {step.num_channels} channels"
      )
    return "\n".join(lines)


def _build_luts(
  *,
  setting: str,
  labeling: str | None,
  channel_of: dict[int, int],
  old: tuple[int, ...],
  new: tuple[int, ...],
  num_fg: int,
  ignore_label: int,
  void_as_background: bool,
  unseen_eval: str,
) -> tuple[np.ndarray, np.ndarray]:
  """Training and evaluation LUTs of one step (see :func:`make_plan`)."""
  # Start from "everything is ignore": values > num_fg other than the ignore label are
  # junk and must never become a class.
  train = np.full((_LUT_SIZE,), ignore_label, dtype=np.uint8)
  evl = np.full((_LUT_SIZE,), ignore_label, dtype=np.uint8)
  train[0] = 0
  evl[0] = 0
  # MiB turns void into background for training; the test labels keep it ignored.
  train[ignore_label] = 0 if void_as_background else ignore_label
  evl[ignore_label] = ignore_label
  keep_old = setting == "sequential" and labeling == "keep"
  seen = set(old) | set(new)
  for c in range(1, num_fg + 1):
    if c in new or (keep_old and c in old):
      train[c] = channel_of[c]
    else:
      # Old (unless kept) and future classes are background in the training maps.
      train[c] = 0
    if c in seen:
      evl[c] = channel_of[c]
    else:
      evl[c] = ignore_label if unseen_eval == "ignore" else 0
  train.setflags(write=False)
  evl.setflags(write=False)
  return train, evl


def make_plan(
  task: str,
  num_fg: int,
  *,
  setting: str = "overlapped",
  labeling: str | None = None,
  order="dataset",
  seed: int = 0,
  pixel_counts=None,
  ignore_label: int = 255,
  void_as_background: bool = False,
  unseen_eval: str = "ignore",
) -> TaskPlan:
  """Builds the task plan of a scenario.

  Training images of step ``k`` (filter applied to the *training* split, see
  :meth:`TaskStep.keep_train_image`):

  * ``overlapped``: the image holds at least one class of step ``k``; old and future
   classes may be present too (MiB; UCD paper section 3.1; REFERENCE_NOTES 9).
  * ``disjoint``: at least one class of step ``k`` and every foreground class of the
   image is in old ∪ current (MiB; UCD section 4.1).
  * ``sequential``: the first paper's protocol (ILT journal, section 3.1): the same
   filter as disjoint (at least one new class, only seen classes). Because an image
   accepted at step ``k`` holds no class of a later step, it can never satisfy the
   "at least one new class" test again, so every image is used by at most one step
   ("this set is disjoint from previously used samples"). The same holds for
   disjoint.

  Images without any foreground class are in no step. For ``"joint"`` (one step) every
  image with a foreground class is used.

  Training labels of step ``k`` (``train_lut``):

  * overlapped and disjoint: classes not in step ``k`` (old and future) become
   background 0 (REFERENCE_NOTES 10);
  * sequential, ``labeling="keep"`` (the first paper's incremental learning): old and
   current classes keep their channel; future classes (absent after filtering) -> 0;
  * sequential, ``labeling="background"`` (its section 3.2 "incremental labeling"):
   old classes -> 0, as in overlapped/disjoint.

  The ignore label stays ignore unless ``void_as_background=True`` (MiB's training
  convention: void -> background). Any value ``> num_fg`` other than the ignore label
  maps to the ignore label, in both LUTs.

  Evaluation labels of step ``k`` (``eval_lut``, for the whole val split): background
  -> 0, classes seen up to step ``k`` -> their channel, classes not yet learned -> the
  ignore label (``unseen_eval="ignore"``, MiB) or background (``"background"``,
  PLOP/UCD); the ignore label stays ignore. Only intermediate steps differ between the
  two conventions.

  Args:
    task: Scenario string, see :func:`parse_scenario`.
    num_fg: Number of foreground classes (at most 254 so that channels and the
      ignore label fit the uint8 LUT).
    setting: One of :data:`SETTINGS`.
    labeling: ``None`` for overlapped/disjoint (anything else is an error); for
      sequential one of :data:`LABELINGS`, ``None`` meaning ``"keep"``.
    order: Class order, see :func:`resolve_class_order`.
    seed: Seed for ``order="random"``.
    pixel_counts: Per-class training pixel counts for ``order="frequency"``.
    ignore_label: Ignore value, in ``num_fg + 1 .. 255``.
    void_as_background: Map the ignore label to background in ``train_lut``.
    unseen_eval: One of :data:`UNSEEN_EVAL`.

  Returns:
    The :class:`TaskPlan`.

  Raises:
    ValueError: For an unknown setting, labeling, order or ``unseen_eval``, a
      labeling given for overlapped/disjoint, a bad scenario string, a
      non-permutation order, or an ignore label that collides with a class id.
  """
  if setting not in SETTINGS:
    raise ValueError(f"Unknown setting {setting!r}; expected one of {list(SETTINGS)}")
  if setting == "sequential":
    if labeling is None:
      labeling = "keep"
    if labeling not in LABELINGS:
      raise ValueError(
        f"Unknown labeling {labeling!r} for the sequential setting; expected one "
        f"of {list(LABELINGS)} (or None for 'keep')"
      )
  elif labeling is not None:
    raise ValueError(
      f"labeling={labeling!r} is only meaningful for setting='sequential'; the "
      f"{setting} setting always maps old classes to background, pass labeling=None"
    )
  if unseen_eval not in UNSEEN_EVAL:
    raise ValueError(
      f"Unknown unseen_eval {unseen_eval!r}; expected one of {list(UNSEEN_EVAL)}"
    )
  if not isinstance(num_fg, (int, np.integer)) or isinstance(num_fg, bool) or not (
    1 <= num_fg <= _LUT_SIZE - 2
  ):
    raise ValueError(f"num_fg must be an int in 1..{_LUT_SIZE - 2}, got {num_fg!r}")
  num_fg = int(num_fg)
  if (
    not isinstance(ignore_label, (int, np.integer))
    or isinstance(ignore_label, bool)
    or not (num_fg < ignore_label < _LUT_SIZE)
  ):
    raise ValueError(
      f"ignore_label must be an int in {num_fg + 1}..{_LUT_SIZE - 1} (above every "
      f"class id, inside the uint8 LUT), got {ignore_label!r}"
    )
  ignore_label = int(ignore_label)
  sizes = parse_scenario(task, num_fg)
  class_order = resolve_class_order(order, num_fg, seed=seed, pixel_counts=pixel_counts)
  channel_of = {c: i + 1 for i, c in enumerate(class_order)}

  steps = []
  start = 0
  for k, size in enumerate(sizes):
    old = class_order[:start]
    new = class_order[start : start + size]
    future = class_order[start + size :]
    train_lut, eval_lut = _build_luts(
      setting=setting,
      labeling=labeling,
      channel_of=channel_of,
      old=old,
      new=new,
      num_fg=num_fg,
      ignore_label=ignore_label,
      void_as_background=void_as_background,
      unseen_eval=unseen_eval,
    )
    steps.append(
      TaskStep(
        index=k,
        new_classes=new,
        old_classes=old,
        new_channels=tuple(channel_of[c] for c in new),
        old_channels=tuple(channel_of[c] for c in old),
        num_channels=1 + start + size,
        train_lut=train_lut,
        eval_lut=eval_lut,
        setting=setting,
        future_classes=future,
      )
    )
    start += size
  return TaskPlan(
    scenario=task.strip(),
    setting=setting,
    labeling=labeling,
    order=class_order,
    num_fg=num_fg,
    ignore_label=ignore_label,
    steps=tuple(steps),
  )


def step_image_indices(plan: TaskPlan, class_lists: Sequence[Iterable[int]]) -> list[list[int]]:
  """Indices of the training images of every step.

  Args:
    plan: The task plan.
    class_lists: Per training image, the class ids present (background/ignore
      allowed, they are disregarded).

  Returns:
    One sorted list of image indices per step.
  """
  # Materialise each image's ids once; class_lists may hold one-shot iterators.
  per_image = [list(ids) for ids in class_lists]
  return [
    [i for i, ids in enumerate(per_image) if step.keep_train_image(ids)]
    for step in plan.steps
  ]


def count_step_images(plan: TaskPlan, class_lists: Sequence[Iterable[int]]) -> list[int]:
  """Number of training images of every step.

  Args:
    plan: The task plan.
    class_lists: Per training image, the class ids present.

  Returns:
    One count per step.
  """
  return [len(ix) for ix in step_image_indices(plan, class_lists)]


def check_nonempty(plan: TaskPlan, counts: Sequence[int]) -> None:
  """Raises if any step has no training image (e.g. a disjoint step whose classes
  always co-occur with later classes).

  Args:
    plan: The task plan.
    counts: Per-step image counts, e.g. from :func:`count_step_images`.

  Raises:
    ValueError: Naming every empty step's index and new classes, or if ``counts``
      does not have one entry per step.
  """
  if len(counts) != len(plan.steps):
    raise ValueError(f"got {len(counts)} counts for {len(plan.steps)} steps")
  empty = [s for s, n in zip(plan.steps, counts) if int(n) == 0]
  if empty:
    desc = "; ".join(f"step {s.index} (new classes {list(s.new_classes)})" for s in empty)
    raise ValueError(
      f"No training images for {desc} in scenario {plan.scenario!r} with setting "
      f"{plan.setting!r}"
    )
