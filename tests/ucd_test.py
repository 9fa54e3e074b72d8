"""Tests for UCD's contrastive distillation (Yang et al., Eqs. 2-11) and its presets.

`reference_ucd` is a float64 NumPy loop written from the equations (extended
map, anchor / contrast sets, positives / negatives, log-contrast, sigma),
independently of the JAX code; the dense JAX loss is checked against it and
the blockwise loss (the registered term) against the dense one, in value and
gradient, for every option (the reference-code switches included). The invariance tests mostly use the
dense form, to share its compilations with the reference test. `np_ucd_code` transcribes the public
code itself (PLOP's pseudo-labels, `pre_contrastive_pixel` v2, `PixelConLossV2`), which the term
computes with its five reference-code switches on.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from incseg_jax import losses
from incseg_jax import methods
from incseg_jax.losses import contrastive  # registers the "ucd" term
from incseg_jax.losses import plop as plop_losses
from incseg_jax.methods import ucd as ucd_method  # registers the "ucd" and "cd" methods

IGNORE = 255
# (B, h, w, D, N_old, N); labels are given at (2h, 2w).
SHAPE = (2, 3, 4, 6, 3, 6)

# ----------------------------------------------------------------------------------------
# Inputs and float64 references
# ----------------------------------------------------------------------------------------


def make_inputs(student_f, teacher_f, teacher_logits, labels, n):
  """LossInputs for a step with channels [0, N_old) old and [N_old, n) new."""
  n_old = teacher_logits.shape[-1]
  task = losses.TaskInfo(index=1, num_channels=n, old_channels=tuple(range(1, n_old)),
                         new_channels=tuple(range(n_old, n)), ignore_label=IGNORE)
  return losses.LossInputs(
      student={"pre_logits": jnp.asarray(student_f, jnp.float32)},
      teacher={"pre_logits": jnp.asarray(teacher_f, jnp.float32),
               "logits_os": jnp.asarray(teacher_logits, jnp.float32)},
      labels=jnp.asarray(labels, jnp.int32), images=None, task=task)


def random_case(seed, shape=SHAPE, p_ignore=0.1, p_old_gt=0.0):
  """Random features, teacher logits and labels at twice the feature resolution.

  Returns:
    dict(student, teacher, logits, labels, n).
  """
  b, h, w, d, n_old, n = shape
  rng = np.random.default_rng(seed)
  u = rng.random((b, 2 * h, 2 * w))
  labels = np.where(u < 0.45, 0, rng.integers(n_old, n, u.shape))
  labels = np.where(u > 1 - p_ignore, IGNORE, labels)
  labels = np.where((u > 0.45) & (u < 0.45 + p_old_gt), rng.integers(1, n_old, u.shape), labels)
  return dict(student=rng.normal(size=(b, h, w, d)), teacher=rng.normal(size=(b, h, w, d)),
              logits=2.0 * rng.normal(size=(b, h, w, n_old)), labels=labels, n=n)


def np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def np_bilinear_int8(labels, h, w):
  """The public code's label resize: F.interpolate(bilinear, align_corners=False) -> int8, <0|>20 -> 0."""
  b, hh, ww = labels.shape

  def taps(n_out, n_in):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    return i0, np.minimum(i0 + 1, n_in - 1), src - i0

  r0, r1, fr = taps(h, hh)
  c0, c1, fc = taps(w, ww)
  x = labels.astype(np.float64)
  top = x[:, r0][:, :, c0] * (1 - fc) + x[:, r0][:, :, c1] * fc
  bottom = x[:, r1][:, :, c0] * (1 - fc) + x[:, r1][:, :, c1] * fc
  v = (top * (1 - fr[:, None]) + bottom * fr[:, None]).astype(np.int64).astype(np.int8).astype(np.int64)
  return np.where((v < 0) | (v > 20), 0, v)


