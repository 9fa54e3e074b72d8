"""Uncertainty-aware contrastive distillation of UCD (Yang et al., Eqs. 2-11).

This module owns the `ucd` loss term (`ucd_loss`, blockwise, what the methods
use), its dense reference `ucd_dense_loss` (materialises the full anchors x
contrast matrix; for tests and the memory benchmark) and the two helpers they
share: `feature_labels` (labels brought to feature resolution) and
`extended_map` (Eqs. 2 and 9).

The loss, as computed here:
  * Features: the decoder output at output stride (`pre_logits`, the ASPP
    output), L2-normalised per pixel, new model (`f^k`) and old (`f^{k-1}`).
  * Extended semantic map (Eq. 2): labels at feature resolution; where the
    label is background (0) the old model's argmax replaces it, so old classes
    get pseudo-labels. Extended probabilities (Eq. 9): the old model's softmax
    padded with zeros for the new channels at background pixels, the one-hot
    label elsewhere. Pixels labelled `ignore_label` take no part.
  * Anchors R (Eq. 3): new-model features at the pixels whose extended label
    is not background. Contrast set: the anchors (stop-gradient) plus the
    old-model features at old-class pixels, extended label in [1, N_old)
    (Eq. 4). Positives of an anchor a: contrast entries with its class, except
    its own new-model copy (Eq. 5; its own old-model feature does count);
    negatives: entries of another class (Eq. 6).
  * Log-contrast (Eq. 8), cosine similarities s over the temperature tau. Our
    choice, `denominator="positive_and_negatives"` (default): the form of the
    public code and of supervised contrastive learning,
        l(a, g) = log( e^{s_ag} / (e^{s_ag} + sum_{n in H(a)} e^{s_an}) ),
    which is <= 0, bounded, and 0 for an anchor without negatives.
    `denominator="negatives"` is Eq. 8 as printed (negatives only in the
    denominator; it can be positive); a pair whose anchor has no negatives
    contributes 0 there (the printed ratio is undefined). Both are computed in
    log-sum-exp form (numerically stable for any tau and any features).
  * Uncertainty (Eqs. 10-11, `uncertainty=True`): each positive pair is
    weighted by sigma_ag = P_a . P_g of the extended probabilities. Hence:
    ground truth - ground truth pairs (same class, one-hot . one-hot) weigh 1;
    pseudo - pseudo pairs weigh the dot product of the two old-model softmaxes
    (an anchor against its own old-model feature: |P_a|^2); a ground-truth
    pixel carrying an old class c against a pseudo-labelled one weighs the
    latter's probability of c. Negatives are not weighted (Eq. 11). With
    `uncertainty=False` every weight is 1 (CD, Eq. 7).
  * Reduction (Eq. 11): an anchor's weighted sum over positives divided by its
    number of positives; the mean over the anchors that have at least one
    positive (1/|G(a)| is undefined otherwise; the public code drops them
    too); 0 when there is none.

Options for the Table 7 ablations: `background_in_contrast` (pixels whose
extended label is background become anchors and, with `old_features`, old
contrast entries too), `old_features` (whether any old-model feature enters the
contrast set), `old_features_at_new` (old-model features also at new-class
pixels: the rows of Table 7 with old-model "new" ticked; the public code's
unused `v1` branch).

Reference-code switches (options of the term, off by default;
docs/reference_code.md, "Reference bugs"; each reproduces the public code's
computation):
  * `bilinear_labels`: labels resized bilinearly, truncated and wrapped
    like a cast to int8, then values < 0 or > 20 set to 0. Boundaries between
    two classes get a third class id (e.g. 3|15 -> 9), void (255) wraps to -1
    and becomes background (so it is pseudo-labelled), and every class id > 20
    becomes background (breaks ADE20K / Cityscapes-19 ids).
  * `unshifted_negatives`: the negatives' sum of exponentials is taken
    before the max-shift and the positive after it,
        l = (s_ag - m_a) - log(e^{s_ag - m_a} + sum_n e^{s_an}),
    with m_a the (stop-gradient) row maximum over the contrast set (1/tau: the
    anchor meets its own copy), so negatives weigh e^{m_a} times more and the
    loss is larger than the equation's.
  * `pseudo_labels`: the labels the term starts from are PLOP's
    pseudo-labelled targets (`losses.plop.pseudo_labels`, the thresholds read
    from `inputs.extras`, as `plop_ce` reads them; methods with PLOP's prepare
    hook only): background pixels the old model labels confidently carry its
    argmax, the others the ignore label. The first version of the UCD code
    (`ygjwd12345/UCD` commit 51b783a, built on PLOP's code) pseudo-labels
    `labels` in place before handing them to the contrastive term.
  * `old_features_at="background_label"`: old-model features enter the
    contrast set where the label at feature resolution is background (0) and
    the extended label is not, instead of where the extended label is an old
    class (`"old_class"`, ours). They differ where a pixel's (resized) label
    is itself an old class id: old classes kept in the ground truth, PLOP's
    pseudo-labels (`pseudo_labels`), ids mixed at boundaries by
    `bilinear_labels`. `background_in_contrast` and `old_features_at_new`
    add their pixels on top, as with `"old_class"`.
  * `min_label_weights` (with `uncertainty`): a positive pair of extended
    class c weighs 1 when c >= m, m the smallest positive label at feature
    resolution in the batch (the code's `min_new_classes`: the first new
    class when old classes are background in the labels, an old class once
    they are pseudo-labelled), and P^old_a . P^old_g (the old model's
    softmaxes) otherwise. The code forces 1 for pairs whose two labels are
    >= m and uses the old softmaxes everywhere else; a positive pair's two
    pixels share their class, and a pixel whose class is below m has label
    0 (every positive label is >= m), where the extended probabilities are
    the old softmax, so this is the code's weight. Ours (off) weighs
    pseudo-labelled pixels by the old model whatever their class. A batch
    without a positive label has no forced pair (the code fails there: the
    minimum of an empty set).
  Together, `bilinear_labels`, `old_features_at="background_label"`,
  `min_label_weights` and `unshifted_negatives` compute the public code's
  `pre_contractive_pixel` (version 'v2') + `PixelConLossV2`; add
  `pseudo_labels` for its PLOP-based version (docs/reference_code.md §14).

Memory: the dense form holds several (P x 2P) matrices for P pixels. The
blockwise form maps over anchor blocks of `block_size` rows against the whole
contrast set (each row's log-sum-exp over its negatives is complete inside its
block), under `jax.checkpoint` so that the backward pass recomputes a block's
matrix instead of storing every block's: memory O(block_size * P) in both
passes (about six float32 block_size x |contrast| matrices live at once: 1.6
GiB planned at 32k pixels with block_size 1024, 0.6 GiB with 256; the dense
form plans 52 GiB; `python -m incseg_jax.benchmarks.ucd_memory`). Shapes are
static throughout (masks, never boolean indexing), so both forms are
jit-compatible.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from incseg_jax import losses
from incseg_jax.losses import plop

_DENOMINATORS = ("positive_and_negatives", "negatives")
_OLD_FEATURES_AT = ("old_class", "background_label")
# The public code's label cleanup after its int8 cast (VOC's largest class id).
_QUIRK_MAX_LABEL = 20


class PixelSet(NamedTuple):
  """Flattened pixels on one side of the similarity matrix.

  Attributes:
    features: (M, D) L2-normalised features.
    valid: (M,) bool, whether the pixel takes part.
    labels: (M,) int32 extended-map class (-1 where not valid).
    probs: (M, N) extended probabilities (Eq. 9).
  """
  features: jax.Array
  valid: jax.Array
  labels: jax.Array
  probs: jax.Array


def feature_labels(labels: jax.Array, size: tuple[int, int], bilinear: bool = False) -> jax.Array:
  """Brings (B, H, W) labels to feature resolution (h, w).

  Args:
    labels: (B, H, W) int labels.
    size: (h, w).
    bilinear: False: nearest neighbour, sampling each output cell's centre
      (any class count, the ignore label kept). True: the `bilinear_labels`
      reference-code switch (see the module docstring).

  Returns:
    (B, h, w) int32 labels.
  """
  b, hh, ww = labels.shape
  h, w = size
  if not bilinear:
    rows = np.minimum(np.floor((np.arange(h) + 0.5) * hh / h).astype(np.int32), hh - 1)
    cols = np.minimum(np.floor((np.arange(w) + 0.5) * ww / w).astype(np.int32), ww - 1)
    return labels[:, rows][:, :, cols].astype(jnp.int32)
  # PyTorch's F.interpolate(bilinear, align_corners=False) samples two
  # neighbours without antialiasing when it downsamples.
  x = jax.image.resize(labels.astype(jnp.float32), (b, h, w), "bilinear", antialias=False)
  v = jnp.trunc(x).astype(jnp.int32)
  v = (v + 128) % 256 - 128  # `.type(torch.int8)` wraps 128..255 to -128..-1.
  return jnp.where((v < 0) | (v > _QUIRK_MAX_LABEL), 0, v)


def extended_map(labels_os: jax.Array, teacher_logits_os: jax.Array, num_channels: int,
                 ignore_label: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Extended semantic map (Eq. 2) and extended probabilities (Eq. 9).

  Args:
    labels_os: (B, h, w) int labels at feature resolution.
    teacher_logits_os: (B, h, w, N_old) old-model logits at feature resolution.
    num_channels: N, the current model's channel count.
    ignore_label: pixels with this label are not valid.

  Returns:
    (labels (B, h, w) int32, -1 where not valid; probabilities (B, h, w, N),
    0 where not valid; valid (B, h, w) bool).
  """
  logits = teacher_logits_os.astype(jnp.float32)
  n_old = logits.shape[-1]
  valid = labels_os != ignore_label
  pseudo = valid & (labels_os == 0)
  ext = jnp.where(pseudo, jnp.argmax(logits, axis=-1).astype(jnp.int32), labels_os.astype(jnp.int32))
  ext = jnp.where(valid, ext, -1)
  old = jnp.pad(jax.nn.softmax(logits, axis=-1), [(0, 0)] * 3 + [(0, num_channels - n_old)])
  one_hot = jax.nn.one_hot(jnp.where(valid, labels_os, 0), num_channels, dtype=jnp.float32)
  probs = jnp.where(pseudo[..., None], old, one_hot) * valid[..., None]
  return ext, probs, valid


