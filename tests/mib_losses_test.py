"""Tests for MiB's terms, the MiB code's LwF / LwF-MC, their presets and MiB's head init.

The float64 NumPy references are written from the UCD paper's Eqs. 13-16 and
docs/reference_code.md §1-6, independently of the implementation.
"""

import dataclasses
import math
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from incseg_jax import losses
from incseg_jax import methods
import incseg_jax.losses.mib  # noqa: F401  (registers the terms)
import incseg_jax.methods.mib  # noqa: F401  (registers the presets)
from incseg_jax.models.classifier import IncrementalClassifier

RTOL, ATOL = 1e-5, 1e-6
IGNORE = 255

# (B, H, W, N_old, N): old channels [0, N_old) incl. background, new [N_old, N).
SHAPES = [(1, 3, 4, 2, 3), (2, 5, 3, 4, 7), (3, 4, 4, 2, 5), (2, 2, 6, 5, 6)]


# ----------------------------------------------------------------------------------------
# Helpers and float64 references
# ----------------------------------------------------------------------------------------


def make_inputs(student_logits, teacher_logits, labels, n_old, n, index=1):
  """LossInputs for a step with channels [0, n_old) old and [n_old, n) new."""
  task = losses.TaskInfo(index=index, num_channels=n, old_channels=tuple(range(1, n_old)),
                         new_channels=tuple(range(n_old, n)), ignore_label=IGNORE)
  teacher = None if teacher_logits is None else {"logits": jnp.asarray(teacher_logits, jnp.float32)}
  return losses.LossInputs(student={"logits": jnp.asarray(student_logits, jnp.float32)}, teacher=teacher,
                           labels=jnp.asarray(labels, jnp.int32), images=None, task=task)


def random_case(seed, shape):
  """Random student/teacher logits and labels with ignored and old-class pixels."""
  b, h, w, n_old, n = shape
  rng = np.random.default_rng(seed)
  student = 3.0 * rng.normal(size=(b, h, w, n)).astype(np.float32)
  teacher = 3.0 * rng.normal(size=(b, h, w, n_old)).astype(np.float32)
  labels = rng.integers(0, n, size=(b, h, w))
  labels[rng.random((b, h, w)) < 0.25] = IGNORE
  labels.flat[0] = IGNORE  # at least one ignored pixel
  return student, teacher, labels


def np_softmax(z):
  """float64 softmax over the last axis."""
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_sigmoid(z):
  return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def reduce_pixels(per_pixel, valid, reduction):
  """all_pixels: / B*H*W; valid: / number of valid pixels."""
  total = np.where(valid, per_pixel, 0.0).sum()
  return total / per_pixel.size if reduction == "all_pixels" else total / max(valid.sum(), 1)


def reference_unbiased_ce(student, labels, n_old, reduction="all_pixels"):
  """Eqs. 13-14: p~_0 = sum_{q < n_old} p_q, old labels -> 0, -log p~[label]."""
  p = np_softmax(student)
  p_tilde = p.copy()
  p_tilde[..., 0] = p[..., :n_old].sum(-1)
  valid = labels != IGNORE
  target = np.where(valid & (labels >= n_old), labels, 0)
  per_pixel = -np.log(np.take_along_axis(p_tilde, target[..., None], -1)[..., 0])
  return reduce_pixels(per_pixel, valid, reduction)


def reference_unbiased_kd(student, teacher, n_old, class_reduction="mean"):
  """Eqs. 15-16: q^_0 = p_0 + sum_new p_q; -sum_{c<n_old} p_old log q^, / n_old, mean."""
  q = np_softmax(student)
  q_hat = q[..., :n_old].copy()
  q_hat[..., 0] = q[..., 0] + q[..., n_old:].sum(-1)
  per_pixel = -(np_softmax(teacher) * np.log(q_hat)).sum(-1)
  return (per_pixel / (n_old if class_reduction == "mean" else 1)).mean()


def reference_lwf(student, teacher, n_old):
  """Softmax over the student's old channels; class mean, pixel mean."""
  return -(np_softmax(teacher) * np.log(np_softmax(student[..., :n_old]))).mean(-1).mean()


def np_bce(x, y):
  s = np_sigmoid(x)
  return -(y * np.log(s) + (1 - y) * np.log(1 - s))