def reference_ucd(student, teacher, logits, labels_os, n, tau=0.07, uncertainty=True, background_in_contrast=False,
                  old_features=True, old_features_at_new=False, denominator="positive_and_negatives",
                  unshifted=False, old_features_at="old_class", min_label_weights=False):
  """Eqs. 2-11 in float64 with Python loops over anchors and contrast entries.

  Args:
    student, teacher: (B, h, w, D) new / old features.
    logits: (B, h, w, N_old) old-model logits.
    labels_os: (B, h, w) labels already at feature resolution.
    n: current channel count.
    tau ... min_label_weights: as the loss options (`unshifted`: `unshifted_negatives`).

  Returns:
    A Python float.
  """
  d, n_old = student.shape[-1], logits.shape[-1]
  new_f = student.reshape(-1, d).astype(np.float64)
  old_f = teacher.reshape(-1, d).astype(np.float64)
  p_old = np_softmax(logits.reshape(-1, n_old).astype(np.float64))
  y = labels_os.reshape(-1)

  def unit(v):
    return v / max(np.linalg.norm(v), 1e-12)

  # Eq. 2 (extended map) and Eq. 9 (extended probabilities).
  ext, pbar = {}, {}
  for p, label in enumerate(y):
    if label == IGNORE:
      continue
    if label == 0:
      ext[p] = int(np.argmax(p_old[p]))
      pbar[p] = np.concatenate([p_old[p], np.zeros(n - n_old)])
    else:
      ext[p] = int(label)
      pbar[p] = np.eye(n)[label]
  anchors = [p for p in ext if ext[p] != 0 or background_in_contrast]  # Eq. 3

  def old_entry(p):  # Eq. 4 and the Table 7 switches.
    c = ext[p]
    if old_features_at == "old_class":
      base = 1 <= c < n_old
    else:  # the public code: resized label background, extended label not
      base = y[p] == 0 and c != 0
    return base or (c == 0 and background_in_contrast) or (c >= n_old and old_features_at_new)

  # The public code's `min_new_classes`: the smallest positive label at feature resolution.
  positive_labels = [label for label in y if label != IGNORE and label > 0]
  min_label = min(positive_labels) if positive_labels else np.inf
  olds = [p for p in ext if old_features and old_entry(p)]
  contrast = [(unit(new_f[r]), r, "new") for r in anchors] + [(unit(old_f[s]), s, "old") for s in olds]
  per_anchor = []
  for a in anchors:
    fa = unit(new_f[a])
    sims = [float(fa @ f) / tau for f, _, _ in contrast]
    positives = [(s, g) for s, (_, g, kind) in zip(sims, contrast)
                 if ext[g] == ext[a] and not (kind == "new" and g == a)]  # Eq. 5
    negatives = [s for s, (_, g, _) in zip(sims, contrast) if ext[g] != ext[a]]  # Eq. 6
    if not positives:
      continue
    shift = max(sims) if unshifted else 0.0
    neg_sum = sum(np.exp(s) for s in negatives)  # the reference bug: not shifted
    total = 0.0
    for s, g in positives:
      num = np.exp(s - shift)
      if denominator == "positive_and_negatives":
        lc = np.log(num / (num + neg_sum))
      else:
        lc = np.log(num / neg_sum) if negatives else 0.0
      sigma = float(pbar[a] @ pbar[g]) if uncertainty else 1.0  # Eq. 10
      if uncertainty and min_label_weights and ext[a] >= min_label and ext[g] >= min_label:
        sigma = 1.0
      total += sigma * lc
    per_anchor.append(-total / len(positives))  # Eq. 11
  return float(np.mean(per_anchor)) if per_anchor else 0.0


def labels_at_features(labels):
  """Nearest neighbour for a 2x reduction: the centre of each 2x2 cell is its bottom-right pixel."""
  return labels[:, 1::2, 1::2]


@functools.partial(jax.jit, static_argnames=("n", "kind", "options"))
def _value_and_grad(student, teacher, logits, labels, n, kind, options):
  fn = contrastive.ucd_dense_loss if kind == "dense" else contrastive.ucd_loss
  return jax.value_and_grad(lambda s: fn(make_inputs(s, teacher, logits, labels, n), **dict(options)))(student)


