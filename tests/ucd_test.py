"""Tests for UCD's contrastive distillation (Yang et al., Eqs. 2-11) and its presets.

`reference_ucd` is a float64 NumPy loop written from the equations (extended
map, anchor / contrast sets, positives / negatives, log-contrast, sigma),
independently of the JAX code; the dense JAX loss is checked against it and
the blockwise loss (the registered term) against the dense one, in value and
gradient, for every option (the reference-code switches included). The invariance tests mostly use the
dense form, to share its compilations with the reference test.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from incseg_jax import losses
from incseg_jax import methods
from incseg_jax.losses import contrastive  # registers the "ucd" term
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
                  unshifted=False):
  """Eqs. 2-11 in float64 with Python loops over anchors and contrast entries.

  Args:
    student, teacher: (B, h, w, D) new / old features.
    logits: (B, h, w, N_old) old-model logits.
    labels_os: (B, h, w) labels already at feature resolution.
    n: current channel count.
    tau ... unshifted: as the loss options (`unshifted`: `unshifted_negatives`).

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

  def old_entry(c):  # Eq. 4 and the Table 7 switches.
    return (1 <= c < n_old) or (c == 0 and background_in_contrast) or (c >= n_old and old_features_at_new)

  olds = [p for p in ext if old_features and old_entry(ext[p])]
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
    assert config.loss_options.ucd.to_dict() == dict(ucd_method.UCD_OPTIONS, uncertainty=False, denominator=denominator)


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
