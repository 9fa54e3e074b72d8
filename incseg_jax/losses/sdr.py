"""SDR's latent-space terms (Michieli & Zanuttigh, CVPR 2021), as the public code (LTTM/SDR) computes them.

SDR adds four terms on the encoder output (`encoder`, the last ResNet stage,
the code's `features['body']`) to MiB's unbiased cross-entropy and unbiased
distillation (`incseg_jax/losses/mib.py`; preset in `incseg_jax/methods/sdr.py`):

  * `sdr_pm`, prototypes matching (the code's `DistillationEncoderPrototypesLoss`,
    `loss_de_prototypes` 0.01 with `loss_de_prototypes_sumafter`): at the pixels
    labelled background, the old model's argmax gives pseudo-labels of the old
    classes; per old class c present in the batch, the mean squared distance
    over channels between the mean encoder feature of its pixels and the
    class's prototype P_c; averaged over those classes.
  * `sdr_att`, the attractive part of the contrastive term (the code's
    `FeaturesClusteringSeparationLoss`, `loss_fc` 1e-3): per class c present in
    the labels (background included), the mean over its pixels and channels
    of (f - P_c)^2; averaged over the classes.
  * `sdr_rep`, the repulsive part (the same class, `lfc_sep_clust` 1e-3): the
    mean over ordered pairs of distinct present classes of 1 / ||m_i - m_j||_2,
    m the batch's mean feature of each class (not the prototypes).
  * `sdr_fs`, features sparsification (`FeaturesSparsificationLoss`,
    `loss_featspars` 1e-3, `max_maskedforclass` / `exponential` / `ratio`):
    each pixel's features divided by the largest feature value of its class
    in the batch, then per pixel sum_d exp(f_d) / (sum_d f_d + 1e-15),
    averaged over every pixel.

Prototypes: the running mean of the encoder features of each class over every
training batch seen so far, of this and earlier task steps (the code's
`Trainer._update_running_stats`, train.py:460-485), kept as the state of
`sdr_pm` and `sdr_att` (`PROTOTYPES`, below; each term keeps its own copy).
At every batch the classes of the training labels update their prototype,
P_c <- (sum of the batch's features of c + n_c P_c) / (n_c + f_c), n_c += f_c;
labels are the ground truth brought to the feature resolution by PyTorch's
nearest neighbour (`nearest_labels`). The background's prototype is updated
at step 0 only (`background_prototype="first_step"`: the code's default
disjoint setting; `"never"`: its `--overlap` runs; `"always"`: its sequential
`--no_mask` runs); at later steps old classes are background in the labels,
so only the new classes' prototypes move and the old ones are those of the
step that learned them. The code updates the prototypes before computing the
batch's losses, so the terms read the prototypes after this batch's update
(`updated_prototypes`, without gradient); the state update then stores the
same values.

The terms are off at step 0 (`needs_teacher`): the published runs train step 0
as fine-tuning and only collect the prototypes there (README, step-0 command);
the prototype state is nonetheless accumulated from step 0 on.

Reference bugs (docs/reference_code.md, "Reference bugs"), options off by
default that reproduce the code:
  * `mixed_channels` (`sdr_pm`, `sdr_att`, `sdr_rep`): the code gathers a
    class's features with a boolean mask on the (B, C, h, w) tensor, which
    lists them image by image, channel by channel, and reshapes the result:
    utils/loss.py:501 views it as (N, C) (pixels x channels) although it is
    laid out (C, N), so the class mean of loss.py:504 mixes channels even at
    batch 1; train.py:474 and utils/loss.py:383 view it as (C, N), right for
    one image, mixed across images and channels at batch > 1 (the published
    runs use batch 8). The intended computation, ours by default, is the
    per-channel mean (sum) over the class's pixels of the whole batch. With
    the option on, `sdr_pm` and `sdr_att` also accumulate their prototypes
    with train.py:474's reshape (their state rule reads the option).
  * `divide_inside_loop` (`sdr_att`): utils/loss.py:395 divides the running
    sum by the number of classes inside the loop over the classes, so the
    class with the largest id weighs 1/K, the one before 1/K^2, and so on.
    Ours: the mean over the K classes.

Label values: `ignore_label` takes part in no prototype, matching or
attraction/repulsion; `sdr_fs` normalises it as a class of its own, as the code
does (SDR trains with MiB's labels, where void is background, so no training
pixel is ignored).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from incseg_jax import losses
from incseg_jax.losses import state as state_lib

# The state's pixel counts are integers held exactly in two float32 arrays:
# count = count_high * COUNT_BASE + count_low, count_low < COUNT_BASE (float32 holds
# every integer below 2^24; a batch adds fewer than 2^23 pixels to a class).
COUNT_BASE = float(2 ** 23)
BACKGROUND_RULES = ("first_step", "never", "always")
OLD_LABELS = ("pseudo", "ground_truth")
NORMALIZATIONS = ("max_maskedforclass", "max_foreachfeature", "max_overall", "L1", "L2", "softmax")
SHRINKINGS = ("exponential", "squared", "power3")
FUNCTIONS = ("ratio", "lasso", "entropy")
FS_EPS = 1e-15  # the code's `self.eps` of FeaturesSparsificationLoss
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------
# Shared helpers.


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source index of each output index under PyTorch's `F.interpolate(mode='nearest')`.

  floor(i * (in / out)) in float32 arithmetic, clipped to in - 1 (the code's
  labels and old-model argmax go through it). The feature map's position i
  covers input pixel i * output_stride, so this samples the first pixel of each
  cell, not its centre.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, in_size - 1)


def nearest_labels(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(B, H, W) labels (or any per-pixel map) at (h, w) by PyTorch's nearest neighbour."""
  rows = nearest_indices(labels.shape[1], size[0])
  cols = nearest_indices(labels.shape[2], size[1])
  return labels[:, rows][:, :, cols]


