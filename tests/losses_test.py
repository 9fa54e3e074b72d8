"""Tests for the loss registry and the cross-entropy term."""

import jax.numpy as jnp
import numpy as np
import pytest

from incseg_jax import losses


def reference_ce(logits, labels, ignore, reduction):
  """float64 NumPy cross-entropy written from the definition."""
  logits = logits.astype(np.float64)
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  total, valid = 0.0, 0
  for idx in np.ndindex(labels.shape):
    if labels[idx] != ignore:
      total -= logp[idx + (labels[idx],)]
      valid += 1
  return {"all_pixels": total / labels.size, "valid": total / max(valid, 1), "sum": total}[reduction]


def make_inputs(logits, labels, ignore=255):
  task = losses.TaskInfo(index=0, num_channels=logits.shape[-1], old_channels=(), new_channels=(1,),
                         ignore_label=ignore)
  return losses.LossInputs(student={"logits": jnp.asarray(logits)}, teacher=None, labels=jnp.asarray(labels),
                           images=None, task=task)


@pytest.mark.parametrize("shape", [(1, 2, 3, 2), (2, 5, 4, 6), (3, 7, 1, 21)])
@pytest.mark.parametrize("reduction", ["all_pixels", "valid", "sum"])
def test_ce_matches_float64_reference(shape, reduction):
  rng = np.random.default_rng(sum(shape))
  logits = rng.normal(size=shape).astype(np.float32) * 3
  labels = rng.integers(0, shape[-1], size=shape[:3])
  labels[rng.random(shape[:3]) < 0.3] = 255
  got = losses.get("ce")(make_inputs(logits, labels), reduction=reduction)
  np.testing.assert_allclose(float(got), reference_ce(logits, labels, 255, reduction), rtol=1e-5)


def test_ce_hand_computed():
  # Two pixels, two classes; logits (0, 0) -> -log(1/2) each; second pixel ignored.
  logits = np.zeros((1, 1, 2, 2), np.float32)
  labels = np.array([[[1, 255]]])
  got = losses.get("ce")(make_inputs(logits, labels))
  np.testing.assert_allclose(float(got), np.log(2) / 2, rtol=1e-6)  # averaged over both pixels


def test_registry_errors():
  with pytest.raises(ValueError, match="unknown loss 'nope'; known losses: .*ce"):
    losses.get("nope")
  assert not losses.needs_teacher("ce")