def reference_bce(student, labels, reduction="all_pixels"):
  """One-hot sigmoid BCE summed over channels, 0 at ignored pixels."""
  n = student.shape[-1]
  valid = labels != IGNORE
  onehot = np.eye(n)[np.where(valid, labels, 0)]
  return reduce_pixels(np_bce(student, onehot).sum(-1), valid, reduction)


def reference_lwf_mc_kd(student, teacher, n_old):
  """The code's form: n_old * mean over (B, old channels, H, W) of BCE vs sigmoid(teacher)."""
  return n_old * np_bce(student[..., :n_old], np_sigmoid(teacher)).mean()


def np_logsumexp(z):
  z = np.asarray(z, np.float64)
  top = z.max(-1, keepdims=True)
  return (top + np.log(np.exp(z - top).sum(-1, keepdims=True)))[..., 0]


def code_unbiased_kd(student, teacher, labels, n_old, alpha=1.0, kd_mask=None, adaptive=False):
  """The PLOP / UCD code's unbiased KD with its `--alpha`, `--kd_mask`, `--kd_mask_adaptative_factor`, float64.

  Transcribed (channels last) from PLOP's utils/loss.py 408-447
  (`UnbiasedKnowledgeDistillationLoss`, reduction "none"; MiB's utils/loss.py
  139-172 is the same class) and the mask handling of its train.py 366-405.
  """
  student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
  n = student.shape[-1]
  new_cl = n - teacher.shape[-1]
  targets = teacher * alpha
  new_bkg_idx = [0] + list(range(targets.shape[-1], n))
  den = np_logsumexp(student)
  outputs_no_bgk = student[..., 1:-new_cl] - den[..., None]
  outputs_bkg = np_logsumexp(student[..., new_bkg_idx]) - den
  p = np_softmax(targets)
  loss = (p[..., 0] * outputs_bkg + (p[..., 1:] * outputs_no_bgk).sum(-1)) / targets.shape[-1]
  mask = {None: None, "oldbackground": labels < n_old, "new": labels >= n_old}[kd_mask]
  if mask is not None:
    loss = loss * mask
  lkd = -loss
  if mask is not None and adaptive:
    lkd = lkd.mean(axis=(1, 2)) * mask.astype(np.float64).mean(axis=(1, 2))
  return lkd.mean()


def code_kd(student, teacher, alpha=1.0):
  """The MiB code's `KnowledgeDistillationLoss` (its utils/loss.py 112-136; LwF), float64."""
  inputs = np.asarray(student, np.float64)[..., :teacher.shape[-1]]
  outputs = inputs - np_logsumexp(inputs)[..., None]
  labels = np_softmax(np.asarray(teacher, np.float64) * alpha)
  return -(outputs * labels).mean(-1).mean()


def code_icarl(student, teacher, labels, bkg=False):
  """The MiB code's `IcarlLoss` (its utils/loss.py 57-86) as its train.py 102-107 calls it, float64."""
  n = student.shape[-1]
  labels_new = np.where(labels != IGNORE, labels, n)
  targets = np.eye(n + 1)[labels_new][..., :n]
  output_old = np_sigmoid(teacher)
  if bkg:
    targets[..., 1:output_old.shape[-1]] = output_old[..., 1:]
  else:
    targets[..., :output_old.shape[-1]] = output_old
  return np_bce(student, targets).sum(-1).mean()


def loss(name, inputs, **options):
  return float(losses.get(name)(inputs, **options))