def encoder_channels(params: Any) -> int:
  """Channels of the encoder output: the widest output of the backbone's last stage."""
  backbone = params.get("backbone") if hasattr(params, "get") else None
  stages = sorted((k for k in (backbone or {}) if str(k).startswith("stage")), key=lambda k: int(str(k)[5:]))
  if not stages:
    raise ValueError("sdr: no backbone/stage* parameters to read the encoder's channel count from")
  return int(max(np.shape(x)[-1] for x in jax.tree.leaves(backbone[stages[-1]])))


def _features(out: dict[str, Any]) -> jax.Array:
  return out["encoder"].astype(jnp.float32)


def _valid_classes(labels_down: jax.Array, task: losses.TaskInfo) -> jax.Array:
  return (labels_down != task.ignore_label) & (labels_down >= 0) & (labels_down < task.num_channels)


def code_layout(class_map: jax.Array, num_classes: int, dim: int, view: str):
  """Where the code's reshape puts each feature value of each class.

  For a class c, `features[(labels == c).expand(-1, D, -1, -1)]` lists the
  values image by image, channel by channel, pixel by pixel (raster order):
  value (pixel p of image b, channel d) sits at flat position
  q = D * (pixels of c in images before b) + d * (pixels of c in image b) + k,
  k its rank among image b's pixels of c. `.view(D, -1)` puts it in row
  q // N_c (the row the code treats as channel; `view="channels_by_pixels"`),
  `.view(-1, D)` in column q % D (`view="pixels_by_channels"`).

  Args:
    class_map: (B, h, w) int, the class of each pixel, -1 (or any value outside
      [0, num_classes)) for pixels of no class.
    num_classes: C.
    dim: D, the feature channels.
    view: "channels_by_pixels" (train.py:474, loss.py:383) or
      "pixels_by_channels" (loss.py:501).

  Returns:
    (cls (P,) int32 the class of each pixel (0 where none), index (P, D) int32
    the row or column of each value (0 where no class), valid (P,) bool,
    counts (C,) int32 pixels per class), P = B*h*w in raster order.
  """
  b, h, w = class_map.shape
  cm = class_map.reshape(b, h * w).astype(jnp.int32)
  valid = (cm >= 0) & (cm < num_classes)
  cls = jnp.where(valid, cm, 0)
  onehot = jax.nn.one_hot(cls, num_classes, dtype=jnp.int32) * valid[..., None].astype(jnp.int32)  # (B, hw, C)
  rank = jnp.take_along_axis(jnp.cumsum(onehot, axis=1) - onehot, cls[..., None], axis=-1)[..., 0]  # (B, hw)
  per_image = onehot.sum(axis=1)  # (B, C)
  before = jnp.cumsum(per_image, axis=0) - per_image  # (B, C)
  counts = per_image.sum(axis=0)  # (C,)
  n_image = jnp.take_along_axis(per_image, cls, axis=1)  # (B, hw)
  offset = jnp.take_along_axis(before, cls, axis=1)  # (B, hw)
  q = dim * offset[..., None] + jnp.arange(dim, dtype=jnp.int32) * n_image[..., None] + rank[..., None]
  if view == "channels_by_pixels":
    index = q // jnp.maximum(counts[cls], 1)[..., None]
  elif view == "pixels_by_channels":
    index = q % dim
  else:
    raise ValueError(f"code_layout: view={view!r}")
  index = jnp.where(valid[..., None], index, 0)
  return cls.reshape(-1), index.reshape(-1, dim), valid.reshape(-1), counts


