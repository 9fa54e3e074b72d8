"""Local POD (PLOP, Douillard et al., CVPR 2021; UCD paper Eq. 18).

This module owns the `pod` term: multi-scale pooled distillation of the
previous model's intermediate maps,

  L_pod = (1/L) sum_l w_l sqrt(n_seen / n_new) || Phi_l^k - Phi_l^{k-1} ||,

where Phi_l is the Local POD embedding of layer l (below), n_seen the classes
seen so far background included (`task.num_channels`), n_new the classes of
this step, and the norm is taken per image and averaged over the batch.

How the public PLOP code computes it (docs/reference_code.md §12), which we match:
  * Six maps, in `layers` order: the four ResNet stage outputs of the last
    block before its final ReLU (`stages_pre`), the ASPP output
    (`pre_logits`) and the output-stride logits (`logits_os`). On the logits
    the new model's extra channels are folded into background by summing raw
    logits: z_0 + sum_{c >= N_old} z_c, then z_1..z_{N_old-1}.
  * Every map is squared element-wise first; no normalisation anywhere.
  * Local pooling at each scale s in `scales` (1, 2, 4): region side
    k = w // s from the map *width* for both axes (the code's choice; maps are
    square in PLOP's training crops), regions [i k, (i+1) k) x [j k, (j+1) k)
    for i, j < s (rows past the map are simply absent, rows/columns past s k
    are dropped). Per region, the mean over the width (one vector per row) and
    the mean over the height (one per column) are concatenated; all regions of
    all scales form Phi_l.
  * The difference is the (non-squared) L2 norm per image. The papers print
    ||.||^2, which `squared=True` gives; it is not wired to
    `conventions=paper` because lambda_pod = 0.01 was tuned for the norm (the
    squared distances of squared features are orders of magnitude larger).
  * The code weights each feature layer by pod_factor = 0.01 and the logits
    by 0.0005, each times sqrt(n_seen / n_new), sums, and divides by the
    number of layers; no further lambda multiplies the result.

Weights. The paper's lambda_pod (Eq. 20, 0.01) is the term's config weight
(`config.losses.pod`, 0.01 in the `plop` preset). Inside the term the feature
layers have weight 1 and the logits `logits_weight` = 0.05, so that
0.01 x 0.05 = 0.0005 reproduces the code's logits factor and 0.01 is applied
once. `class_schedule=False` drops the sqrt(n_seen / n_new) factor.

The code gives its 0.0005 (PLOP's `pod_options["switch"]["after"]["factor"]`)
to whichever map comes last in its list, not to the logits as such: with
`pod_logits` off its last map is the ASPP output, which then gets 0.0005 while
the logits are not distilled. We weight the `logits` layer, wherever it is in
`layers`; `logits_weight_on_last=True` (off by default; docs/reference_code.md,
"Reference bugs") gives `logits_weight` to the last entry of `layers`
instead, whatever it is, and weight 1 to every other, as the code does.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from incseg_jax import losses

LAYERS = ("stage1", "stage2", "stage3", "stage4", "aspp", "logits")


def fold_extra_logits(logits: jax.Array, num_old: int) -> jax.Array:
  """Folds the channels >= num_old into background by summing raw logits.

  Args:
    logits: (..., N) logits of the new model, N >= num_old.
    num_old: the previous model's channel count (background + old classes).

  Returns:
    (..., num_old): [z_0 + sum_{c >= num_old} z_c, z_1, ..., z_{num_old-1}].
  """
  background = logits[..., :1] + logits[..., num_old:].sum(axis=-1, keepdims=True)
  return jnp.concatenate([background, logits[..., 1:num_old]], axis=-1)


def local_pod_embedding(x: jax.Array, scales: Sequence[int]) -> jax.Array:
  """The Local POD embedding of a (B, h, w, C) map, squared first.

  Args:
    x: (B, h, w, C) features.
    scales: the pooling scales s; regions have side w // s (see module doc).

  Returns:
    (B, D): per region (scales in order, regions row-major), the width means
    (rows x C) then the height means (columns x C), flattened.

  Raises:
    ValueError: a scale with an empty region (w < s, or a map too short for
      the width-derived region side).
  """
  x = jnp.square(x.astype(jnp.float32))
  b, h, w, _ = x.shape
  parts = []
  for s in scales:
    k = w // s
    if k == 0 or (s - 1) * k >= h:
      raise ValueError(f"local POD: scale {s} leaves empty regions on a {h}x{w} map (side {k} from the width)")
    for i in range(s):
      for j in range(s):
        region = x[:, i * k:(i + 1) * k, j * k:(j + 1) * k, :]
        parts.append(region.mean(axis=2).reshape(b, -1))  # width pooling: one vector per row
        parts.append(region.mean(axis=1).reshape(b, -1))  # height pooling: one per column
  return jnp.concatenate(parts, axis=1)


def _per_image_norm(d: jax.Array, squared: bool) -> jax.Array:
  """Row L2 norm (or its square) with a zero gradient at d == 0.

  The plain sqrt has an infinite derivative at 0 (student == teacher, e.g.
  the first iteration of a step when the student starts from the teacher),
  which would turn the whole gradient into NaN.
  """
  sq = jnp.square(d).sum(axis=1)
  if squared:
    return sq
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def layer_maps(inputs: losses.LossInputs, layer: str, term: str = "pod",
               stages: str = "stages_pre") -> tuple[jax.Array, jax.Array]:
  """(student, teacher) (B, h, w, C) maps of one named layer (see LAYERS), logits folded to the teacher's channels.

  Args:
    inputs: the step's LossInputs.
    layer: one of LAYERS.
    term: the loss term asking (for messages).
    stages: which stage outputs: "stages_pre" (before the block's last
      activation, PLOP's POD) or "stages" (after it, RCIL's, whose code
      activates in place).
  """
  student, teacher = inputs.student, inputs.teacher
  if layer.startswith("stage") and layer[len("stage"):].isdigit():
    index = int(layer[len("stage"):]) - 1
    if not 0 <= index < len(student[stages]):
      raise ValueError(f"{term}: layer {layer!r}: the model has {len(student[stages])} stages")
    return student[stages][index], teacher[stages][index]
  if layer == "aspp":
    return student["pre_logits"], teacher["pre_logits"]
  if layer == "logits":
    return fold_extra_logits(student["logits_os"], inputs.task.num_old_channels), teacher["logits_os"]
  raise ValueError(f"{term}: unknown layer {layer!r}; expected some of {LAYERS}")


@losses.register("pod", needs_teacher=True)
def local_pod(inputs: losses.LossInputs, scales: Sequence[int] = (1, 2, 4), logits_weight: float = 0.05,
              layers: Sequence[str] = LAYERS, class_schedule: bool = True, squared: bool = False,
              logits_weight_on_last: bool = False) -> jax.Array:
  """Local POD between the previous and the current model (see module doc).

  Args:
    inputs: the step's LossInputs (teacher required).
    scales: local pooling scales.
    logits_weight: weight of the `logits` layer relative to the feature
      layers (weight 1); 0.05 x lambda_pod 0.01 = the code's 0.0005.
    layers: the distilled maps, a subset of LAYERS; the sum is divided by
      their number.
    class_schedule: multiply by sqrt(n_seen / n_new) (the code's default).
    squared: squared L2 distance per image (the papers' printed equation)
      instead of the code's L2 norm.
    logits_weight_on_last: `logits_weight` goes to the last entry of
      `layers`, whatever it is, and weight 1 to the others (the code's
      last-map factor, see the module doc); off: to the `logits` layer.

  Returns:
    A scalar, to be multiplied by lambda_pod (the term's config weight).
  """
  layers = tuple(layers)
  if not layers:
    raise ValueError("pod: `layers` is empty")
  total = 0.0
  for i, layer in enumerate(layers):
    student, teacher = layer_maps(inputs, layer)
    diff = local_pod_embedding(student, scales) - local_pod_embedding(teacher, scales)
    small = i == len(layers) - 1 if logits_weight_on_last else layer == "logits"
    weight = logits_weight if small else 1.0
    total = total + weight * _per_image_norm(diff, squared).mean()
  task = inputs.task
  schedule = (task.num_channels / len(task.new_channels))**0.5 if class_schedule else 1.0
  return schedule * total / len(layers)