def value_and_grad(kind, case, **options):
  """Value and gradient w.r.t. the student features of the dense or blockwise loss.

  One compilation per (shapes, kind, options), shared by the tests.
  """
  arrays = [jnp.asarray(case[k], jnp.float32) for k in ("student", "teacher", "logits")]
  value, grad = _value_and_grad(*arrays, jnp.asarray(case["labels"], jnp.int32), n=case["n"], kind=kind,
                                options=tuple(sorted(options.items())))
  return float(value), np.asarray(grad)


def loss_value(case, kind="dense", **options):
  return value_and_grad(kind, case, **options)[0]


# ----------------------------------------------------------------------------------------
# The equations
# ----------------------------------------------------------------------------------------

REFERENCE_CASES = [
    {},
    {"uncertainty": False},
    {"background_in_contrast": True},
    {"old_features": False},
    {"old_features_at_new": True},
    {"background_in_contrast": True, "old_features_at_new": True, "temperature": 0.5},
    {"denominator": "negatives"},
    {"temperature": 0.01},  # stable at a small temperature
    {"unshifted_negatives": True},
    {"bilinear_labels": True},
    {"old_features_at": "background_label"},
    {"old_features_at": "background_label", "bilinear_labels": True, "old_features_at_new": True},
    {"min_label_weights": True},
    {"min_label_weights": True, "bilinear_labels": True, "background_in_contrast": True},
    {"min_label_weights": True, "uncertainty": False},
]


@pytest.mark.parametrize("options", REFERENCE_CASES)
def test_dense_matches_float64_reference(options):
  case = random_case(0, p_old_gt=0.05)
  value, _ = value_and_grad("dense", case, **options)
  h, w = case["student"].shape[1:3]
  ref_options = dict(options)
  if ref_options.pop("bilinear_labels", False):
    labels_os = np_bilinear_int8(case["labels"], h, w)
  else:
    labels_os = labels_at_features(case["labels"])
  tau = ref_options.pop("temperature", 0.07)
  unshifted = ref_options.pop("unshifted_negatives", False)
  expected = reference_ucd(case["student"], case["teacher"], case["logits"], labels_os, case["n"], tau=tau,
                           unshifted=unshifted, **ref_options)
  assert expected != 0.0
  np.testing.assert_allclose(value, expected, rtol=1e-4)