def class_sums(features: jax.Array, class_map: jax.Array, num_classes: int,
               mixed_channels: bool = False) -> tuple[jax.Array, jax.Array]:
  """Per-class sums of the features over the batch, and pixel counts.

  Args:
    features: (B, h, w, D) float.
    class_map: (B, h, w) int, -1 (or any value outside [0, C)) for no class.
    num_classes: C.
    mixed_channels: the code's `.view(D, -1)` of the masked features
      (train.py:474, loss.py:383): sums of its rows (see `code_layout`).

  Returns:
    (sums (C, D) float32, counts (C,) float32).
  """
  b, h, w, d = features.shape
  f = features.reshape(b * h * w, d).astype(jnp.float32)
  if mixed_channels:
    cls, index, valid, counts = code_layout(class_map, num_classes, d, "channels_by_pixels")
    sums = jnp.zeros((num_classes, d), jnp.float32).at[cls[:, None], index].add(jnp.where(valid[:, None], f, 0.0))
    return sums, counts.astype(jnp.float32)
  cm = class_map.reshape(-1)
  onehot = jax.nn.one_hot(cm, num_classes, dtype=jnp.float32)  # zero rows outside [0, C)
  return jnp.einsum("pc,pd->cd", onehot, f, precision=_HIGHEST), onehot.sum(axis=0)


# ---------------------------------------------------------------------------
# Prototypes: the state of `sdr_pm` and `sdr_att`.


def count(state: dict[str, Any]) -> jax.Array:
  """The pixels each prototype has averaged (float32, rounded beyond 2^24)."""
  return state["count_high"] * COUNT_BASE + state["count_low"]


def _check_background_rule(rule: str) -> None:
  if rule not in BACKGROUND_RULES:
    raise ValueError(f"sdr: background_prototype={rule!r}: expected one of {BACKGROUND_RULES}")


def prototype_classes(labels_down: jax.Array, task: losses.TaskInfo, background_prototype: str) -> jax.Array:
  """(B, h, w) class of each pixel for the prototype update, -1 where none (ignored, or background not updated)."""
  _check_background_rule(background_prototype)
  keep = _valid_classes(labels_down, task)
  skip_background = background_prototype == "never" or (background_prototype == "first_step" and task.index > 0)
  if skip_background:
    keep &= labels_down != 0
  return jnp.where(keep, labels_down, -1)


