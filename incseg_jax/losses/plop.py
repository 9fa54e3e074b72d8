"""PLOP's classification term: cross-entropy on entropy-filtered pseudo-labels.

This module owns the `plop_ce` term (UCD paper Eq. 19; PLOP, Douillard et al.,
CVPR 2021) and the pieces the `plop` method's threshold hook shares with it
(`normalized_entropy`, `background_mask`, `THRESHOLDS_KEY`); `pseudo_labels`
is also what the `ucd` term's `pseudo_labels` option trains on (the
PLOP-based UCD code, `incseg_jax/losses/contrastive.py`).

At steps > 0 (docs/reference_code.md §12-13, the public code's conventions):
  * The previous model's softmax p over its N_old channels at input
    resolution gives, per pixel, the argmax class and the normalised entropy

      u = -(1/N_old) sum_c p_c log p_c / ln(N_old) / ln(n_seen),

    with n_seen = `task.num_channels` (background included). The code takes a
    *mean* over classes and divides by ln(N_old) and again by ln(n_seen), so
    u <= 1 / (N_old ln n_seen), not 1. Only the floor of the thresholds and
    the reference's histogram (`histogram_median` option) see this scale:
    a median threshold is invariant to it.
  * Background pixels (label < N_old; training labels map old classes to 0)
    with u < tau[argmax] (per-class thresholds from the method's `prepare`
    hook, `inputs.extras[THRESHOLDS_KEY]`) take the old argmax as label
    (background included); the other background pixels become ignore (255).
    New-class labels are kept; void stays ignored (PLOP keeps 255).
  * The per-pixel CE of each image is multiplied by
    nu = (accepted background pixels) / (background pixels) of that image
    (Eq. 19's nu, the code's `classif_adaptive_factor`), then averaged over
    all B*H*W pixels (reference_code.md §1, `reduction`). The code divides 0 by
    0 for an image without background pixels (NaN); we use nu = 1 there, as
    nothing of that image was pseudo-labelled.
At step 0 (no teacher) the term is plain CE, so the `plop` preset lists
`plop_ce` alone at every step: it is registered with needs_teacher=False.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from incseg_jax import losses
from incseg_jax.losses import ce

# `inputs.extras` key of the (N_old,) per-class entropy thresholds.
THRESHOLDS_KEY = "plop_thresholds"


def normalized_entropy(logits: jax.Array, num_seen: int) -> jax.Array:
  """PLOP's per-pixel entropy of softmax(logits), normalised as the code does.

  Args:
    logits: (..., C) the previous model's logits.
    num_seen: classes seen so far, background included (n_seen).

  Returns:
    (...): -mean_c p_c log p_c / ln C / ln n_seen, float32.
  """
  c = logits.shape[-1]
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  # xlogy: exact 0 log 0 = 0 (the code adds 1e-8 inside the log instead).
  mean_plogp = jax.scipy.special.xlogy(p, p).mean(axis=-1)
  return -mean_plogp / math.log(c) / math.log(num_seen)


def background_mask(labels, num_old: int, ignore_label: int):
  """Pixels the old model may relabel: label background or old (< N_old), not ignore.

  Works on NumPy and JAX arrays alike (the hook runs outside jit).
  """
  return (labels < num_old) & (labels != ignore_label)


def pseudo_labels(labels: jax.Array, teacher_logits: jax.Array, thresholds: jax.Array, task: losses.TaskInfo,
                  min_nu: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """PLOP's pseudo-labelled targets and per-image nu.

  Args:
    labels: (B, H, W) training labels in channel ids.
    teacher_logits: (B, H, W, N_old) the previous model's logits.
    thresholds: (N_old,) entropy threshold per old argmax class.
    task: the step's TaskInfo.
    min_nu: lower bound on nu (the code's `classif_adaptive_min_factor`, 0).

  Returns:
    (targets (B, H, W) int32, nu (B,) float32).
  """
  n_old = task.num_old_channels
  if thresholds.shape != (n_old,):
    raise ValueError(f"plop_ce: thresholds of shape {thresholds.shape}, expected ({n_old},)")
  argmax = jnp.argmax(teacher_logits, axis=-1).astype(jnp.int32)
  confident = normalized_entropy(teacher_logits, task.num_channels) < thresholds[argmax]
  background = background_mask(labels, n_old, task.ignore_label)
  accepted = background & confident
  targets = jnp.where(accepted, argmax, jnp.where(background, task.ignore_label, labels))
  n_background = background.sum(axis=(1, 2))
  nu = jnp.where(n_background > 0, accepted.sum(axis=(1, 2)) / jnp.maximum(n_background, 1), 1.0)
  return targets.astype(jnp.int32), jnp.maximum(nu, min_nu).astype(jnp.float32)


@losses.register("plop_ce")
def plop_ce(inputs: losses.LossInputs, reduction: str = "all_pixels", min_nu: float = 0.0,
            threshold_floor: float = 0.001, nb_bins: int = 100, histogram_median: bool = False,
            median_background_only: bool = False) -> jax.Array:
  """Eq. 19: nu-scaled CE on pseudo-labels (steps > 0); plain CE at step 0.

  Args:
    inputs: the step's LossInputs; at steps > 0 `inputs.extras` must hold
      THRESHOLDS_KEY (the `plop` method's prepare hook).
    reduction: see `ce.masked_mean` (code: "all_pixels").
    min_nu: lower bound on nu.
    threshold_floor: read by the prepare hook (thresholds are at least this,
      the code's 0.001); unused here.
    nb_bins: read by the prepare hook with `histogram_median` (the code's 100
      bins); unused here.
    histogram_median: read by the prepare hook: thresholds from the public
      code's histogram median, bug included (a reference bug, see
      `incseg_jax/methods/plop.py`); unused here.
    median_background_only: read by the prepare hook: the medians count only
      the pixels labelled 0, as the public code's pre-pass, instead of every
      pixel this term relabels (label < N_old; they differ where training
      labels keep old-class ids, see `incseg_jax/methods/plop.py`); unused
      here.

  Returns:
    A scalar loss.
  """
  del threshold_floor, nb_bins, histogram_median, median_background_only
  if inputs.teacher is None:
    return ce.cross_entropy(inputs, reduction=reduction)
  if THRESHOLDS_KEY not in inputs.extras:
    raise ValueError(f"plop_ce needs inputs.extras[{THRESHOLDS_KEY!r}] at steps > 0: "
                     "use a method with PLOP's prepare hook (method=plop)")
  targets, nu = pseudo_labels(inputs.labels, inputs.teacher["logits"], jnp.asarray(inputs.extras[THRESHOLDS_KEY]),
                              inputs.task, min_nu)
  per_pixel, valid = ce.pixel_cross_entropy(inputs.student["logits"], targets, inputs.task.ignore_label)
  return ce.masked_mean(per_pixel * nu[:, None, None], valid, reduction)
