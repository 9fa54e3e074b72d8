"""Task plans: one `TaskStep` per incremental step, with its classes, image filter and label tables.

Settings (as defined in Michieli & Zanuttigh, CVIU 2021, "the first paper", and Yang et al., UCD):

* "overlapped" (MiB; UCD paper, section 3.1): an image enters step `k` when it holds at least one class of step
  `k`; it may also hold old and future classes, and may be used by several steps.
* "disjoint" (MiB; UCD section 3.1 and section 4.1: "each learning step contains a unique set of images, whose
  pixels belong to classes seen either in the current or in the previous learning steps"): additionally every
  foreground class of the image must be old or current.
* "sequential" (the first paper, ILT journal version, section 3.1: step `k` uses images that contain only classes
  of `S_{k-1} ∪ U_k` and at least one class of `U_k`, disjoint from previously used samples): the same image
  filter as disjoint, but old classes keep their labels (`labeling="keep"`, the paper's incremental learning) or
  become background (`labeling="background"`, its section 3.2 "incremental labeling").

The filtering rules of the public MiB code are docs/reference_code.md §9; the training and test label conventions
are §10.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from incseg_jax.tasks import labels
from incseg_jax.tasks import scenario

__all__ = [
  "SETTINGS",
  "LABELINGS",
  "TaskStep",
  "TaskPlan",
  "make_plan",
  "step_image_indices",
  "count_step_images",
  "check_nonempty",
]

SETTINGS = ("overlapped", "disjoint", "sequential")
LABELINGS = ("keep", "background")


def _fg_ids(present: Iterable[object], fg: frozenset[int]) -> set[int]:
  """Foreground class ids among `present`; background, ignore and junk values drop out."""
  out = set()
  for value in present:
    c = int(value)
    if c in fg:
      out.add(c)
  return out


@dataclasses.dataclass(frozen=True)
class TaskStep:
  """One incremental step of a `TaskPlan`.

  Attributes:
    index: Step index, 0 for the base step.
    new_classes: Original class ids learned in this step, in learning order.
    old_classes: Original foreground ids learned in earlier steps, in learning order.
    new_channels: Channel ids of `new_classes`. Step 0 does not list background (channel 0) here.
    old_channels: Channel ids of `old_classes` (foreground only; background is channel 0).
    num_channels: `1 +` number of foreground classes seen up to and including this step, i.e. the model's output
      width at this step.
    train_lut: `(256,)` uint8, original label -> training target (channel id or the ignore label). Read-only.
    eval_lut: `(256,)` uint8, original label -> evaluation target. Read-only.
    setting: The plan's setting; decides `keep_train_image`.
    future_classes: Original foreground ids learned in later steps. Together with `old_classes` and `new_classes`
      these are all foreground classes, which lets `keep_train_image` discard background, ignore and junk values.
    zero_is_class: Step 0 of a dataset whose label 0 is a real class (MSRC's building): 0 counts as a new class of
      this step in `keep_train_image`, so an image holding only it is chosen.
  """

  index: int
  new_classes: tuple[int, ...]
  old_classes: tuple[int, ...]
  new_channels: tuple[int, ...]
  old_channels: tuple[int, ...]
  num_channels: int
  # Arrays do not support == / hash as dataclass fields need; the LUTs are fully determined by the other fields of
  # the plan anyway.
  train_lut: np.ndarray = dataclasses.field(repr=False, compare=False)
  eval_lut: np.ndarray = dataclasses.field(repr=False, compare=False)
  setting: str = "overlapped"
  future_classes: tuple[int, ...] = ()
  zero_is_class: bool = False

  @property
  def seen_classes(self) -> tuple[int, ...]:
    """Old and new foreground classes, in learning order."""
    return self.old_classes + self.new_classes

  def keep_train_image(self, present: Iterable[int]) -> bool:
    """Whether a training image takes part in this step.

    Overlapped: the image holds at least one class of this step (old and future classes may also be present).
    Disjoint and sequential: additionally every foreground class of the image is old or new
    (docs/reference_code.md §9; the first paper's `D_k^tr`). Images with no foreground class are in no step.

    Args:
      present: Class ids present in the image. Background 0, the ignore label and any value that is not a
        foreground class of the plan are disregarded, so `np.unique(label)` can be passed as is.

    Returns:
      True if the image belongs to this step's training set.
    """
    new = frozenset(self.new_classes) | (frozenset({0}) if self.zero_is_class else frozenset())
    fg = frozenset(self.old_classes) | new | frozenset(self.future_classes)
    ids = _fg_ids(present, fg)
    if not ids.intersection(new):
      return False
    if self.setting == "overlapped":
      return True
    # disjoint / sequential: no class of a later step may appear.
    return ids.isdisjoint(self.future_classes)


@dataclasses.dataclass(frozen=True)
class TaskPlan:
  """All steps of a class-incremental scenario.

  Attributes:
    scenario: The scenario string as given (stripped), e.g. "15-1".
    setting: One of `SETTINGS`.
    labeling: None for overlapped/disjoint; "keep" or "background" for sequential.
    order: The class order, a permutation of `1..num_fg`.
    num_fg: Number of foreground classes.
    ignore_label: The ignore label value.
    steps: One `TaskStep` per step.
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
    """Classifier head sizes: `(1 + n0, n1, n2, ...)`; background is in head 0."""
    sizes = [len(s.new_classes) for s in self.steps]
    return (1 + sizes[0],) + tuple(sizes[1:])

  def channel_names(self, class_names: Sequence[str]) -> list[str]:
    """Names of the final model's channels in channel order.

    Args:
      class_names: Names indexed by original class id (index 0 = background), length `>= num_fg + 1`.

    Returns:
      `num_fg + 1` names: background, then `class_names[order[c - 1]]`.

    Raises:
      ValueError: If `class_names` is too short.
    """
    if len(class_names) < self.num_fg + 1:
      raise ValueError(
        f"class_names has {len(class_names)} entries; need >= {self.num_fg + 1} (indexed by class id, 0 = "
        "background)"
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


def _check_labeling(setting: str, labeling: str | None) -> str | None:
  """Validates `setting` and `labeling`; returns the labeling with sequential's default ("keep") filled in."""
  if setting not in SETTINGS:
    raise ValueError(f"Unknown setting {setting!r}; expected one of {list(SETTINGS)}")
  if setting != "sequential":
    if labeling is not None:
      raise ValueError(
        f"labeling={labeling!r} is only meaningful for setting='sequential'; the {setting} setting always maps old "
        "classes to background, pass labeling=None"
      )
    return None
  if labeling is None:
    return "keep"
  if labeling not in LABELINGS:
    raise ValueError(
      f"Unknown labeling {labeling!r} for the sequential setting; expected one of {list(LABELINGS)} (or None for "
      "'keep')"
    )
  return labeling


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
  policy: labels.LabelPolicy = labels.LabelPolicy(),
  zero_is_class: bool = False,
) -> TaskPlan:
  """Builds the task plan of a scenario.

  Training images of step `k` (filter applied to the *training* split, see `TaskStep.keep_train_image`):

  * overlapped: the image holds at least one class of step `k`; old and future classes may be present too (MiB;
    UCD paper section 3.1; docs/reference_code.md §9).
  * disjoint: at least one class of step `k` and every foreground class of the image is in old ∪ current (MiB;
    UCD section 4.1).
  * sequential: the first paper's protocol (ILT journal, section 3.1): the same filter as disjoint (at least one
    new class, only seen classes). Because an image accepted at step `k` holds no class of a later step, it can
    never satisfy the "at least one new class" test again, so every image is used by at most one step ("this set
    is disjoint from previously used samples"). The same holds for disjoint.

  Images without any foreground class are in no step. For "joint" (one step) every image with a foreground class
  is used.

  Training labels of step `k` (`train_lut`):

  * overlapped and disjoint: classes not in step `k` (old and future) become background 0
    (docs/reference_code.md §10);
  * sequential, `labeling="keep"` (the first paper's incremental learning): old and current classes keep their
    channel; future classes (absent after filtering) -> 0;
  * sequential, `labeling="background"` (its section 3.2 "incremental labeling"): old classes -> 0, as in
    overlapped/disjoint.

  Evaluation labels of step `k` (`eval_lut`, for the whole val split): background -> 0, classes seen up to step
  `k` -> their channel. Any value `> num_fg` other than the ignore label maps to the ignore label, in both LUTs.
  How void, raw label 0 and classes not learned yet are labelled is `policy`'s (see `labels.build_step_luts`).

  Args:
    task: Scenario string, see `parse_scenario`.
    num_fg: Number of foreground classes (at most 254 so that channels and the ignore label fit the uint8 LUT).
    setting: One of `SETTINGS`.
    labeling: None for overlapped/disjoint (anything else is an error); for sequential one of `LABELINGS`, None
      meaning "keep".
    order: Class order, see `resolve_class_order`.
    seed: Seed for `order="random"`.
    pixel_counts: Per-class training pixel counts for `order="frequency"`.
    ignore_label: Ignore value, in `num_fg + 1 .. 255`.
    policy: The label conventions (void in training, raw label 0, unseen classes in evaluation).
    zero_is_class: Label 0 is a real class learned in step 0 (MSRC's building): an image holding it is a training
      image of step 0 (elsewhere label 0 is background and selects no image).

  Returns:
    The `TaskPlan`.

  Raises:
    ValueError: For an unknown setting, labeling or order, a labeling given for overlapped/disjoint, a bad
      scenario string, a `num_fg` outside `1..254`, a non-permutation order, or an ignore label that collides
      with a class id.
    TypeError: If `policy` is not a `LabelPolicy`.
  """
  labeling = _check_labeling(setting, labeling)
  if not isinstance(policy, labels.LabelPolicy):
    raise TypeError(f"policy must be a LabelPolicy, got {policy!r}")
  # The one check of num_fg for the whole plan, with the LUT's bound; the scenario module's cores below then skip
  # the looser check of `parse_scenario` / `resolve_class_order`.
  num_fg = scenario.check_num_fg(num_fg, most=labels.MAX_NUM_FG)
  if (
    not isinstance(ignore_label, (int, np.integer))
    or isinstance(ignore_label, bool)
    or not num_fg < ignore_label < labels.LUT_SIZE
  ):
    raise ValueError(
      f"ignore_label must be an int in {num_fg + 1}..{labels.LUT_SIZE - 1} (above every class id, inside the "
      f"uint8 LUT), got {ignore_label!r}"
    )
  ignore_label = int(ignore_label)
  sizes = scenario._step_sizes(task, num_fg)  # pylint: disable=protected-access
  class_order = scenario._class_order(  # pylint: disable=protected-access
    order, num_fg, seed=seed, pixel_counts=pixel_counts
  )
  channel_of = {c: i + 1 for i, c in enumerate(class_order)}
  keep_old = setting == "sequential" and labeling == "keep"

  steps = []
  start = 0
  for k, size in enumerate(sizes):
    old = class_order[:start]
    new = class_order[start : start + size]
    train_lut, eval_lut = labels.build_step_luts(
      channel_of=channel_of, old=old, new=new, keep_old=keep_old, num_fg=num_fg, ignore_label=ignore_label,
      policy=policy,
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
        future_classes=class_order[start + size :],
        zero_is_class=zero_is_class and k == 0,
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
    class_lists: Per training image, the class ids present (background/ignore allowed, they are disregarded).

  Returns:
    One sorted list of image indices per step.
  """
  # Materialise each image's ids once; class_lists may hold one-shot iterators.
  per_image = [list(ids) for ids in class_lists]
  return [[i for i, ids in enumerate(per_image) if step.keep_train_image(ids)] for step in plan.steps]


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
  """Raises if any step has no training image (e.g. a disjoint step whose classes always co-occur with later ones).

  Args:
    plan: The task plan.
    counts: Per-step image counts, e.g. from `count_step_images`.

  Raises:
    ValueError: Naming every empty step's index and new classes, or if `counts` does not have one entry per step.
  """
  if len(counts) != len(plan.steps):
    raise ValueError(f"got {len(counts)} counts for {len(plan.steps)} steps")
  empty = [s for s, n in zip(plan.steps, counts) if int(n) == 0]
  if empty:
    desc = "; ".join(f"step {s.index} (new classes {list(s.new_classes)})" for s in empty)
    raise ValueError(f"No training images for {desc} in scenario {plan.scenario!r} with setting {plan.setting!r}")
