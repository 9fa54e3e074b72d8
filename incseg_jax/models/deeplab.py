"""DeepLab decoders: v3 ASPP and v2 ASPP (mapped onto an incremental head).

This module owns everything between the encoder output and the classifier's
input ("pre-logits"). Both decoders return a dict with `aspp_branches` (the
per-branch outputs before concat/sum, which the ILT paper's Eq. 7 distils) and
`pre_logits`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from incseg_jax.models.resnet import KAIMING_NORMAL, activation_fn, batch_norm, conv, conv_bn


class ASPPv3(nn.Module):
  """DeepLab-v3 Atrous Spatial Pyramid Pooling.

  Five branches of `channels` each, all with BN + ReLU (or leaky ReLU): a 1x1 conv, three
  3x3 atrous convs (`rates`) and image pooling (global average pool, 1x1
  conv, BN, ReLU, broadcast back to the feature size). They are concatenated
  and projected by a 1x1 conv + BN + ReLU to `channels` = the pre-logits.

  Note: with `train=True` and batch size 1 the pooling branch's BN sees a
  single value per channel (zero variance), as in PyTorch; use batch >= 2.

  Attributes:
    channels: width of every branch and of the projection.
    rates: dilation rates of the three atrous branches.
    dropout: dropout rate after the projection (uses the 'dropout' rng when
      `train` and > 0); 0 disables it.
    bn_frozen: BatchNorm always uses running statistics when True.
    dtype: computation dtype.
    activation: the nonlinearity after every BN ('relu'; 'leaky_relu' as
      MiB's in-place-ABN head, used with the in-place-ABN backbone).
    rc_branches: None, or RCIL's `models.rcil.Branches`: the 1x1 and atrous
      branches get a twin each, as the RCIL code's `map_convs_new`.
  """

  channels: int = 256
  rates: tuple[int, ...] = (6, 12, 18)
  dropout: float = 0.0
  bn_frozen: bool = False
  dtype: Any = jnp.float32
  activation: str = 'relu'
  rc_branches: Any = None

  @nn.compact
  def __call__(self, x, train: bool, valid=None):
    """Returns the output dict.

    Args:
      x: (B, h, w, C) encoder features.
      train: BatchNorm batch statistics and dropout.
      valid: optional (B, h, w) bool, True at the feature positions of real
        (unpadded) input; the image pooling averages over those only (see
        SegModel: with PyTorch-style padding an image of height H has
        ceil(H / stride) positions, those whose input pixel i * stride is
        real, so this is exactly the unpadded image's pooling region).
    """
    kw = dict(dtype=self.dtype)
    bn = lambda name: batch_norm(train, self.bn_frozen, name=name, **kw)
    act = activation_fn(self.activation)
    cbn = dict(train=train, bn_frozen=self.bn_frozen, rc_branches=self.rc_branches, **kw)
    branches = [act(conv_bn(self, x, self.channels, 1, conv_name='conv_1x1', bn_name='bn_1x1', **cbn))]
    for i, rate in enumerate(self.rates):
      branches.append(act(conv_bn(self, x, self.channels, 3, dilation=rate, conv_name=f'conv_atrous{i}',
                                  bn_name=f'bn_atrous{i}', **cbn)))
    pooled = _image_mean(x, valid)
    pooled = conv(self.channels, 1, name='conv_pool', **kw)(pooled)
    pooled = act(bn('bn_pool')(pooled))
    branches.append(jnp.broadcast_to(pooled, branches[0].shape))
    y = jnp.concatenate(branches, axis=-1)
    y = act(bn('bn_project')(conv(self.channels, 1, name='conv_project',
                                  **kw)(y)))
    if self.dropout > 0:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return {'aspp_branches': tuple(branches), 'pre_logits': y}


def _image_mean(x, valid):
  """Mean of x (B, h, w, C) over all positions, or over those `valid` marks."""
  if valid is None:
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  if valid.shape != x.shape[:3]:
    raise ValueError(f'valid mask {valid.shape} does not match features {x.shape}')
  m = valid[..., None].astype(x.dtype)
  count = jnp.maximum(jnp.sum(m, axis=(1, 2), keepdims=True), 1.0)  # all-padding slots
  return jnp.sum(x * m, axis=(1, 2), keepdims=True) / count


class ASPPv2(nn.Module):
  """DeepLab-v2 ASPP, re-expressed for an incremental 1x1 classifier.

  The original v2 ASPP has four parallel 3x3 atrous convs (rates 6/12/18/24,
  with bias) that each output the class logits directly; the logits are
  summed. Because our classifier grows one 1x1 head per step, each branch
  here instead outputs `channels` features (plain linear conv with bias,
  no BN/ReLU) and the sum of the branches is the pre-logits. Since branches,
  sum and 1x1 head are all linear, `head(sum_i branch_i(x))` is exactly a
  v2 ASPP whose per-branch logit convs are factorised through `channels`
  (identical function class when `channels >= num_classes`).

  Attributes:
    channels: output width of every branch (= pre-logits width).
    rates: dilation rates, one branch per rate.
    dtype: computation dtype.
  """

  channels: int = 256
  rates: tuple[int, ...] = (6, 12, 18, 24)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    """Args: x (B, h, w, C) encoder features; train (unused, no BN/dropout)."""
    del train
    branches = []
    for i, rate in enumerate(self.rates):
      branches.append(nn.Conv(
          self.channels, (3, 3), padding=((rate, rate), (rate, rate)),
          kernel_dilation=(rate, rate), use_bias=True,
          kernel_init=KAIMING_NORMAL, dtype=self.dtype,
          name=f'conv_atrous{i}')(x))
    return {'aspp_branches': tuple(branches), 'pre_logits': sum(branches)}