# ----------------------------------------------------------------------------------------
# Against the references
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["all_pixels", "valid"])
def test_unbiased_ce_matches_reference(shape, reduction):
  student, teacher, labels = random_case(0, shape)
  n_old, n = shape[3:]
  got = loss("unbiased_ce", make_inputs(student, teacher, labels, n_old, n), reduction=reduction)
  np.testing.assert_allclose(got, reference_unbiased_ce(student, labels, n_old, reduction), RTOL, ATOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("class_reduction", ["mean", "sum"])
def test_unbiased_kd_matches_reference(shape, class_reduction):
  student, teacher, labels = random_case(1, shape)
  n_old, n = shape[3:]
  got = loss("unbiased_kd", make_inputs(student, teacher, labels, n_old, n), class_reduction=class_reduction)
  np.testing.assert_allclose(got, reference_unbiased_kd(student, teacher, n_old, class_reduction), RTOL, ATOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_lwf_matches_reference(shape):
  student, teacher, labels = random_case(2, shape)
  n_old, n = shape[3:]
  got = loss("lwf", make_inputs(student, teacher, labels, n_old, n))
  np.testing.assert_allclose(got, reference_lwf(student, teacher, n_old), RTOL, ATOL)
  summed = loss("lwf", make_inputs(student, teacher, labels, n_old, n), class_reduction="sum")
  np.testing.assert_allclose(summed, n_old * reference_lwf(student, teacher, n_old), RTOL, ATOL)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["all_pixels", "valid"])
def test_bce_matches_reference(shape, reduction):
  student, teacher, labels = random_case(3, shape)
  n_old, n = shape[3:]
  got = loss("bce", make_inputs(student, teacher, labels, n_old, n), reduction=reduction)
  np.testing.assert_allclose(got, reference_bce(student, labels, reduction), RTOL, ATOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_lwf_mc_kd_matches_the_codes_weighted_mean(shape):
  student, teacher, labels = random_case(4, shape)
  n_old, n = shape[3:]
  got = loss("lwf_mc_kd", make_inputs(student, teacher, labels, n_old, n))
  np.testing.assert_allclose(got, reference_lwf_mc_kd(student, teacher, n_old), RTOL, ATOL)


def test_distillation_terms_ignore_labels():
  # The code masks nothing in its distillation terms: labels must not matter.
  student, teacher, labels = random_case(5, SHAPES[1])
  n_old, n = SHAPES[1][3:]
  for name in ("unbiased_kd", "lwf", "lwf_mc_kd"):
    a = loss(name, make_inputs(student, teacher, labels, n_old, n))
    b = loss(name, make_inputs(student, teacher, np.full_like(labels, IGNORE), n_old, n))
    assert a == b, name


KD_CODE_OPTIONS = [
    {"alpha": 2.5},
    {"mask": "oldbackground"},
    {"mask": "new"},  # the ignore label (255 >= N_old) counts as new
    {"mask": "new", "mask_adaptive_factor": True},
    {"mask": "oldbackground", "mask_adaptive_factor": True, "alpha": 0.5},
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", KD_CODE_OPTIONS)
def test_unbiased_kd_code_options_match_the_code(shape, options):
  student, teacher, labels = random_case(8, shape)
  n_old, n = shape[3:]
  inputs = make_inputs(student, teacher, labels, n_old, n)
  want = code_unbiased_kd(student, teacher, labels, n_old, alpha=options.get("alpha", 1.0),
                          kd_mask=options.get("mask"), adaptive=options.get("mask_adaptive_factor", False))
  np.testing.assert_allclose(loss("unbiased_kd", inputs, **options), want, RTOL, ATOL)
  assert abs(loss("unbiased_kd", inputs) - want) > 1e-4  # the options matter on this input
  np.testing.assert_allclose(loss("unbiased_kd", inputs), code_unbiased_kd(student, teacher, labels, n_old), RTOL, ATOL)


def test_unbiased_kd_mask_adaptive_factor_needs_a_mask_and_bad_masks_raise():
  student, teacher, labels = random_case(9, SHAPES[1])
  inputs = make_inputs(student, teacher, labels, *SHAPES[1][3:])
  assert loss("unbiased_kd", inputs, mask_adaptive_factor=True) == loss("unbiased_kd", inputs)
  with pytest.raises(ValueError, match="mask='old'"):
    loss("unbiased_kd", inputs, mask="old")


@pytest.mark.parametrize("shape", SHAPES)
def test_lwf_alpha_matches_the_code(shape):
  student, teacher, labels = random_case(10, shape)
  n_old, n = shape[3:]
  inputs = make_inputs(student, teacher, labels, n_old, n)
  np.testing.assert_allclose(loss("lwf", inputs), code_kd(student, teacher), RTOL, ATOL)
  for alpha in (0.5, 3.0):
    want = code_kd(student, teacher, alpha)
    np.testing.assert_allclose(loss("lwf", inputs, alpha=alpha), want, RTOL, ATOL)
    assert abs(loss("lwf", inputs) - want) > 1e-4


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("background_from_labels", [False, True])
def test_icarl_matches_the_code(shape, background_from_labels):
  student, teacher, labels = random_case(11, shape)
  n_old, n = shape[3:]
  inputs = make_inputs(student, teacher, labels, n_old, n)
  want = code_icarl(student, teacher, labels, bkg=background_from_labels)
  np.testing.assert_allclose(loss("icarl", inputs, background_from_labels=background_from_labels), want, RTOL, ATOL)
  # Not the BCE + LwF-MC distillation of `lwf_mc` (the code's `--icarl` without `--icarl_disjoint`).
  assert abs(loss("bce", inputs) + loss("lwf_mc_kd", inputs) - want) > 1e-3


def test_icarl_hand_computed_and_step_0():
  # One pixel, N_old = 2, N = 3, zero student logits: every channel costs
  # -(y log 1/2 + (1 - y) log 1/2) = log 2 whatever the target.
  z = np.zeros((1, 1, 1, 3))
  teacher = np.array([[[[2.0, -1.0]]]])
  np.testing.assert_allclose(loss("icarl", make_inputs(z, teacher, np.array([[[2]]]), 2, 3)), 3 * math.log(2), RTOL)
  # Student = teacher on the old channels, new channel -> label: BCE(x, sigmoid(x)) is the
  # binary entropy of sigmoid(x), the new channel (x = 30, label 2) ~ 0.
  z = np.array([[[[2.0, -1.0, 30.0]]]])
  s = np_sigmoid(np.array([2.0, -1.0]))
  entropy = -(s * np.log(s) + (1 - s) * np.log(1 - s)).sum()
  np.testing.assert_allclose(loss("icarl", make_inputs(z, teacher, np.array([[[2]]]), 2, 3)), entropy, 1e-5)
  # At step 0 (no teacher) the term is the code's BCE criterion, our `bce`.
  student, _, labels = random_case(12, (2, 3, 4, 1, 4))
  inputs = make_inputs(student, None, labels, 1, 4, index=0)
  np.testing.assert_allclose(loss("icarl", inputs), loss("bce", inputs), RTOL, ATOL)
  assert not losses.needs_teacher("icarl")


def test_needs_teacher_flags():
  assert losses.needs_teacher("unbiased_kd") and losses.needs_teacher("lwf") and losses.needs_teacher("lwf_mc_kd")
  assert not losses.needs_teacher("unbiased_ce") and not losses.needs_teacher("bce")


# ----------------------------------------------------------------------------------------
# Hand-computed cases
# ----------------------------------------------------------------------------------------


def test_unbiased_ce_by_hand():
  # Channels: 0 bg, 1-2 old, 3-4 new; logits are logs of 1..5 so p = (1..5) / 15.
  z = np.log(np.arange(1.0, 6.0))[None, None, :].repeat(4, 1)[None]  # (1, 1, 4, 5)
  labels = np.array([[[0, 2, 4, IGNORE]]])
  got = loss("unbiased_ce", make_inputs(z, None, labels, 3, 5))
  bg = -math.log((1 + 2 + 3) / 15)  # background and old pixels: p_bg + sum_old p_c
  new = -math.log(5 / 15)
  np.testing.assert_allclose(got, (bg + bg + new + 0.0) / 4, RTOL)
  # Only the labelled-background pixel, "valid" reduction: exactly -log(p_bg + sum_old p_c).
  got_bg = loss("unbiased_ce", make_inputs(z[:, :, :1], None, labels[:, :, :1], 3, 5), reduction="valid")
  np.testing.assert_allclose(got_bg, -math.log(6 / 15), RTOL)
  # The plain CE of the same pixel is different (the test can tell them apart).
  assert abs(loss("ce", make_inputs(z[:, :, :1], None, labels[:, :, :1], 3, 5)) - got_bg) > 0.1


@pytest.mark.parametrize("reduction", ["all_pixels", "valid"])
def test_unbiased_ce_is_plain_ce_at_step_0(reduction):
  student, _, labels = random_case(6, (2, 4, 5, 1, 4))
  inputs = make_inputs(student, None, labels, 1, 4, index=0)
  assert inputs.task.old_channels == ()
  np.testing.assert_allclose(loss("unbiased_ce", inputs, reduction=reduction),
                             loss("ce", inputs, reduction=reduction), RTOL, ATOL)


def test_unbiased_kd_by_hand():
  # Teacher p = (1, 2, 3) / 6 over bg + 2 old classes.
  teacher = np.log(np.array([[[[1.0, 2.0, 3.0]]]]))
  entropy = -sum(p * math.log(p) for p in (1 / 6, 2 / 6, 3 / 6))
  # Student old logits = teacher's, new logits ~ -inf: q^ = p, loss = H(p) / 3.
  student = np.concatenate([teacher, np.full((1, 1, 1, 2), -1e9)], -1)
  got = loss("unbiased_kd", make_inputs(student, teacher, np.zeros((1, 1, 1)), 3, 5))
  np.testing.assert_allclose(got, entropy / 3, RTOL)
  # New logits carry mass: student p = (1, 2, 3, 4) / 10, q^ = (1 + 4, 2, 3) / 10.
  student = np.log(np.array([[[[1.0, 2.0, 3.0, 4.0]]]]))
  got = loss("unbiased_kd", make_inputs(student, teacher, np.zeros((1, 1, 1)), 3, 4))
  want = -(1 / 6 * math.log(0.5) + 2 / 6 * math.log(0.2) + 3 / 6 * math.log(0.3)) / 3
  np.testing.assert_allclose(got, want, RTOL)


def test_lwf_entropy_and_zero_gradient_when_student_equals_teacher():
  student, teacher, labels = random_case(7, SHAPES[1])
  n_old, n = SHAPES[1][3:]
  student[..., :n_old] = teacher
  inputs = make_inputs(student, teacher, labels, n_old, n)
  p = np_softmax(teacher)
  entropy = -(p * np.log(p)).sum(-1)
  np.testing.assert_allclose(loss("lwf", inputs), (entropy / n_old).mean(), RTOL, ATOL)

  def of_student(logits):
    return losses.get("lwf")(dataclasses.replace(inputs, student={"logits": logits}))

  grad = jax.grad(of_student)(inputs.student["logits"])
  np.testing.assert_allclose(grad, 0.0, atol=1e-7)  # q = p minimises the cross-entropy
  # New channels take no part: changing them changes nothing.
  student[..., n_old:] += 5.0
  np.testing.assert_allclose(loss("lwf", make_inputs(student, teacher, labels, n_old, n)), loss("lwf", inputs),
                             RTOL, ATOL)


def test_bce_by_hand():
  # Zero logits: every channel's BCE is log 2, so a valid pixel costs C log 2.
  z = np.zeros((1, 1, 2, 4))
  labels = np.array([[[1, IGNORE]]])
  np.testing.assert_allclose(loss("bce", make_inputs(z, None, labels, 2, 4)), 4 * math.log(2) / 2, RTOL)
  # x = (-3, 3, -3, -3) against y = e_1: every channel costs log(1 + e^-3).
  z = np.array([[[[-3.0, 3.0, -3.0, -3.0]]]])
  np.testing.assert_allclose(loss("bce", make_inputs(z, None, labels[:, :, :1], 2, 4)), 4 * math.log1p(math.exp(-3)),
                             RTOL)


# ----------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------


def test_presets():
  mib = methods.get("mib")
  assert dict(mib.losses) == {"unbiased_ce": 1.0, "unbiased_kd": 10.0}
  assert mib.head_init is incseg_jax.methods.mib.mib_head_init
  assert mib.void_as_background and mib.unseen_eval == "ignore" and not mib.frozen and not mib.joint
  assert dict(methods.get("lwf").losses) == {"ce": 1.0, "lwf": 100.0}
  assert dict(methods.get("lwf_mc").losses) == {"bce": 1.0, "lwf_mc_kd": 10.0}
  assert methods.get("lwf").head_init is None and methods.get("lwf_mc").head_init is None
  assert mib.paper_options == {"unbiased_kd": {"class_reduction": "sum"}}
  assert methods.get("mib_ucd").paper_options["unbiased_kd"] == {"class_reduction": "sum"}
  assert "ilt" in methods.names()  # still the ILT module's
  icarl = methods.get("icarl")
  assert dict(icarl.losses) == {"icarl": 1.0} and icarl.options == {"icarl": {"background_from_labels": False}}
  assert icarl.void_as_background and icarl.unseen_eval == "ignore" and icarl.head_init is None


# ----------------------------------------------------------------------------------------
# MiB head initialisation
# ----------------------------------------------------------------------------------------

D = 6


def _variables(classes_per_step, seed):
  """Host variables laid out as in SegModel: params/classifier/head_k."""
  variables = IncrementalClassifier(classes_per_step).init(jax.random.key(seed), jnp.zeros((1, 1, 1, D)))
  return {"params": {"classifier": jax.tree.map(np.asarray, flax.core.unfreeze(variables["params"]))}}


def _logits(classes_per_step, variables, x):
  """float64 logits of the classifier part of `variables` on features x."""
  params = {"params": variables["params"]["classifier"]}
  return np.asarray(IncrementalClassifier(classes_per_step).apply(params, x), np.float64)


def _grown(seed=0):
  """Teacher with steps (3, 2); student with (3, 2, 3), old heads copied."""
  teacher = _variables((3, 2), seed)
  teacher["params"]["classifier"]["head_0"]["bias"] = np.array([0.7, -0.2, 0.1], np.float32)
  student = _variables((3, 2, 3), seed + 1)
  for name in ("head_0", "head_1"):
    student["params"]["classifier"][name] = jax.tree.map(np.copy, teacher["params"]["classifier"][name])
  step = types.SimpleNamespace(index=2, new_channels=(5, 6, 7), old_channels=(1, 2, 3, 4))
  return teacher, student, step


def test_head_init_values_and_untouched_params():
  teacher, student, step = _grown()
  before = jax.tree.map(np.copy, student)
  out = incseg_jax.methods.mib.mib_head_init(teacher, student, step)
  jax.tree.map(np.testing.assert_array_equal, student, before)  # inputs not mutated
  cls, old = out["params"]["classifier"], teacher["params"]["classifier"]
  shift = 0.7 - math.log(3 + 1)
  np.testing.assert_allclose(cls["head_2"]["bias"], [shift] * 3, rtol=1e-6)
  for c in range(3):
    np.testing.assert_array_equal(cls["head_2"]["kernel"][..., c], old["head_0"]["kernel"][..., 0])
  assert cls["head_2"]["kernel"].shape == (1, 1, D, 3)
  np.testing.assert_allclose(cls["head_0"]["bias"], [shift, -0.2, 0.1], rtol=1e-6)
  np.testing.assert_array_equal(cls["head_0"]["kernel"], old["head_0"]["kernel"])
  jax.tree.map(np.testing.assert_array_equal, cls["head_1"], old["head_1"])


def test_head_init_keeps_teacher_background_probability():
  teacher, student, step = _grown(3)
  out = incseg_jax.methods.mib.mib_head_init(teacher, student, step)
  x = jax.random.normal(jax.random.key(9), (2, 4, 4, D)) * 2.0
  t, s = _logits((3, 2), teacher, x), _logits((3, 2, 3), out, x)
  p_t, p_s = np_softmax(t), np_softmax(s)
  np.testing.assert_allclose(p_s[..., 0] + p_s[..., 5:].sum(-1), p_t[..., 0], rtol=1e-5)
  np.testing.assert_allclose(p_s[..., 1:5], p_t[..., 1:5], rtol=1e-5)  # old classes unchanged
  np.testing.assert_allclose(p_s[..., 5:], p_s[..., :1].repeat(3, -1), rtol=1e-5)  # even split
  # Without the init (fresh head, original bias) the identity does not hold.
  p0 = np_softmax(_logits((3, 2, 3), student, x))
  assert np.abs(p0[..., 0] + p0[..., 5:].sum(-1) - p_t[..., 0]).max() > 1e-3


def test_head_init_errors():
  teacher, student, step = _grown()
  with pytest.raises(ValueError, match="step 0"):
    incseg_jax.methods.mib.mib_head_init(teacher, student, types.SimpleNamespace(index=0, new_channels=(1, 2)))
  with pytest.raises(ValueError, match="3 channels"):
    incseg_jax.methods.mib.mib_head_init(teacher, student, types.SimpleNamespace(index=2, new_channels=(5, 6)))