def updated_prototypes(state: dict[str, Any], features: jax.Array, labels: jax.Array, task: losses.TaskInfo,
                       background_prototype: str = "first_step", mixed_channels: bool = False) -> dict[str, Any]:
  """The state after one batch: each present class's running mean and count (train.py:460-485).

  Args:
    state: {"prototypes" (C, D), "count_high" (C,), "count_low" (C,)}.
    features: (B, h, w, D) encoder features (used without gradient).
    labels: (B, H, W) training labels in channel ids.
    task: the step's TaskInfo (index, num_channels, ignore_label).
    background_prototype: when the background's prototype is updated (module docstring).
    mixed_channels: the code's reshape of train.py:474 (module docstring).

  Returns:
    The new state (same keys and shapes).
  """
  features = jax.lax.stop_gradient(features.astype(jnp.float32))
  num = state["prototypes"].shape[0]
  if features.shape[-1] != state["prototypes"].shape[1]:
    raise ValueError(f"sdr: encoder features have {features.shape[-1]} channels, the prototypes "
                     f"{state['prototypes'].shape[1]}")
  labels_down = nearest_labels(labels, features.shape[1:3])
  sums, f = class_sums(features, prototype_classes(labels_down, task, background_prototype), num,
                       bool(mixed_channels))
  low = state["count_low"] + f  # exact: both < 2^23
  carry = jnp.floor(low / COUNT_BASE)
  high = state["count_high"] + carry
  low = low - carry * COUNT_BASE
  n_old = count(state)
  n_new = high * COUNT_BASE + low
  proto = state["prototypes"]
  mean = (sums + n_old[:, None] * proto) / jnp.maximum(n_new, 1.0)[:, None]
  return {"prototypes": jnp.where((f > 0)[:, None], mean, proto), "count_high": high, "count_low": low}


def prototype_init(ctx: state_lib.StateContext) -> dict[str, Any]:
  """Zero prototypes for the step's channels; the previous step's rows and counts copied over."""
  num = ctx.task.num_channels
  dim = encoder_channels(ctx.params)
  state = {"prototypes": np.zeros((num, dim), np.float32), "count_high": np.zeros((num,), np.float32),
           "count_low": np.zeros((num,), np.float32)}
  if ctx.previous is not None:
    prev = {k: np.asarray(jax.device_get(v), np.float32) for k, v in ctx.previous.items()}
    n_prev, d_prev = prev["prototypes"].shape
    if d_prev != dim or n_prev > num:
      raise ValueError(f"sdr: the previous step's prototypes are {prev['prototypes'].shape}, this step has "
                       f"{num} channels of {dim} features")
    for key in state:
      state[key][:n_prev] = prev[key]
  return state


def prototype_update(state: dict[str, Any], u: state_lib.UpdateInputs) -> dict[str, Any]:
  """One applied batch: `updated_prototypes` on the student's encoder features."""
  return updated_prototypes(state, _features(u.student), u.labels, u.task,
                            u.options.get("background_prototype", "first_step"),
                            bool(u.options.get("mixed_channels", False)))


_MEMORY = "C x D prototypes + 2 x C counts (float32; C channels, D encoder channels), not parameter copies"
PM_PROTOTYPES = state_lib.StateRule("sdr_pm", prototype_init, prototype_update, memory=_MEMORY)
ATT_PROTOTYPES = state_lib.StateRule("sdr_att", prototype_init, prototype_update, memory=_MEMORY)


def _batch_prototypes(inputs: losses.LossInputs, features: jax.Array, background_prototype: str,
                      mixed_channels: bool) -> jax.Array:
  """The prototypes after this batch's update (as the code reads them), without gradient."""
  new = updated_prototypes(inputs.state, features, inputs.labels, inputs.task, background_prototype,
                           mixed_channels)
  return jax.lax.stop_gradient(new["prototypes"])


# ---------------------------------------------------------------------------
# The terms.


