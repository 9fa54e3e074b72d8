"""Incremental classifier: one 1x1 conv head per task step.

This module owns the growing part of the network. Step `k`'s classifier is
step `k-1`'s plus one more head, so old heads keep their param paths
(`head_0` .. `head_{k-1}`) and can be copied verbatim from the teacher
(see `incseg_jax.models.grow_variables`). `SSULClassifier` is SSUL's variant:
3x3 conv + BatchNorm + ReLU + 1x1 per head, with separate background and
unknown heads, read through sigmoids (`ssul_scores`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from incseg_jax.models import resnet


class IncrementalClassifier(nn.Module):
  """Concatenation of per-step 1x1 conv heads, in step order.

  Attributes:
    classes_per_step: number of classes each step adds; step 0 includes the
      background class.
    dtype: computation dtype.
  """

  classes_per_step: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """Maps (B, h, w, C) pre-logits to (B, h, w, sum(classes_per_step))."""
    if not self.classes_per_step or min(self.classes_per_step) < 1:
      raise ValueError('classes_per_step must be non-empty positive ints, got '
                       f'{self.classes_per_step}')
    # Separate convs (not one wide conv) so every step's weights live under
    # their own stable name and adding a head never touches the old ones.
    heads = [nn.Conv(n, (1, 1), use_bias=True, dtype=self.dtype,
                     name=f'head_{k}')(x)
             for k, n in enumerate(self.classes_per_step)]
    return jnp.concatenate(heads, axis=-1)


# PyTorch's kaiming_normal_ (fan_in, gain sqrt(2), untruncated): SSUL's DeepLabHead initialises every conv so.
_SSUL_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


class SSULHead(nn.Module):
  """One of SSUL's heads: 3x3 conv (no bias) + BatchNorm + ReLU + 1x1 conv with bias.

  Attributes:
    num_classes: output channels.
    bn_frozen: the BatchNorm always uses its running statistics.
    dtype: computation dtype.
  """

  num_classes: int
  bn_frozen: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps (B, h, w, C) features to (B, h, w, num_classes) logits."""
    width = x.shape[-1]
    x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, kernel_init=_SSUL_INIT,
                dtype=self.dtype, name='conv')(x)
    # The backbone's BatchNorm (PyTorch defaults) and ReLU.
    x = resnet.relu(resnet.batch_norm(train, self.bn_frozen, name='bn', dtype=self.dtype)(x))
    return nn.Conv(self.num_classes, (1, 1), kernel_init=_SSUL_INIT, dtype=self.dtype, name='logits')(x)


class SSULClassifier(nn.Module):
  """SSUL's classifier: separate sigmoid heads for unknown, background, and each step's classes.

  SSUL (Cha et al., NeurIPS 2021; code clovaai/SSUL, `DeepLabHead`) keeps
  one `SSULHead` per group: `unknown` (1 channel, the salient part of the
  background), `background` (1), `head_0` (step 0's foreground classes) and
  `head_k` (the classes step k adds). The logits keep the library's channel
  layout (channel 0 background, then the classes in step order); the unknown
  channel is returned apart.

  Attributes:
    classes_per_step: classes each step adds; step 0's count includes the
      background, so `head_0` has one channel fewer.
    bn_frozen: every head's BatchNorm uses its running statistics.
    dtype: computation dtype.
  """

  classes_per_step: tuple[int, ...]
  bn_frozen: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    """Maps (B, h, w, C) pre-logits to ((B, h, w, N) class logits, (B, h, w, 1) unknown logits)."""
    if not self.classes_per_step or min(self.classes_per_step) < 1:
      raise ValueError(f'classes_per_step must be non-empty positive ints, got {self.classes_per_step}')
    if self.classes_per_step[0] < 2:
      raise ValueError('an SSUL classifier needs a foreground class at step 0 '
                       f'(classes_per_step[0]={self.classes_per_step[0]} counts the background only)')
    head = lambda n, name: SSULHead(n, self.bn_frozen, self.dtype, name=name)(x, train)
    unknown = head(1, 'unknown')
    groups = [head(1, 'background'), head(self.classes_per_step[0] - 1, 'head_0')]
    groups += [head(n, f'head_{k}') for k, n in enumerate(self.classes_per_step) if k > 0]
    return jnp.concatenate(groups, axis=-1), unknown


def ssul_scores(logits, unknown_logits):
  """SSUL's inference scores: sigmoid per channel, the unknown's added to the background's.

  The SSUL code predicts argmax over [sigma(bg) + sigma(unknown), sigma(c_1), ...]
  (its `validate`: `outputs[:, 1] += outputs[:, 0]`, unknown dropped).

  Args:
    logits: (..., N) class logits, channel 0 background.
    unknown_logits: (..., 1) unknown logits.

  Returns:
    (..., N) float32 scores whose argmax is the prediction.
  """
  probs = jax.nn.sigmoid(logits.astype(jnp.float32))
  background = probs[..., :1] + jax.nn.sigmoid(unknown_logits.astype(jnp.float32))
  return jnp.concatenate([background, probs[..., 1:]], axis=-1)
