"""Feature distillation of the first paper: L2 on encoder features (Eq. 6), on
the ASPP branches (Eq. 7), and similarity-preserving KD (Eqs. 8-9).

Reductions: the paper writes squared Frobenius norms per image averaged over
images (`reduction="sum"`); the public code of this line of work uses the mean
squared error over all elements (`reduction="mean"`, with lambda 50 on the last
ResNet block). Both are exposed; the presets in `incseg_jax/methods/ilt.py`
pick them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from incseg_jax import losses

_FEATURES = ("encoder", "pre_logits")


def squared_distance(a: jax.Array, b: jax.Array, reduction: str) -> jax.Array:
  """Squared L2 distance of two (B, ...) arrays: per-image sum / B, or element mean."""
  d = jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32))
  if reduction == "sum":
    return d.sum() / d.shape[0]
  if reduction == "mean":
    return d.mean()
  raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'sum'")


def _feature(inputs: losses.LossInputs, feature: str):
  if feature not in _FEATURES:
    raise ValueError(f"feature={feature!r}: expected one of {_FEATURES}")
  return inputs.student[feature], inputs.teacher[feature]


@losses.register("kd_enc", needs_teacher=True)
def kd_enc(inputs: losses.LossInputs, reduction: str = "mean", feature: str = "encoder") -> jax.Array:
  """Eq. 6: ||E_{k-1}(X) - E_k(X)||_F^2 on the encoder output (last ResNet stage)."""
  student, teacher = _feature(inputs, feature)
  return squared_distance(student, teacher, reduction)


@losses.register("kd_dec", needs_teacher=True)
def kd_dec(inputs: losses.LossInputs, reduction: str = "mean") -> jax.Array:
  """Eq. 7: the mean over the ASPP branches of the squared distance of their outputs.

  On DeepLab-v2 these are the paper's four dilation layers; on DeepLab-v3 all
  five ASPP branches (1x1, three atrous, image pooling) count.
  """
  pairs = list(zip(inputs.student["aspp_branches"], inputs.teacher["aspp_branches"]))
  return sum(squared_distance(s, t, reduction) for s, t in pairs) / len(pairs)


def _similarity(features: jax.Array, spatial_sum: bool) -> jax.Array:
  """Row-normalised batch similarity matrix A (B x B) of Eqs. 8-9."""
  f = features.astype(jnp.float32)
  e = f.sum(axis=(1, 2)) if spatial_sum else f.reshape(f.shape[0], -1)
  g = e @ e.T
  # The epsilon only matters for an all-zero feature map (zero row).
  return g / jnp.maximum(jnp.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def _spkd(inputs, feature, spatial_sum):
  student, teacher = _feature(inputs, feature)
  a_s, a_t = _similarity(student, spatial_sum), _similarity(teacher, spatial_sum)
  return jnp.square(a_s - a_t).sum() / student.shape[0]


@losses.register("spkd", needs_teacher=True)
def spkd(inputs: losses.LossInputs, feature: str = "encoder") -> jax.Array:
  """Eq. 8: (1/B) ||A_k - A_{k-1}||_F^2 with A from features flattened to (B, HWF)."""
  return _spkd(inputs, feature, spatial_sum=False)


@losses.register("spkd_avg", needs_teacher=True)
def spkd_avg(inputs: losses.LossInputs, feature: str = "encoder") -> jax.Array:
  """Eq. 9: as `spkd` with features summed over the spatial positions, (B, F)."""
  return _spkd(inputs, feature, spatial_sum=True)