def _normalise(x: jax.Array) -> jax.Array:
  """Per-row L2 normalisation, exact for any scale; a zero row stays zero.

  Dividing by the row's largest magnitude first keeps the sum of squares
  from overflowing or underflowing; normalisation is scale invariant, so that
  divisor needs no gradient. A zero row gets a finite (identity) gradient.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
  nonzero = scale > 0
  x = x / jnp.where(nonzero, scale, 1.0)
  return x * jax.lax.rsqrt(jnp.where(nonzero, jnp.sum(x * x, axis=-1, keepdims=True), 1.0))


def training_labels(inputs: losses.LossInputs, pseudo_labels: bool = False) -> jax.Array:
  """The (B, H, W) labels the term starts from: `inputs.labels`, or PLOP's pseudo-labelled targets.

  Args:
    inputs: the step's LossInputs; with `pseudo_labels`, `teacher["logits"]`
      and `extras[plop.THRESHOLDS_KEY]` too.
    pseudo_labels: the `pseudo_labels` option (module docstring).

  Raises:
    ValueError: `pseudo_labels` without PLOP's thresholds in `inputs.extras`.
  """
  if not pseudo_labels:
    return inputs.labels
  if plop.THRESHOLDS_KEY not in inputs.extras:
    raise ValueError(f"ucd: pseudo_labels=True needs inputs.extras[{plop.THRESHOLDS_KEY!r}]: use a method with "
                     "PLOP's prepare hook (method=plop_ucd)")
  targets, _ = plop.pseudo_labels(inputs.labels, inputs.teacher["logits"],
                                  jnp.asarray(inputs.extras[plop.THRESHOLDS_KEY]), inputs.task)
  return targets


def pixel_sets(inputs: losses.LossInputs, background_in_contrast: bool = False, old_features: bool = True,
               old_features_at_new: bool = False, bilinear_labels: bool = False, pseudo_labels: bool = False,
               old_features_at: str = "old_class") -> tuple[PixelSet, PixelSet, jax.Array]:
  """Anchors (Eq. 3) and contrast set (anchors + Eq. 4), flattened over the batch.

  The contrast set's first P rows are the anchors' own features
  (stop-gradient) with the anchors' validity, in the same order, so anchor i
  meets itself in column i; the old-model rows follow when `old_features`.

  Args:
    inputs: the step's LossInputs (`pre_logits`, `logits_os`, `labels`;
      `logits` and `extras` with `pseudo_labels`).
    background_in_contrast: see the module docstring.
    old_features: see the module docstring.
    old_features_at_new: see the module docstring.
    bilinear_labels: see the module docstring.
    pseudo_labels: see the module docstring.
    old_features_at: "old_class" or "background_label", see the module
      docstring.

  Returns:
    (anchors with P rows, contrast set with P or 2P rows, the smallest
    positive label at feature resolution, int32 scalar, the largest int32
    when there is none: `min_label_weights`).
  """
  new = inputs.student["pre_logits"]
  b, h, w, d = new.shape
  labels_os = feature_labels(training_labels(inputs, pseudo_labels), (h, w), bool(bilinear_labels))
  ext, probs, valid = extended_map(labels_os, inputs.teacher["logits_os"], inputs.task.num_channels,
                                   inputs.task.ignore_label)
  n_old = inputs.teacher["logits_os"].shape[-1]
  positive_label = valid & (labels_os > 0)
  min_label = jnp.min(jnp.where(positive_label, labels_os, jnp.iinfo(jnp.int32).max))
  label_background = (valid & (labels_os == 0)).reshape(-1)
  ext, probs, valid = ext.reshape(-1), probs.reshape(b * h * w, -1), valid.reshape(-1)
  background = ext == 0
  anchor_valid = valid & (~background | background_in_contrast)
  q = _normalise(new.reshape(b * h * w, d))
  anchors = PixelSet(q, anchor_valid, ext, probs)
  contrast = PixelSet(jax.lax.stop_gradient(q), anchor_valid, ext, probs)
  if not old_features:
    return anchors, contrast, min_label
  if old_features_at == "old_class":
    old_base = (ext >= 1) & (ext < n_old)
  else:
    old_base = label_background & ~background
  old_valid = valid & (old_base | (background & background_in_contrast) | ((ext >= n_old) & old_features_at_new))
  k_old = _normalise(jax.lax.stop_gradient(inputs.teacher["pre_logits"]).reshape(b * h * w, d))
  contrast = PixelSet(*(jnp.concatenate([x, y]) for x, y in zip(contrast, PixelSet(k_old, old_valid, ext, probs))))
  return anchors, contrast, min_label


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Row-wise log-sum-exp over `mask`; (lse, any) with lse = 0 where no entry.

  Shifted by the row's masked maximum, and masked before the exponential, so
  values and gradients stay finite for any input (also rows with no entry).
  """
  has = mask.any(axis=-1)
  top = jax.lax.stop_gradient(jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1))
  top = jnp.where(has, top, 0.0)
  total = jnp.exp(jnp.where(mask, x - top[:, None], -jnp.inf)).sum(axis=-1)
  return jnp.where(has, top + jnp.log(jnp.where(has, total, 1.0)), 0.0), has


