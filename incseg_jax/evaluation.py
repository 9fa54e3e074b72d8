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

For looking at rather than scoring: `fixed_images` (the first N images of the
eval split), `predict_fixed` (a step's argmax on them) and the palette
colouring (`colourise`, `prediction_colours`) serve the TensorBoard images a
run writes at each task step (`image_summaries`, `config.tb_images`) and the
qualitative grid of `incseg_jax.plot`; they never touch the metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from incseg_jax import hooks as hooks_lib
from incseg_jax import models
from incseg_jax import sharding

if TYPE_CHECKING:  # the data pipeline imports TensorFlow, which the train-step benchmark does without
  from incseg_jax.data import pipeline

__all__ = ["FixedImages", "channel_classes", "colourise", "confusion_matrix", "evaluate_step", "fixed_images",
           "image_summaries", "make_eval_step", "make_predict", "predict_fixed", "prediction_colours",
           "segmentation_metrics", "tb_image_count"]


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


# Memoised by value (flax modules compare by their fields): the runs of a sweep, or of a test process, that
# evaluate the same model reuse one traced function instead of tracing it again for every task step.
@functools.lru_cache(maxsize=16)
def make_eval_step(model: nn.Module, num_channels: int, ignore_label: int) -> Callable:
  """Jitted `(variables, batch) -> (C, C) confusion matrix` of one batch (memoised by value)."""

  def step(variables, batch):
    # "valid" (real pixels of images padded to a common shape) keeps the
    # image pooling of padded evaluation images to their real extent.
    scores = models.prediction_scores(model.apply(variables, batch["image"], train=False, valid=batch.get("valid")))
    preds = jnp.argmax(scores, axis=-1)
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
  from incseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
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


# Predictions of a few fixed images, for looking at (TensorBoard during training, `incseg_jax.plot`).

# Void / ignored pixels in coloured label maps: VOC's void colour, the same for every dataset.
IGNORE_COLOUR = (224, 224, 192)
_GAP = 2  # white pixels between the panels of a TensorBoard image


@dataclasses.dataclass(frozen=True)
class FixedImages:
  """The first images of an evaluation split, decoded once, as the model and a viewer need them.

  Attributes:
    ids: example ids (the split's order: sorted by id, see `pipeline.load_split`).
    rgb: per image, (h, w, 3) uint8 as decoded.
    labels: per image, (h, w) uint8 raw dataset labels (not mapped to channels).
    images: (N, H, W, 3) float32 normalised as in evaluation, zero-padded (bottom/right) to the largest.
    valid: (N, H, W) bool, True on each image's own pixels, for variable-size datasets (as
      `pipeline.eval_batches` passes it); None for fixed-size ones.
  """
  ids: list[str]
  rgb: list[np.ndarray]
  labels: list[np.ndarray]
  images: np.ndarray
  valid: np.ndarray | None

  def __len__(self) -> int:
    return len(self.ids)


def fixed_images(split: pipeline.EncodedSplit, n: int, input_cfg) -> FixedImages:
  """The first `n` images of `split` (all of them if it has fewer), decoded and normalised as evaluation does.

  Always the same images for a given split, so runs and task steps can be compared side by side.

  Raises:
    ValueError: `n` is not a positive integer.
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"fixed_images: n={n!r}, expected a positive number of images")
  count = min(int(n), len(split))
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (not with this module: see `evaluate_step`)
  # tf's decoders, as the evaluation pipeline's: another JPEG decoder may differ in the last bits.
  rgb = [tf.io.decode_image(split.images[i], channels=3, expand_animations=False).numpy() for i in range(count)]
  labels = [tf.io.decode_png(split.labels[i], channels=1).numpy()[..., 0] for i in range(count)]
  height, width = max(x.shape[0] for x in rgb), max(x.shape[1] for x in rgb)
  mean, std = np.asarray(input_cfg.mean, np.float32), np.asarray(input_cfg.std, np.float32)
  images = np.zeros((count, height, width, 3), np.float32)
  valid = np.zeros((count, height, width), bool)
  for i, x in enumerate(rgb):
    # float32 throughout, as pipeline._normalise: the same input numbers as evaluation's.
    images[i, :x.shape[0], :x.shape[1]] = (x.astype(np.float32) / np.float32(255.0) - mean) / std
    valid[i, :x.shape[0], :x.shape[1]] = True
  return FixedImages(ids=list(split.ids[:count]), rgb=rgb, labels=labels, images=images,
                     valid=valid if split.sizes is not None else None)


@functools.lru_cache(maxsize=16)
def make_predict(model: nn.Module) -> Callable:
  """Jitted `(variables, images, valid) -> (N, H, W) int32` argmax channel per pixel (eval mode; memoised as
  `make_eval_step`)."""

  def predict(variables, images, valid):
    scores = models.prediction_scores(model.apply(variables, images, train=False, valid=valid))
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)

  return jax.jit(predict)


def predict_fixed(model: nn.Module, variables: Any, shown: FixedImages, mesh=None) -> list[np.ndarray]:
  """Per image of `shown`, the (h, w) int32 channel the model predicts (cropped to the image's own size).

  Args:
    model: the task step's model definition.
    variables: its variables (as restored or trained; never modified).
    shown: the images.
    mesh: the device mesh of `variables`; the images are replicated over it
      (a handful of images need not divide over the devices).
  """
  images, valid = shown.images, shown.valid
  if mesh is not None:
    images, valid = sharding.put_replicated((images, valid), mesh)
  preds = np.asarray(jax.device_get(make_predict(model)(variables, images, valid)))
  return [preds[i, :x.shape[0], :x.shape[1]] for i, x in enumerate(shown.rgb)]


def channel_classes(plan) -> np.ndarray:
  """Dataset class id of each channel of the plan's final model: background (0), then the class order."""
  return np.asarray((0,) + tuple(plan.order), np.int64)


def colourise(ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """(h, w, 3) uint8: `palette[id]` per pixel; ids outside the palette (void, padding) get `IGNORE_COLOUR`."""
  palette = np.asarray(palette, np.uint8)
  ids = np.asarray(ids, np.int64)
  inside = (ids >= 0) & (ids < len(palette))
  out = palette[np.where(inside, ids, 0)]
  out[~inside] = IGNORE_COLOUR
  return out


def prediction_colours(pred: np.ndarray, channel_class: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """A predicted channel map coloured with the dataset's palette (channel -> class id -> colour)."""
  return colourise(np.asarray(channel_class)[np.asarray(pred)], palette)


def tb_image_count(cfg) -> int:
  """`config.tb_images`: fixed evaluation images shown in TensorBoard at each task step's evaluation.

  Configs saved before the field existed lack it: 0 (off).

  Raises:
    ValueError: not a non-negative integer.
  """
  value = cfg.get("tb_images", 0)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"config.tb_images={value!r}: expected a non-negative integer (evaluation images shown in "
                     "TensorBoard at each task step; 0 = none)")
  return int(value)


def image_summaries(exp, spec, variables: Any, shown: FixedImages, mesh=None) -> dict[str, np.ndarray]:
  """TensorBoard images of task step `spec.index`: per fixed image, image | ground truth | prediction.

  Ground truth is the raw dataset labels (every class, learned or not, void in
  `IGNORE_COLOUR`), the same at every step; the prediction is the step's
  model's argmax, both coloured with the dataset's palette. Reads
  `variables` only: the metrics of the step are computed apart and unchanged.

  Returns:
    "eval_images/<i>" -> (h, 3 w + 2 gap, 3) uint8, one per image (a key's size
    is the same at every step, as TensorBoard requires).
  """
  palette = exp.meta.palette
  channel_class = channel_classes(exp.plan)
  preds = predict_fixed(spec.model, variables, shown, mesh)
  out = {}
  for i, (rgb, label, pred) in enumerate(zip(shown.rgb, shown.labels, preds)):
    gap = np.full((rgb.shape[0], _GAP, 3), 255, np.uint8)
    out[f"eval_images/{i}"] = np.concatenate(
        [rgb, gap, colourise(label, palette), gap, prediction_colours(pred, channel_class, palette)], axis=1)
  return out