def test_hand_computed_case():
  # One image, three feature pixels (labels at the same resolution), tau = 1.
  # Pixels 0 and 1: new class 2, features e1; pixel 2: background, the old
  # model says class 1 with probability p, new and old features e2.
  # Anchor 0 (and 1): one positive (the other, s = 1), negatives: pixel 2's
  # new and old features (s = 0): -log(e / (e + 2)), sigma = 1.
  # Anchor 2: positive = its own old feature (s = 1), negatives pixels 0, 1:
  # -log(e / (e + 2)) weighted by sigma = (1 - p)^2 + p^2.
  p = 0.8
  e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  student = np.stack([e1, e1, e2])[None, None]
  teacher = np.stack([e2, e2, 3.0 * e2])[None, None]  # the norm does not matter
  logits = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, np.log(p / (1 - p))]])[None, None]
  labels = np.array([[[2, 2, 0]]])
  case = dict(student=student, teacher=teacher, logits=logits, labels=labels, n=3)
  pair = np.log(1 + 2 / np.e)
  ucd = loss_value(case, kind="blockwise", temperature=1.0)
  np.testing.assert_allclose(ucd, pair * (2 + (1 - p)**2 + p**2) / 3, rtol=1e-6)
  np.testing.assert_allclose(loss_value(case, kind="blockwise", temperature=1.0, uncertainty=False), pair, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# Blockwise == dense
# ----------------------------------------------------------------------------------------

BLOCK_CASES = [
    (7, {}),  # 24 anchor rows: 7 does not divide them
    (8, {}),  # divides
    (1, {"background_in_contrast": True, "unshifted_negatives": True}),
    (5, {"denominator": "negatives", "old_features_at_new": True, "bilinear_labels": True}),
    (1024, {"uncertainty": False}),  # one block larger than the pixel count
    (6, {"min_label_weights": True, "old_features_at": "background_label", "bilinear_labels": True}),
]


@pytest.mark.parametrize("block_size,options", BLOCK_CASES)
def test_blockwise_equals_dense(block_size, options):
  case = random_case(1)
  dense_value, dense_grad = value_and_grad("dense", case, **options)
  value, grad = value_and_grad("blockwise", case, block_size=block_size, **options)
  np.testing.assert_allclose(value, dense_value, rtol=1e-5)
  assert np.abs(dense_grad).max() > 0
  np.testing.assert_allclose(grad, dense_grad, rtol=1e-5, atol=1e-5 * np.abs(dense_grad).max())


def test_blockwise_memory_is_linear():
  # Doubling the pixels doubles the blockwise step's memory (fixed block).
  # Without jax.checkpoint the backward pass would keep every block's matrix,
  # i.e. the dense amount, which quadruples.
  def temp_bytes(b):
    case = random_case(2, shape=(b, 12, 12, 8, 3, 6))
    f = jax.jit(jax.value_and_grad(lambda s: contrastive.ucd_loss(
        make_inputs(s, case["teacher"], case["logits"], case["labels"], 6), block_size=32)))
    return f.lower(jnp.asarray(case["student"], jnp.float32)).compile().memory_analysis().temp_size_in_bytes

  ratio = temp_bytes(8) / temp_bytes(4)
  assert ratio < 2.5, ratio


# ----------------------------------------------------------------------------------------
# Invariances and numerical behaviour
# ----------------------------------------------------------------------------------------


def test_sigma_is_one_on_ground_truth_pairs():
  case = random_case(3, p_ignore=0.0)
  case["labels"] = np.where(case["labels"] == 0, 4, case["labels"])  # every pixel a new class
  ucd = loss_value(case)
  np.testing.assert_allclose(loss_value(case, uncertainty=False), ucd, rtol=1e-6)
  case["logits"] = 10.0 * case["logits"]  # a different old model changes nothing
  np.testing.assert_allclose(loss_value(case), ucd, rtol=1e-6)


def test_cd_equals_ucd_for_certain_old_model():
  case = random_case(4)
  assert abs(loss_value(case) - loss_value(case, uncertainty=False)) > 1e-3  # soft old model: they differ
  n_old = case["logits"].shape[-1]
  case["logits"] = 1e4 * np.eye(n_old)[np.argmax(case["logits"], -1)]  # softmax exactly one-hot
  np.testing.assert_allclose(loss_value(case), loss_value(case, uncertainty=False), rtol=1e-6)


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30])
def test_finite_for_extreme_features(scale):
  case = random_case(5)
  # Identical features everywhere (cosine 1 for every pair) at tau 0.07, and
  # opposite features at tau 0.005 (exp(400) would overflow unshifted).
  case["student"] = np.broadcast_to(scale * np.ones(case["student"].shape[-1]), case["student"].shape)
  case["teacher"] = case["student"]
  for options in ({}, {"unshifted_negatives": True}):
    value, grad = value_and_grad("blockwise", case, **options)
    assert np.isfinite(value) and np.isfinite(grad).all()
  case["teacher"] = -case["student"]
  value, grad = value_and_grad("blockwise", case, temperature=0.005, denominator="negatives")
  assert np.isfinite(value) and np.isfinite(grad).all()


@pytest.mark.parametrize("kind", ["dense", "blockwise"])
def test_no_anchors_gives_zero(kind):
  case = random_case(7)
  case["labels"] = np.zeros_like(case["labels"])
  case["logits"] = np.zeros_like(case["logits"])
  case["logits"][..., 0] = 5.0  # the old model predicts background everywhere
  value, grad = value_and_grad(kind, case)
  assert value == 0.0 and np.isfinite(grad).all() and not grad.any()
  case["labels"] = np.full_like(case["labels"], IGNORE)
  case["logits"] = -case["logits"]  # would give old-class anchors, but every pixel is void
  value, grad = value_and_grad(kind, case)
  assert value == 0.0 and np.isfinite(grad).all()


# ----------------------------------------------------------------------------------------
# Reference-code switches (reference bugs, off by default)
# ----------------------------------------------------------------------------------------


