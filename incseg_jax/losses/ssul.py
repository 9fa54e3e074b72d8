"""SSUL's classification term (Cha et al., NeurIPS 2021; public code clovaai/SSUL).

`ssul_bce` trains SSUL's sigmoid heads (`models.classifier.SSULClassifier`)
on targets built in three steps, as the code's `main.py` and `datasets/voc.py`
build them:

1. **Unknown carving.** A background pixel that the image's saliency map
   marks salient becomes the unknown class: an object of a class not learned
   yet (or never labelled), which SSUL keeps apart from background so a
   later step can take it over. Images without a saliency map (saliency 0:
   the exemplar memory's) keep their background.
2. **Pseudo-labels** (steps > 0). Where the target is background or unknown
   and the previous model's highest sigmoid over [unknown, background, old
   classes] is an old class with a score of at least `threshold` (the code's
   `--pseudo_thresh`, 0.7), the target becomes that class.
3. **Loss.** Per pixel, the binary cross-entropy of every channel's sigmoid
   against the one-hot target, summed over the N + 1 channels (unknown
   included); the mean over the pixels whose target is not void (the code's
   `BCEWithLogitsLossWithIgnoreIndex`, reduction "mean").

Target layout inside this module: channel 0 unknown, channel c + 1 the
model's channel c (the code's order: unknown, background, classes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from incseg_jax import losses
from incseg_jax.losses import ce

UNKNOWN = 0  # the unknown class in the extended target layout; model channel c is c + 1


def extended_logits(outputs) -> jax.Array:
  """(B, H, W, N + 1) logits [unknown, background, classes] of an SSUL model's outputs."""
  if "unknown_logits" not in outputs:
    raise ValueError("ssul_bce needs a model with SSUL's heads (model.head='ssul'): its outputs have no "
                     "unknown_logits")
  return jnp.concatenate([outputs["unknown_logits"], outputs["logits"]], axis=-1).astype(jnp.float32)


def ssul_targets(labels: jax.Array, saliency: jax.Array | None, teacher_logits: jax.Array | None, *,
                 ignore_label: int, threshold: float) -> jax.Array:
  """SSUL's targets in the extended layout (see the module docstring).

  Args:
    labels: (B, H, W) int channel ids, `ignore_label` on void.
    saliency: (B, H, W) saliency (nonzero: salient), or None (no carving).
    teacher_logits: (B, H, W, N_old + 1) the previous model's extended
      logits, or None (step 0: no pseudo-labels).
    ignore_label: the void label.
    threshold: the lowest sigmoid score an old class needs to become a
      pseudo-label.

  Returns:
    (B, H, W) int32: 0 unknown, c + 1 for channel c, `ignore_label` on void.
  """
  labels = labels.astype(jnp.int32)
  void = labels == ignore_label
  targets = jnp.where(void, ignore_label, labels + 1)
  if saliency is not None:
    targets = jnp.where((labels == 0) & (saliency > 0), UNKNOWN, targets)
  if teacher_logits is not None:
    probs = jax.nn.sigmoid(teacher_logits.astype(jnp.float32))
    score, best = probs.max(axis=-1), jnp.argmax(probs, axis=-1).astype(jnp.int32)
    # Background (1) or unknown (0) pixels the old model confidently calls an old class (index > 1).
    take = (~void) & (targets <= 1) & (best > 1) & (score >= threshold)
    targets = jnp.where(take, best, targets)
  return targets


@losses.register("ssul_bce")
def ssul_bce(inputs: losses.LossInputs, threshold: float = 0.7, carve_unknown: bool = True) -> jax.Array:
  """SSUL's sigmoid BCE on carved and pseudo-labelled targets (module docstring).

  Active from step 0 (no pseudo-labels there: no previous model).

  Args:
    inputs: the step's LossInputs; reads `student["unknown_logits"]`,
      `student["logits"]`, `labels`, `saliency` and, after step 0, the
      teacher's unknown and class logits.
    threshold: the pseudo-label score threshold (the code's 0.7).
    carve_unknown: carve the unknown class with the saliency maps (the
      code's `--unknown`); False trains the unknown channel as never present.

  Returns:
    A scalar loss.
  """
  logits = extended_logits(inputs.student)
  saliency = inputs.saliency if carve_unknown else None
  if carve_unknown and saliency is None:
    raise ValueError("ssul_bce: no saliency maps in the batch (the method must set needs_saliency)")
  teacher = extended_logits(inputs.teacher) if inputs.teacher is not None else None
  targets = ssul_targets(inputs.labels, saliency, teacher, ignore_label=inputs.task.ignore_label,
                         threshold=threshold)
  valid = targets != inputs.task.ignore_label
  onehot = jax.nn.one_hot(jnp.where(valid, targets, 0), logits.shape[-1], dtype=jnp.float32)
  # softplus(x) - x y is -[y log s(x) + (1 - y) log(1 - s(x))], without overflow.
  per_pixel = (jax.nn.softplus(logits) - logits * onehot).sum(-1)
  return ce.masked_mean(jnp.where(valid, per_pixel, 0.0), valid, "valid")
