"""Segmentation evaluation: the eval step, confusion matrix on device, scores on host.

`confusion_matrix` runs inside `jit` on a batch of label/prediction maps and
returns an int32 (C, C) matrix. `evaluate_step` sums the per-batch matrices of
a whole split on the host in int64 (a validation set can exceed 2**31 pixels)
and calls `segmentation_metrics` once on the sum: every score is a ratio of
sums over the whole split, never a mean of per-image scores
(docs/reference_code.md §11).

Rows are ground truth, columns are predictions, indices are model channels
(channel 0 = background); a step's `eval_lut` (incseg_jax/tasks) maps dataset
labels to channels first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from incseg_jax import hooks as hooks_lib
from incseg_jax import sharding
from incseg_jax.data import pipeline

__all__ = ["confusion_matrix", "evaluate_step", "make_eval_step", "segmentation_metrics"]


def confusion_matrix(labels, preds, num_classes: int, ignore_label: int = 255) -> jax.Array:
  """Confusion matrix of one batch, jit-compatible.

  Args:
    labels: Ground-truth channel ids, any integer dtype and shape.
    preds: Predicted channel ids, same shape as `labels`.
    num_classes: `C`, the number of channels (static under `jit`).
    ignore_label: Label value to skip (static under `jit`).

  Returns:
    `int32` array of shape `(C, C)`; entry `[g, p]` counts pixels with ground
    truth `g` predicted as `p`. Pixels whose label equals `ignore_label`, is
    negative or is `>= C` are skipped, and so are pixels whose prediction is
    outside `[0, C)` (an argmax over `C` channels never produces one; counting
    them would spill into the next row).
  """
  num_classes = int(num_classes)
  labels = jnp.asarray(labels)
  preds = jnp.asarray(preds)
  if labels.shape != preds.shape:
    raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in shape")
  # Widen before arithmetic: uint8 labels times C would wrap around at 256.
  lab = labels.reshape(-1).astype(jnp.int32)
  pred = preds.reshape(-1).astype(jnp.int32)
  valid = (
    (lab != ignore_label)
    & (lab >= 0)
    & (lab < num_classes)
    & (pred >= 0)
    & (pred < num_classes)
  )
  # One flat histogram of label * C + pred: O(pixels) memory, no (pixels x C) one-hot.
  # Skipped pixels go to bin 0 with weight 0 so no index is ever out of range.
  flat = jnp.where(valid, lab * num_classes + pred, 0)
  counts = jax.ops.segment_sum(
    valid.astype(jnp.int32), flat, num_segments=num_classes * num_classes
  )
  return counts.reshape(num_classes, num_classes)


def _nanmean(values: np.ndarray) -> float:
  """Mean of a float64 vector; NaN for an empty vector (no warning, no exception)."""
  return float(values.mean()) if values.size else math.nan


def _to_json(value: float) -> float | None:
  """Plain float, with NaN turned into None for JSON."""
  value = float(value)
  return None if math.isnan(value) else value


def _channel_set(name: str, channels: Sequence[int], num_classes: int) -> np.ndarray:
  """Validated unique channel ids as an int array."""
  ids = np.asarray(list(channels), dtype=np.int64).reshape(-1)
  bad = ids[(ids < 0) | (ids >= num_classes)]
  if bad.size:
    raise ValueError(
      f"{name} contains channel ids {sorted(set(bad.tolist()))} outside 0..{num_classes - 1}"
    )
  return np.unique(ids)


def segmentation_metrics(
  conf: np.ndarray,
  *,
  old_channels: Sequence[int] = (),
  new_channels: Sequence[int] = (),
  class_names: Sequence[str] | None = None,
) -> dict:
  """Scores from a summed confusion matrix, in float64.

  Per class `c` with `TP = conf[c, c]`, `GT = conf[c].sum()` and
  `Pred = conf[:, c].sum()`:

  * `iou[c] = TP / (GT + Pred - TP)`: None when the union is empty. A class absent
   from the ground truth but predicted has IoU 0 in the list, yet is left out of
   every mean.
  * `acc[c] = TP / GT` (per-class pixel accuracy, i.e. recall; the first paper's
   PA): None when `GT = 0`.

  Means (docs/reference_code.md §11) over classes *present in the ground truth*
  (`GT > 0`):

  * `miou`: every channel, background included.
  * `miou_old`: `old_channels` without background (MiB/UCD tables' "old").
  * `miou_old_bg`: `old_channels` plus background (PLOP's "old").
  * `miou_new`: `new_channels`.
  * `miou_fg`: every foreground channel (1..C-1).
  * `mean_class_acc`: mean per-class accuracy (the first paper's mCA).
  * `pixel_acc = trace / total`: overall pixel accuracy. The first paper (ILT
   journal, section 5) lists "mean PA (mPA)" with the FCN metrics of its ref. [56]
   and no formula; we read it as this global ratio (FCN's "pixel accuracy"), since
   its tables report mPA well above both mCA and mIoU (e.g. 93.9 vs 84.2 and 73.6),
   which only the pixel-weighted ratio can give when background dominates.

  Empty groups (nothing present) give None, never an exception.

  Args:
    conf: `(C, C)` confusion matrix, rows ground truth, columns predictions,
      summed over the evaluation set.
    old_channels: Old foreground channel ids of the evaluated step (a channel 0 in
      here is dropped from `miou_old`; it is always in `miou_old_bg`).
    new_channels: New channel ids of the evaluated step.
    class_names: Optional names, one per channel, copied into the result.

  Returns:
    A JSON-serialisable dict with keys `miou`, `miou_old`, `miou_old_bg`,
    `miou_new`, `miou_fg`, `pixel_acc`, `mean_class_acc` (floats or None),
    `iou` and `acc` (lists of float or None, one per channel), `present` (list
    of bool, class in ground truth), `num_pixels` (int), `num_classes` (int) and
    `class_names` when given.

  Raises:
    ValueError: If `conf` is not square, holds negative counts, or a channel list
      or `class_names` does not fit `C`.
  """
  counts = np.asarray(conf)
  if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
    raise ValueError(f"conf must be a square 2-D matrix, got shape {counts.shape}")
  if counts.size and counts.min() < 0:
    raise ValueError("conf holds negative counts")
  num_classes = counts.shape[0]
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f"class_names has {len(class_names)} entries for {num_classes} channels")
  m = counts.astype(np.float64)
  tp = np.diag(m)
  gt = m.sum(axis=1)
  pred = m.sum(axis=0)
  union = gt + pred - tp
  # errstate: 0/0 is the documented "undefined" case and becomes NaN -> None.
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
    acc = np.where(gt > 0, tp / gt, np.nan)
  present = gt > 0

  old = _channel_set("old_channels", old_channels, num_classes)
  new = _channel_set("new_channels", new_channels, num_classes)
  old_fg = old[old != 0]
  old_bg = np.union1d(old_fg, [0]).astype(np.int64) if num_classes else old_fg

  def group_mean(ids: np.ndarray) -> float:
    ids = ids[present[ids]]
    return _nanmean(iou[ids])

  total = float(m.sum())
  result = {
    "miou": group_mean(np.arange(num_classes)),
    "miou_old": group_mean(old_fg),
    "miou_old_bg": group_mean(old_bg),
    "miou_new": group_mean(new),
    "miou_fg": group_mean(np.arange(1, num_classes)),
    "pixel_acc": float(np.trace(m) / total) if total > 0 else math.nan,
    "mean_class_acc": _nanmean(acc[present]),
  }
  out: dict = {k: _to_json(v) for k, v in result.items()}
  out["iou"] = [_to_json(v) for v in iou]
  out["acc"] = [_to_json(v) for v in acc]
  out["present"] = [bool(p) for p in present]
  # Counts are whole numbers; float64 is exact up to 2**53 pixels.
  out["num_pixels"] = int(round(total))
  out["num_classes"] = int(num_classes)
  if class_names is not None:
    out["class_names"] = [str(n) for n in class_names]
  return out


def make_eval_step(model: nn.Module, num_channels: int, ignore_label: int) -> Callable:
  """Jitted `(variables, batch) -> (C, C) confusion matrix` of one batch."""

  def step(variables, batch):
    # "valid" (real pixels of images padded to a common shape) keeps the
    # image pooling of padded evaluation images to their real extent.
    logits = model.apply(variables, batch["image"], train=False, valid=batch.get("valid"))["logits"]
    preds = jnp.argmax(logits, axis=-1)
    return confusion_matrix(batch["label"], preds, num_channels, ignore_label)

  return jax.jit(step)


def evaluate_step(exp, spec, variables: Any, mesh, hooks: hooks_lib.Hooks = hooks_lib.NONE) -> dict[str, Any]:
  """Metrics of the model after task step `spec.index` on the experiment's eval split.

  Args:
    exp: the `experiment.Experiment` (eval split, config, plan).
    spec: the task step's `experiment.StepSpec` (model, eval labels, channels).
    variables: the model's variables after the step.
    mesh: the device mesh; batches are sharded over its data axis.
    hooks: observation points (see incseg_jax/hooks.py).

  Returns:
    `segmentation_metrics` of the whole split.
  """
  step = spec.task
  cfg = exp.config
  eval_fn = make_eval_step(spec.model, step.num_channels, exp.plan.ignore_label)
  conf = np.zeros((step.num_channels, step.num_channels), np.int64)
  batches = pipeline.eval_batches(exp.eval_split, step.eval_lut, cfg.input, batch_size=cfg.eval_batch_size,
                                  bucket=cfg.get("eval_bucket", 0), ignore_label=exp.plan.ignore_label)
  for i, batch in enumerate(batches):
    conf += np.asarray(jax.device_get(eval_fn(variables, sharding.put_batch(batch, mesh))), np.int64)
    hooks.after_eval_batch(spec.index, i + 1)
  return segmentation_metrics(conf, old_channels=step.old_channels, new_channels=step.new_channels,
                              class_names=exp.channel_names[:step.num_channels])