def test_bilinear_labels_mixes_ids_and_drops_void_and_large_ids():
  labels = np.zeros((1, 4, 8), np.int32)
  labels[0, :, 0] = 3
  labels[0, :, 1] = 15  # boundary 3|15 -> 9
  labels[0, :, 2:4] = IGNORE  # void -> -1 -> background
  labels[0, :, 4:6] = 100  # > 20 -> background
  labels[0, :, 6:8] = 7
  switched = np.asarray(contrastive.feature_labels(jnp.asarray(labels), (2, 4), bilinear=True))
  np.testing.assert_array_equal(switched, [[[9, 0, 0, 7]] * 2])
  nearest = np.asarray(contrastive.feature_labels(jnp.asarray(labels), (2, 4)))
  np.testing.assert_array_equal(nearest, [[[15, IGNORE, 100, 7]] * 2])
  rand = np.random.default_rng(8).integers(0, 30, (2, 32, 48))
  rand[rand > 25] = IGNORE
  np.testing.assert_array_equal(np.asarray(contrastive.feature_labels(jnp.asarray(rand), (2, 3), bilinear=True)),
                                np_bilinear_int8(rand, 2, 3))


def test_bilinear_labels_turns_void_into_pseudo_labelled_anchors():
  # Labels constant on each 2x2 cell, so bilinear resizing keeps a cell's id
  # and the only change the switch makes is void -> background -> pseudo-label.
  case = random_case(9)
  rng = np.random.default_rng(9)
  b, h, w = case["student"].shape[:3]
  cells = rng.choice([0, 3, 4, 5, IGNORE], size=(b, h, w), p=[0.3, 0.15, 0.15, 0.15, 0.25])
  case["labels"] = np.repeat(np.repeat(cells, 2, axis=1), 2, axis=2)
  void_anchor = (cells == IGNORE) & (np.argmax(case["logits"], -1) != 0)
  assert void_anchor.any()
  base = loss_value(case)
  switched = loss_value(case, bilinear_labels=True)
  expected = reference_ucd(case["student"], case["teacher"], case["logits"], np.where(cells == IGNORE, 0, cells),
                           case["n"])
  np.testing.assert_allclose(switched, expected, rtol=1e-4)
  # Void cells with an old-class prediction are anchors only with the switch on.
  moved = dict(case, student=np.where(void_anchor[..., None], -case["student"], case["student"]))
  assert loss_value(moved) == pytest.approx(base, rel=1e-6)
  assert loss_value(moved, bilinear_labels=True) != pytest.approx(switched, rel=1e-4)