def _rows(anchors: PixelSet, row_ids: jax.Array, contrast: PixelSet, temperature: float, uncertainty: bool,
          denominator: str, unshifted: bool, force_from: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Loss of a set of anchor rows against the whole contrast set.

  Args:
    anchors: R anchor rows.
    row_ids: (R,) the rows' indices among all anchors (their own column in
      the contrast set, excluded from their positives).
    contrast: the contrast set.
    temperature: tau.
    uncertainty: weight positive pairs by sigma (Eq. 10).
    denominator: see the module docstring.
    unshifted: the `unshifted_negatives` reference-code switch.
    force_from: with uncertainty, pairs whose two labels are >= this weigh 1
      (the `min_label_weights` switch); None: no pair is forced.

  Returns:
    (sum over the rows with positives of their loss, number of such rows).
  """
  # Full float32 products: a TF32 / bf16 matmul on an accelerator would move
  # s by ~1e-3 / tau.
  s = jnp.matmul(anchors.features, contrast.features.T, precision=jax.lax.Precision.HIGHEST) / temperature
  pair = anchors.valid[:, None] & contrast.valid[None, :]
  same = anchors.labels[:, None] == contrast.labels[None, :]
  positive = pair & same & (row_ids[:, None] != jnp.arange(contrast.valid.shape[0])[None, :])
  lse_neg, has_neg = _masked_logsumexp(s, pair & ~same)
  if unshifted:
    # The public code's max-shift: over the anchor's whole row, not subtracted
    # from the negatives' sum.
    top = jax.lax.stop_gradient(jnp.max(jnp.where(pair, s, -jnp.inf), axis=-1))
    s = s - jnp.where(pair.any(axis=-1), top, 0.0)[:, None]
  if denominator == "positive_and_negatives":
    log_ratio = s - jnp.where(has_neg[:, None], jnp.logaddexp(s, lse_neg[:, None]), s)
  else:
    log_ratio = jnp.where(has_neg[:, None], s - lse_neg[:, None], 0.0)
  if uncertainty:
    sigma = jnp.matmul(anchors.probs, contrast.probs.T, precision=jax.lax.Precision.HIGHEST)
    if force_from is not None:
      sigma = jnp.where((anchors.labels[:, None] >= force_from) & (contrast.labels[None, :] >= force_from), 1.0, sigma)
    log_ratio = sigma * log_ratio
  n_pos = positive.sum(axis=-1)
  per_row = -jnp.where(positive, log_ratio, 0.0).sum(axis=-1) / jnp.maximum(n_pos, 1)
  counted = n_pos > 0
  return jnp.where(counted, per_row, 0.0).sum(), counted.sum()


def _check(temperature, denominator, block_size=1, old_features_at="old_class"):
  if not temperature > 0:
    raise ValueError(f"ucd: temperature={temperature!r} must be > 0")
  if denominator not in _DENOMINATORS:
    raise ValueError(f"ucd: denominator={denominator!r}: expected one of {_DENOMINATORS}")
  if old_features_at not in _OLD_FEATURES_AT:
    raise ValueError(f"ucd: old_features_at={old_features_at!r}: expected one of {_OLD_FEATURES_AT}")
  if int(block_size) < 1:
    raise ValueError(f"ucd: block_size={block_size!r} must be >= 1")


def ucd_dense_loss(inputs: losses.LossInputs, temperature: float = 0.07, uncertainty: bool = True,
                   background_in_contrast: bool = False, old_features: bool = True,
                   old_features_at_new: bool = False, denominator: str = "positive_and_negatives",
                   bilinear_labels: bool = False, unshifted_negatives: bool = False, pseudo_labels: bool = False,
                   old_features_at: str = "old_class", min_label_weights: bool = False) -> jax.Array:
  """Eq. 11 (Eq. 7 without uncertainty) with the full (P x |contrast|) matrix.

  The reference for `ucd_loss`: same options (see the module docstring),
  memory quadratic in the number of pixels.

  Returns:
    A scalar loss.
  """
  _check(temperature, denominator, old_features_at=old_features_at)
  anchors, contrast, min_label = pixel_sets(inputs, background_in_contrast, old_features, old_features_at_new,
                                            bilinear_labels, bool(pseudo_labels), old_features_at)
  total, count = _rows(anchors, jnp.arange(anchors.valid.shape[0]), contrast, temperature, uncertainty, denominator,
                       bool(unshifted_negatives), min_label if min_label_weights else None)
  return total / jnp.maximum(count, 1)


@losses.register("ucd", needs_teacher=True)
def ucd_loss(inputs: losses.LossInputs, temperature: float = 0.07, uncertainty: bool = True,
             background_in_contrast: bool = False, old_features: bool = True, old_features_at_new: bool = False,
             denominator: str = "positive_and_negatives", block_size: int = 1024, bilinear_labels: bool = False,
             unshifted_negatives: bool = False, pseudo_labels: bool = False, old_features_at: str = "old_class",
             min_label_weights: bool = False) -> jax.Array:
  """UCD's contrastive distillation (Eq. 11; CD, Eq. 7, with uncertainty=False), blockwise.

  Equal to `ucd_dense_loss` in value and gradient; memory linear in the
  number of pixels (see the module docstring).

  Args:
    inputs: the step's LossInputs; reads `pre_logits` and `logits_os` of
      student and teacher, `labels` and `task` (with `pseudo_labels`, also the
      teacher's `logits` and `extras`).
    temperature: tau of Eq. 8 (the paper's 0.07).
    uncertainty: weight positive pairs by sigma (UCD) or by 1 (CD).
    background_in_contrast: background pixels become anchors / contrast.
    old_features: old-model features enter the contrast set.
    old_features_at_new: old-model features also at new-class pixels.
    denominator: "positive_and_negatives" (default) or "negatives" (Eq. 8 as
      printed).
    block_size: anchor rows per block.
    bilinear_labels: reproduce the public code's bilinear label resizing (a
      reference bug, see the module docstring).
    unshifted_negatives: reproduce the public code's max-shift of the
      positive only (a reference bug, see the module docstring).
    pseudo_labels: start from PLOP's pseudo-labelled targets, as the
      PLOP-based UCD code (a reference quirk, see the module docstring).
    old_features_at: "old_class" (ours) or "background_label" (the code's
      old-feature pixels, see the module docstring).
    min_label_weights: the code's pair weight 1 from the smallest positive
      label on (see the module docstring).

  Returns:
    A scalar loss.
  """
  _check(temperature, denominator, block_size, old_features_at)
  anchors, contrast, min_label = pixel_sets(inputs, background_in_contrast, old_features, old_features_at_new,
                                            bilinear_labels, bool(pseudo_labels), old_features_at)
  force_from = min_label if min_label_weights else None
  p = anchors.valid.shape[0]
  rows = min(int(block_size), p)
  n_blocks = -(-p // rows)
  pad = n_blocks * rows - p

  def blocks(x):
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))  # padded rows are not valid
    return x.reshape((n_blocks, rows) + x.shape[1:])

  unshifted = bool(unshifted_negatives)

  @jax.checkpoint
  def block(args):
    block_anchors, row_ids = args
    return _rows(block_anchors, row_ids, contrast, temperature, uncertainty, denominator, unshifted, force_from)

  totals, counts = jax.lax.map(block, (PixelSet(*map(blocks, anchors)), blocks(jnp.arange(p))))
  return totals.sum() / jnp.maximum(counts.sum(), 1)
