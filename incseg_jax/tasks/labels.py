"""Label tables: how raw dataset labels become training and evaluation targets.

Every label rewrite is a 256-entry uint8 lookup table (LUT) applied to the raw label values, so the data pipeline
only ever does `lut[label]`. `build_step_luts` is the one place these tables are made; `LabelPolicy` holds the
conventions beyond the setting's rules that vary between papers and datasets (docs/reference_code.md §10):

* `void_in_training`: the void/ignore label stays ignored in training ("ignore") or is trained as background
  ("background", the MiB code's convention).
* `label_zero`: raw label 0 is the background class ("background") or, on datasets whose label 0 means
  unlabelled (ADE20K, Cityscapes), is ignored in training and evaluation ("ignore", MiB's ADE20K convention).
* `unseen_eval`: classes not learned yet are ignored in evaluation ("ignore", MiB) or count as background
  ("background", PLOP/UCD).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

import numpy as np

__all__ = [
  "LUT_SIZE",
  "MAX_NUM_FG",
  "VOID_IN_TRAINING",
  "LABEL_ZERO",
  "UNSEEN_EVAL",
  "DATASET_VOID",
  "LabelPolicy",
  "build_step_luts",
]

LUT_SIZE = 256
# Channels 0..num_fg and an ignore label above them must all fit the uint8 LUT.
MAX_NUM_FG = LUT_SIZE - 2

VOID_IN_TRAINING = ("ignore", "background")
LABEL_ZERO = ("background", "ignore")
UNSEEN_EVAL = ("ignore", "background")
# Values of the dataset config's `void` field; "ignore" becomes `label_zero="ignore"`.
DATASET_VOID = ("background", "ignore")


@dataclasses.dataclass(frozen=True)
class LabelPolicy:
  """How raw labels map to targets, beyond what the setting and labeling decide (see module docstring).

  Attributes:
    void_in_training: One of `VOID_IN_TRAINING`: the ignore label's training target is the ignore label
      ("ignore") or background 0 ("background"). Evaluation always ignores it.
    label_zero: One of `LABEL_ZERO`: raw label 0 is background channel 0 ("background") or is ignored in both
      training and evaluation ("ignore").
    unseen_eval: One of `UNSEEN_EVAL`: the evaluation target of a class not learned yet is the ignore label
      ("ignore") or background 0 ("background").

  Raises:
    ValueError: On construction, for a field outside its valid values (the message lists them).
  """

  void_in_training: str = "ignore"
  label_zero: str = "background"
  unseen_eval: str = "ignore"

  def __post_init__(self):
    for name, valid in (
      ("void_in_training", VOID_IN_TRAINING),
      ("label_zero", LABEL_ZERO),
      ("unseen_eval", UNSEEN_EVAL),
    ):
      value = getattr(self, name)
      if not isinstance(value, str) or value not in valid:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {list(valid)}")

  @classmethod
  def for_dataset(
    cls,
    *,
    dataset_name: str,
    void_is_zero: bool,
    zero_name: str,
    dataset_void: str,
    void_as_background: bool,
    unseen_eval: str,
  ) -> LabelPolicy:
    """The policy of a run: the dataset's void convention combined with the method's label conventions.

    Args:
      dataset_name: Dataset name, for error messages.
      void_is_zero: Whether the dataset's label 0 means unlabelled/void (ADE20K, Cityscapes) rather than a real
        background class.
      zero_name: The dataset's name of class 0, for error messages.
      dataset_void: One of `DATASET_VOID` (the config field `config.dataset.void`): raw label 0 is trained and
        evaluated as background, or ignored ("ignore", only for datasets with a void label 0).
      void_as_background: The method maps the ignore label to background in training (MiB).
      unseen_eval: The method's evaluation of classes not learned yet, one of `UNSEEN_EVAL`.

    Returns:
      The `LabelPolicy`.

    Raises:
      ValueError: If `dataset_void` is not one of `DATASET_VOID`, if it is "ignore" on a dataset whose label 0 is
        a real class, or if `unseen_eval` is not one of `UNSEEN_EVAL`.
    """
    if dataset_void not in DATASET_VOID:
      raise ValueError(f"config.dataset.void={dataset_void!r}: expected one of {', '.join(DATASET_VOID)}")
    if dataset_void == "ignore" and not void_is_zero:
      raise ValueError(
        f"config.dataset.void='ignore': label 0 of dataset {dataset_name!r} is a real class ({zero_name!r}), not "
        "void; only datasets with a void label 0 (ade20k, cityscapes) accept it"
      )
    return cls(
      void_in_training="background" if void_as_background else "ignore",
      label_zero=dataset_void,
      unseen_eval=unseen_eval,
    )


def build_step_luts(
  *,
  channel_of: Mapping[int, int],
  old: Collection[int],
  new: Collection[int],
  keep_old: bool,
  num_fg: int,
  ignore_label: int,
  policy: LabelPolicy,
) -> tuple[np.ndarray, np.ndarray]:
  """Training and evaluation LUTs of one incremental step.

  Training: the step's new classes map to their channel; old classes keep theirs if `keep_old` (the sequential
  setting's "keep" labeling) and become background 0 otherwise; classes of later steps become background.
  Evaluation: every class seen so far maps to its channel, classes not learned yet follow `policy.unseen_eval`.
  In both, raw label 0 follows `policy.label_zero`, and any value above `num_fg` other than the ignore label maps
  to the ignore label. The ignore label stays ignore in evaluation and follows `policy.void_in_training` in
  training.

  Args:
    channel_of: Original class id -> channel, for every class `1..num_fg`.
    old: Original ids learned in earlier steps.
    new: Original ids learned in this step.
    keep_old: Whether old classes keep their channel in the training LUT.
    num_fg: Number of foreground classes.
    ignore_label: The ignore value, in `num_fg + 1 .. 255`.
    policy: The label conventions.

  Returns:
    `(train_lut, eval_lut)`, each `(256,)` uint8 and read-only.
  """
  # Start from "everything is ignore": values > num_fg other than the ignore label are junk and must never become
  # a class.
  train = np.full((LUT_SIZE,), ignore_label, dtype=np.uint8)
  evl = np.full((LUT_SIZE,), ignore_label, dtype=np.uint8)
  zero = ignore_label if policy.label_zero == "ignore" else 0
  train[0] = zero
  evl[0] = zero
  train[ignore_label] = 0 if policy.void_in_training == "background" else ignore_label
  evl[ignore_label] = ignore_label
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
      evl[c] = ignore_label if policy.unseen_eval == "ignore" else 0
  train.setflags(write=False)
  evl.setflags(write=False)
  return train, evl