@losses.register("sdr_pm", needs_teacher=True, state=PM_PROTOTYPES)
def prototype_matching(inputs: losses.LossInputs, mean_first: bool = True, old_labels: str = "pseudo",
                       background_prototype: str = "first_step", mixed_channels: bool = False) -> jax.Array:
  """Prototypes matching (utils/loss.py:476-510): old classes' batch features against their prototypes.

  Pixels: where the label (at feature resolution) is background, the old
  model's argmax of its upsampled logits, brought to the feature resolution
  by nearest neighbour (`old_labels="pseudo"`, the code's disjoint and
  overlapped path); `"ground_truth"`: the labels themselves where they are
  old classes (the code's sequential path). Class 0 takes no part.

  `mean_first=True` (the code's `loss_de_prototypes_sumafter`, SDR's preset):
  (1/K) sum_c mean_d (mean_{p in c} f_pd - P_cd)^2 over the K old classes
  present; False: sum_c (1/N_c) sum_{p in c} mean_d (f_pd - P_cd)^2 (no 1/K, as
  the code). 0 when no old class is present.

  Args:
    inputs: the step's LossInputs; reads `student["encoder"]`,
      `teacher["logits"]`, `labels` and the term's prototype state.
    mean_first: see above.
    old_labels: "pseudo" or "ground_truth", see above.
    background_prototype: the state rule's (module docstring).
    mixed_channels: the code's reshapes (module docstring; a reference bug).

  Returns:
    A scalar loss.
  """
  if old_labels not in OLD_LABELS:
    raise ValueError(f"sdr_pm: old_labels={old_labels!r}: expected one of {OLD_LABELS}")
  feats = _features(inputs.student)
  b, h, w, d = feats.shape
  task = inputs.task
  num, n_old = task.num_channels, task.num_old_channels
  labels_down = nearest_labels(inputs.labels, (h, w))
  if old_labels == "pseudo":
    old_logits = nearest_labels(inputs.teacher["logits"], (h, w))
    pseudo = jnp.where(labels_down == 0, jnp.argmax(old_logits, axis=-1), 0)
  else:
    pseudo = jnp.where(labels_down < n_old, labels_down, 0)
  class_map = jnp.where((pseudo >= 1) & (pseudo < n_old), pseudo, -1)
  protos = _batch_prototypes(inputs, feats, background_prototype, bool(mixed_channels))
  f = feats.reshape(b * h * w, d)
  if mixed_channels:
    cls, index, valid, counts = code_layout(class_map, num, d, "pixels_by_channels")
    counts = counts.astype(jnp.float32)
    if mean_first:
      sums = jnp.zeros((num, d), jnp.float32).at[cls[:, None], index].add(jnp.where(valid[:, None], f, 0.0))
      per_class = jnp.mean(jnp.square(sums / jnp.maximum(counts, 1.0)[:, None] - protos), axis=-1)
    else:
      sq = jnp.where(valid[:, None], jnp.square(f - protos[cls[:, None], index]), 0.0).sum(axis=-1) / d
      per_class = jax.ops.segment_sum(sq, cls, num) / jnp.maximum(counts, 1.0)
  else:
    sums, counts = class_sums(feats, class_map, num)
    if mean_first:
      per_class = jnp.mean(jnp.square(sums / jnp.maximum(counts, 1.0)[:, None] - protos), axis=-1)
    else:
      cm = class_map.reshape(-1)
      valid = cm >= 0
      cls = jnp.where(valid, cm, 0)
      sq = jnp.where(valid, jnp.mean(jnp.square(f - protos[cls]), axis=-1), 0.0)
      per_class = jax.ops.segment_sum(sq, cls, num) / jnp.maximum(counts, 1.0)
  present = counts > 0
  total = jnp.where(present, per_class, 0.0).sum()
  if mean_first:
    return total / jnp.maximum(present.sum(), 1)
  return total


def _cluster_classes(labels_down: jax.Array, task: losses.TaskInfo, no_background: bool) -> jax.Array:
  keep = _valid_classes(labels_down, task)
  if no_background:
    keep &= labels_down != 0
  return jnp.where(keep, labels_down, -1)