def test_unshifted_negatives_weighs_negatives_more():
  case = random_case(10)
  base = loss_value(case)
  switched = loss_value(case, unshifted_negatives=True)
  # The row maximum is the anchor against its own copy, 1/tau: negatives
  # weigh e^(1/tau) ~ 1.6e6 times more than in the equation.
  assert switched > base + 1.0
  labels_os = labels_at_features(case["labels"])
  expected = reference_ucd(case["student"], case["teacher"], case["logits"], labels_os, case["n"], unshifted=True)
  np.testing.assert_allclose(switched, expected, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# The UCD code built on PLOP's (ygjwd12345/UCD, first commit 51b783a): PLOP's
# pseudo-labels, old features at background labels, pair weights forced to 1
# ----------------------------------------------------------------------------------------


def np_plop_pseudo_labels(labels, teacher_full, thresholds, n_old, n):
  """The code's in-place relabelling before the losses (its train.py 236-269), float64."""
  p = np_softmax(np.asarray(teacher_full, np.float64))
  entropy = -(p * np.log(p + 1e-8)).mean(-1) / np.log(n_old + 1e-8) / np.log(n)
  arg = p.argmax(-1)
  background = labels < n_old
  ok = entropy < thresholds[arg]
  out = labels.copy()
  out[~ok & background] = IGNORE
  out[ok & background] = arg[ok & background]
  return out, entropy


def np_ucd_code(student, teacher, logits_os, label_n, tau=0.07):
  """The code's `pre_contrastive_pixel` (version 'v2') + `PixelConLossV2`, float64.

  Transcribed from its utils/loss.py (lines 543-587 and 594-657 at 51b783a;
  utils/utils.py 349-393 at HEAD), on labels already brought to feature
  resolution (its lines 453-462: `np_bilinear_int8`).
  """
  d, n_old = student.shape[-1], logits_os.shape[-1]
  label_n = label_n.reshape(-1)
  mask_new_classes = label_n > 0
  min_new_classes = label_n[mask_new_classes].min()
  label_po = logits_os.reshape(-1, n_old).argmax(-1)
  label_ = np.where(label_n == 0, label_po, label_n)
  anchor_rows, old_rows = label_ > 0, (label_ > 0) & ~mask_new_classes
  label_anchor = label_[anchor_rows]
  label_contrast = np.concatenate([label_anchor, label_[old_rows]])

  def normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

  out_anchor = normalize(student.reshape(-1, d).astype(np.float64)[anchor_rows])
  out_contrast = np.concatenate([out_anchor, normalize(teacher.reshape(-1, d).astype(np.float64)[old_rows])])
  l_po = np_softmax(logits_os.reshape(-1, n_old).astype(np.float64))
  jm_p = l_po[anchor_rows] @ np.concatenate([l_po[anchor_rows], l_po[old_rows]]).T
  jm_p[(label_anchor[:, None] >= min_new_classes) & (label_contrast[None, :] >= min_new_classes)] = 1.0
  # PixelConLossV2.forward
  r = (label_anchor[:, None] == label_contrast[None, :]).astype(np.float64)
  mask_p = r.copy()
  mask_p[:, :len(label_anchor)] -= np.eye(len(label_anchor))
  mask_n = 1 - r
  adc = out_anchor @ out_contrast.T / tau
  neg_contrast = (np.exp(adc) * mask_n).sum(1, keepdims=True)
  adc = adc - adc.max(1, keepdims=True)
  pos_contrast = np.log(np.exp(adc)) * mask_p * jm_p - np.log(np.exp(adc) + neg_contrast) * mask_p * jm_p
  num = mask_p.sum(1)
  return float(-(pos_contrast.sum(1)[num != 0] / num[num != 0]).mean())


def plop_case(seed):
  """random_case plus the old model's full-resolution logits and entropy thresholds well clear of every pixel."""
  case = random_case(seed, p_old_gt=0.1)
  b, h, w, _, n_old, n = SHAPE
  rng = np.random.default_rng(100 + seed)
  case["full_logits"] = rng.normal(size=(b, 2 * h, 2 * w, n_old)) * rng.uniform(0.5, 5, size=(b, 2 * h, 2 * w, 1))
  _, entropy = np_plop_pseudo_labels(case["labels"], case["full_logits"], np.zeros(n_old), n_old, n)
  arg = case["full_logits"].argmax(-1)
  thresholds = []
  for c in range(n_old):  # halfway between two entropies of class c near its median
    v = np.sort(entropy[arg == c])
    k = len(v) // 2
    thresholds.append((v[k - 1] + v[k]) / 2)
  case["thresholds"] = np.asarray(thresholds)
  assert np.abs(entropy - case["thresholds"][arg]).min() > 1e-6
  return case


def plop_inputs(case):
  """LossInputs as `plop_ucd` gives them: the teacher's full-resolution logits and PLOP's thresholds too."""
  inputs = make_inputs(case["student"], case["teacher"], case["logits"], case["labels"], case["n"])
  teacher = dict(inputs.teacher, logits=jnp.asarray(case["full_logits"], jnp.float32))
  return dataclasses.replace(inputs, teacher=teacher,
                             extras={"plop_thresholds": jnp.asarray(case["thresholds"], jnp.float32)})


# The five switches that together compute the PLOP-based UCD code.
CODE_OPTIONS = {"pseudo_labels": True, "old_features_at": "background_label", "min_label_weights": True,
                "bilinear_labels": True, "unshifted_negatives": True}
_ARRAYS = ("student", "teacher", "logits", "labels", "full_logits", "thresholds")


@functools.partial(jax.jit, static_argnames=("n", "kind", "options"))
def _plop_value(arrays, n, kind, options):
  fn = contrastive.ucd_dense_loss if kind == "dense" else contrastive.ucd_loss
  return fn(plop_inputs(dict(arrays, n=n)), **dict(options))


def plop_loss(case, kind="blockwise", **options):
  arrays = {k: jnp.asarray(case[k], jnp.int32 if k == "labels" else jnp.float32) for k in _ARRAYS}
  return float(_plop_value(arrays, n=case["n"], kind=kind, options=tuple(sorted(options.items()))))


@pytest.mark.parametrize("seed", [20, 21])
def test_plop_based_code_transcription(seed):
  case = plop_case(seed)
  h, w = case["student"].shape[1:3]
  n_old = case["logits"].shape[-1]
  pseudo, _ = np_plop_pseudo_labels(case["labels"], case["full_logits"], case["thresholds"], n_old, case["n"])
  assert (pseudo[case["labels"] == 0] == IGNORE).any() and (pseudo[case["labels"] == 0] > 0).any()
  expected = np_ucd_code(case["student"], case["teacher"], case["logits"], np_bilinear_int8(pseudo, h, w))
  for kind in ("dense", "blockwise"):
    np.testing.assert_allclose(plop_loss(case, kind, **CODE_OPTIONS), expected, rtol=1e-4)
  # Each of the three PLOP-UCD switches is needed to get the code's value.
  for name, off in (("pseudo_labels", False), ("old_features_at", "old_class"), ("min_label_weights", False)):
    assert plop_loss(case, **dict(CODE_OPTIONS, **{name: off})) != pytest.approx(expected, rel=1e-3), name


def test_pseudo_labels_with_nearest_labels_matches_reference():
  # PLOP's pseudo-labels, then the equations on them (nearest resizing keeps the
  # rejected pixels ignored): the reference on the numpy pseudo-labels.
  case = plop_case(22)
  n_old = case["logits"].shape[-1]
  pseudo, _ = np_plop_pseudo_labels(case["labels"], case["full_logits"], case["thresholds"], n_old, case["n"])
  for options in ({}, {"old_features_at": "background_label", "min_label_weights": True}):
    expected = reference_ucd(case["student"], case["teacher"], case["logits"], labels_at_features(pseudo), case["n"],
                             **options)
    np.testing.assert_allclose(plop_loss(case, "dense", pseudo_labels=True, **options), expected, rtol=1e-4)
    assert plop_loss(case, "dense", **options) != pytest.approx(expected, rel=1e-3)


def test_pseudo_labels_are_plop_ce_ones():
  case = plop_case(23)
  inputs = plop_inputs(case)
  targets, _ = plop_losses.pseudo_labels(inputs.labels, inputs.teacher["logits"], inputs.extras["plop_thresholds"],
                                         inputs.task)
  np.testing.assert_array_equal(np.asarray(contrastive.training_labels(inputs, pseudo_labels=True)), targets)
  assert contrastive.training_labels(inputs) is inputs.labels
  with pytest.raises(ValueError, match="plop_thresholds"):
    contrastive.ucd_loss(dataclasses.replace(inputs, extras={}), pseudo_labels=True)


def test_min_label_weights_without_positive_label_forces_nothing():
  # Every label background: no forced pair (the code fails on the empty minimum).
  case = random_case(24)
  case["labels"] = np.where(case["labels"] == IGNORE, IGNORE, 0)
  assert loss_value(case, min_label_weights=True) == pytest.approx(loss_value(case), rel=1e-6)
  assert loss_value(case) > 0


# ----------------------------------------------------------------------------------------
# Ablation options (Table 7)
# ----------------------------------------------------------------------------------------


def test_old_features_off_ignores_old_model_features():
  case = random_case(11)
  other = dict(case, teacher=np.random.default_rng(0).normal(size=case["teacher"].shape))
  assert loss_value(case) != pytest.approx(loss_value(other), rel=1e-4)
  assert loss_value(case, old_features=False) == pytest.approx(loss_value(other, old_features=False), rel=1e-6)


def test_background_in_contrast():
  case = random_case(12)
  labels_os = labels_at_features(case["labels"])
  ext_background = (labels_os == 0) & (np.argmax(case["logits"], -1) == 0)
  assert ext_background.any()
  moved = dict(case, student=np.where(ext_background[..., None], -case["student"], case["student"]))
  assert loss_value(case) == pytest.approx(loss_value(moved), rel=1e-6)
  _, grad = value_and_grad("blockwise", case)
  assert not grad[ext_background].any()  # background pixels are not anchors
  on = {"background_in_contrast": True}
  assert loss_value(case, **on) != pytest.approx(loss_value(moved, **on), rel=1e-4)


def test_old_features_at_new_pixels():
  case = random_case(13)
  new_class = labels_at_features(case["labels"]) >= case["logits"].shape[-1]
  new_class &= labels_at_features(case["labels"]) != IGNORE
  moved = dict(case, teacher=np.where(new_class[..., None], -case["teacher"], case["teacher"]))
  assert loss_value(case) == pytest.approx(loss_value(moved), rel=1e-6)
  on = {"old_features_at_new": True}
  assert loss_value(case, **on) != pytest.approx(loss_value(moved, **on), rel=1e-4)


def test_bad_options_raise():
  inputs = make_inputs(*(random_case(14)[k] for k in ("student", "teacher", "logits", "labels", "n")))
  for options in ({"temperature": 0.0}, {"denominator": "all"}, {"block_size": 0}):
    with pytest.raises(ValueError):
      contrastive.ucd_loss(inputs, **options)


# ----------------------------------------------------------------------------------------
# Registry and presets
# ----------------------------------------------------------------------------------------


def test_registered_term_and_presets():
  assert losses.get("ucd") is contrastive.ucd_loss and losses.needs_teacher("ucd")
  ucd, cd = methods.get("ucd"), methods.get("cd")
  assert dict(ucd.losses) == {"ce": 1.0, "ucd": 0.01} == dict(cd.losses)
  assert ucd.options["ucd"]["temperature"] == 0.07 and ucd.options["ucd"]["uncertainty"]
  assert not cd.options["ucd"]["uncertainty"]
  assert (ucd.void_as_background, ucd.unseen_eval) == (False, "background") == (cd.void_as_background, cd.unseen_eval)
  with pytest.raises(ValueError):
    methods.get("ucd+cd")  # same term, different options

  for conventions, denominator in (("code", "positive_and_negatives"), ("paper", "negatives")):
    config = ml_collections.ConfigDict({"method": "cd", "losses": {}, "loss_options": {}, "task": "15-1"})
    methods.apply_to_config(config, conventions)
    assert dict(config.losses) == {"ce": 1.0, "ucd": 0.01}
    want = {**losses.option_defaults("ucd"), **ucd_method.UCD_OPTIONS, "uncertainty": False,
            "denominator": denominator}
    assert config.loss_options.ucd.to_dict() == want


def test_reference_switches_are_options_off_by_default():
  # Every method with the `ucd` term lists both switches (so that
  # --config.loss_options.ucd.<switch>=True overrides an existing field), off.
  users = [name for name in methods.names() if "ucd" in methods.get(name).losses]
  assert sorted(users) == ["cd", "mib_ucd", "plop_ucd", "ucd"]
  for name in users:
    options = methods.get(name).options["ucd"]
    assert (options["bilinear_labels"], options["unshifted_negatives"]) == (False, False), name
  # The options reach the loss as keywords: the config's options give the
  # default loss, and switching one on changes it.
  case = random_case(15)
  config = ml_collections.ConfigDict({"method": "ucd", "losses": {}, "loss_options": {}, "task": "15-1"})
  methods.apply_to_config(config)
  options = {k: v for k, v in config.loss_options.ucd.to_dict().items() if k != "block_size"}
  assert loss_value(case, **options) == loss_value(case)
  assert loss_value(case, **dict(options, unshifted_negatives=True)) == loss_value(case, unshifted_negatives=True)
  assert loss_value(case, unshifted_negatives=True) != pytest.approx(loss_value(case), rel=1e-4)