@losses.register("sdr_att", needs_teacher=True, state=ATT_PROTOTYPES)
def feature_attraction(inputs: losses.LossInputs, no_background: bool = False, divide_inside_loop: bool = False,
                       background_prototype: str = "first_step", mixed_channels: bool = False) -> jax.Array:
  """Attraction to the prototypes (utils/loss.py:364-395, `loss_fc`).

  Per class c present in the labels at feature resolution (ignore label
  excluded; background too with `no_background`, the code's `lfc_nobgr`):
  m_c = mean over its pixels and channels of (f_pd - P_cd)^2, P the prototypes
  after this batch's update; the loss is the mean of m_c over the K classes
  (`divide_inside_loop=True`: the code's sum_i m_(i) / K^(K-i+1), classes in
  increasing id order, a reference bug). 0 when no class is present.

  Args:
    inputs: the step's LossInputs; reads `student["encoder"]`, `labels` and
      the term's prototype state.
    no_background: leave the background out.
    divide_inside_loop: reference bug (module docstring).
    background_prototype: the state rule's (module docstring).
    mixed_channels: the code's reshapes (module docstring; a reference bug).

  Returns:
    A scalar loss.
  """
  feats = _features(inputs.student)
  b, h, w, d = feats.shape
  num = inputs.task.num_channels
  class_map = _cluster_classes(nearest_labels(inputs.labels, (h, w)), inputs.task, bool(no_background))
  protos = _batch_prototypes(inputs, feats, background_prototype, bool(mixed_channels))
  f = feats.reshape(b * h * w, d)
  if mixed_channels:
    cls, index, valid, counts = code_layout(class_map, num, d, "channels_by_pixels")
    target = protos[cls[:, None], index]
  else:
    cm = class_map.reshape(-1)
    valid = cm >= 0
    cls = jnp.where(valid, cm, 0)
    counts = jax.ops.segment_sum(valid.astype(jnp.int32), cls, num)
    target = protos[cls]
  sq = jnp.where(valid, jnp.square(f - target).sum(axis=-1), 0.0)
  counts = counts.astype(jnp.float32)
  per_class = jax.ops.segment_sum(sq, cls, num) / (jnp.maximum(counts, 1.0) * d)
  present = counts > 0
  k = present.sum().astype(jnp.float32)
  if divide_inside_loop:
    position = jnp.cumsum(present)  # 1-based rank of each present class in increasing id order
    weight = jnp.power(jnp.maximum(k, 1.0), -(k - position + 1.0))
    return jnp.where(present, weight * per_class, 0.0).sum()
  return jnp.where(present, per_class, 0.0).sum() / jnp.maximum(k, 1.0)


def class_means(inputs: losses.LossInputs, no_background: bool, mixed_channels: bool) -> tuple[jax.Array, jax.Array]:
  """(C, D) batch mean feature of each class present in the labels (with gradient), and (C,) presence."""
  feats = _features(inputs.student)
  h, w = feats.shape[1:3]
  num = inputs.task.num_channels
  class_map = _cluster_classes(nearest_labels(inputs.labels, (h, w)), inputs.task, no_background)
  sums, counts = class_sums(feats, class_map, num, mixed_channels)
  return sums / jnp.maximum(counts, 1.0)[:, None], counts > 0


@losses.register("sdr_rep", needs_teacher=True)
def feature_repulsion(inputs: losses.LossInputs, no_background: bool = False, mixed_channels: bool = False) -> jax.Array:
  """Repulsion between classes (utils/loss.py:397-408, `lfc_sep_clust`).

  The mean over ordered pairs (i, j), i != j, of distinct classes present in
  the labels of 1 / ||m_i - m_j||_2, m the batch's class means (with gradient;
  not the prototypes). Pairs at distance 0 are left out (the code drops the
  infinite entries of its inverse distance matrix: the diagonal and
  coinciding means); 0 with fewer than two classes. Distances from the Gram
  matrix (torch.cdist's method for more than 25 classes).

  Args:
    inputs: the step's LossInputs; reads `student["encoder"]` and `labels`.
    no_background: leave the background out (the code's `lfc_nobgr`).
    mixed_channels: class means with the code's reshape of loss.py:383 (a
      reference bug, module docstring).

  Returns:
    A scalar loss.
  """
  means, present = class_means(inputs, bool(no_background), bool(mixed_channels))
  sq = jnp.sum(jnp.square(means), axis=-1)
  gram = jnp.matmul(means, means.T, precision=_HIGHEST)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  num = means.shape[0]
  pair = present[:, None] & present[None, :] & ~jnp.eye(num, dtype=bool) & (d2 > 0)
  inv = jnp.where(pair, jax.lax.rsqrt(jnp.where(pair, d2, 1.0)), 0.0)
  return inv.sum() / jnp.maximum(pair.sum(), 1)


@losses.register("sdr_fs", needs_teacher=True)
def feature_sparsity(inputs: losses.LossInputs, normalization: str = "max_maskedforclass",
                     shrinking: str = "exponential", function: str = "ratio", eps: float = FS_EPS) -> jax.Array:
  """Features sparsification (utils/loss.py:514-574, `loss_featspars`).

  Normalisation of the encoder features f (B, h, w, D):
    * max_maskedforclass (SDR's): f / (max of f over the pixels of the pixel's
      label and all channels + eps); every label value is a group (the ignore
      label too); when every pixel is background, nothing is normalised and
      the loss is 0 (the code drops the last class when it is 0);
    * max_foreachfeature: f / (max over channels + eps) per pixel;
      max_overall: f / (max + eps); L1 / L2: F.normalize over channels
      (norm floored at 1e-12); softmax over channels.
  Then, if the normalised features sum to more than 0 (else the loss is 0):
    * ratio (SDR's): per pixel sum_d s(f~_d) / (sum_d f~_d + eps), s =
      exponential (SDR's) | squared | power3; mean over every pixel;
    * lasso: sum |f| / 2 over the whole batch (raw features);
    * entropy: per pixel -sum_d f~ log(f~ + 1e-10); mean over pixels.

  With `ratio` and `exponential` a pixel whose normalised features are all 0
  (every channel 0 after the ReLU) gives D / eps, as in the code; its gradient
  is 0.

  Args:
    inputs: the step's LossInputs; reads `student["encoder"]` and `labels`.
    normalization, shrinking, function: see above (`lfs_normalization`,
      `lfs_shrinkingfn`, `lfs_loss_fn_touse`).
    eps: the code's 1e-15.

  Returns:
    A scalar loss.
  """
  for name, value, allowed in (("normalization", normalization, NORMALIZATIONS), ("shrinking", shrinking, SHRINKINGS),
                               ("function", function, FUNCTIONS)):
    if value not in allowed:
      raise ValueError(f"sdr_fs: {name}={value!r}: expected one of {allowed}")
  f = _features(inputs.student)
  b, h, w, d = f.shape
  if normalization == "max_maskedforclass":
    task = inputs.task
    labels_down = nearest_labels(inputs.labels, (h, w))
    groups = task.num_channels + 1
    group = jnp.where((labels_down >= 0) & (labels_down < task.num_channels), labels_down, task.num_channels)
    pixel_max = jnp.max(f, axis=-1)  # (B, h, w)
    member = jax.nn.one_hot(group, groups, dtype=bool)  # (B, h, w, G)
    group_max = jnp.max(jnp.where(member, pixel_max[..., None], -jnp.inf), axis=(0, 1, 2))  # (G,)
    denom = jnp.take(group_max, group) + eps
    fn = f / jnp.where(jnp.isfinite(denom), denom, 1.0)[..., None]
    fn = jnp.where(jnp.all(labels_down == 0), 0.0, fn)
  elif normalization == "max_foreachfeature":
    fn = f / (jnp.max(f, axis=-1, keepdims=True) + eps)
  elif normalization == "max_overall":
    fn = f / (jnp.max(f) + eps)
  elif normalization == "L1":
    fn = f / jnp.maximum(jnp.sum(jnp.abs(f), axis=-1, keepdims=True), 1e-12)
  elif normalization == "L2":
    fn = f / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)), 1e-12)
  else:
    fn = jax.nn.softmax(f, axis=-1)
  if function == "lasso":
    value = jnp.sum(jnp.abs(f)) / 2
  elif function == "entropy":
    value = jnp.mean(jnp.sum(-fn * jnp.log(fn + 1e-10), axis=-1))
  else:
    if shrinking == "exponential":
      shrunk = jnp.sum(jnp.exp(fn), axis=-1)
    elif shrinking == "squared":
      shrunk = jnp.sum(jnp.square(fn), axis=-1)
    else:
      shrunk = jnp.sum(fn ** 3, axis=-1)
    value = jnp.mean(shrunk / (jnp.sum(fn, axis=-1) + eps))
  return jnp.where(jnp.sum(fn) > 0, value, 0.0)
