"""The full segmentation network (encoder + DeepLab decoder + incremental head).

This module owns `SegModel` (wiring, default atrous rates, logits
upsampling) and `build_model` (config -> model, with validation).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from incseg_jax.models.classifier import IncrementalClassifier, SSULClassifier, ssul_scores
from incseg_jax.models.deeplab import ASPPv2, ASPPv3
from incseg_jax.models.resnet import ACTIVATIONS, BACKBONES, OUTPUT_STRIDES

DECODERS = ('deeplab_v3', 'deeplab_v2')
HEADS = ('linear', 'ssul')


def default_atrous_rates(decoder: str, output_stride: int) -> tuple[int, ...]:
  """Rates used when `atrous_rates` is None.

  v3: (6, 12, 18) at OS16, doubled at OS8 and halved at OS32 so the receptive
  field in input pixels stays the same. v2: (6, 12, 18, 24) regardless.
  """
  if decoder == 'deeplab_v2':
    return (6, 12, 18, 24)
  return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]


class SegModel(nn.Module):
  """ResNet + DeepLab ASPP + incremental 1x1 classifier.

  Submodules are named `backbone`, `decoder` and `classifier` (heads
  `classifier/head_k`).

  Attributes:
    backbone: 'resnet18', 'resnet34', 'resnet50', 'resnet101' or
      'resnet_small'.
    decoder: 'deeplab_v3' or 'deeplab_v2'.
    classes_per_step: classes added at each step (step 0 includes background).
    output_stride: 8, 16 or 32.
    aspp_channels: decoder width (= pre-logits channels).
    atrous_rates: None for `default_atrous_rates`.
    small_width: base width of 'resnet_small'.
    small_blocks: blocks per stage of 'resnet_small'.
    bn_frozen: BatchNorm never uses batch statistics nor updates batch_stats.
    aspp_dropout: dropout after the v3 projection (needs a 'dropout' rng).
    dtype: computation dtype; logits are returned as float32.
    activation: nonlinearity of the backbone and the v3 ASPP, 'relu' or
      'leaky_relu' (slope 0.01: in-place-ABN ImageNet weights were trained with
      it, and MiB's head uses it too).
    rc_branches: None (the plain model), or RCIL's `models.rcil.Branches`:
      the model a `rcil` step trains, with a twin beside every 3x3 conv of the
      residual blocks and every 1x1 / atrous branch of the v3 ASPP (never set
      from the config: `models.rcil.two_branch_model`).
    head: 'linear' (`IncrementalClassifier`) or 'ssul' (`SSULClassifier`:
      the outputs then also hold `unknown_logits` and `scores`).
  """

  backbone: str = 'resnet101'
  decoder: str = 'deeplab_v3'
  classes_per_step: tuple[int, ...] = (21,)
  output_stride: int = 16
  aspp_channels: int = 256
  atrous_rates: tuple[int, ...] | None = None
  small_width: int = 16
  small_blocks: tuple[int, ...] = (1, 1, 1, 1)
  bn_frozen: bool = False
  aspp_dropout: float = 0.0
  dtype: Any = jnp.float32
  activation: str = 'relu'
  rc_branches: Any = None
  head: str = 'linear'

  @nn.compact
  def __call__(self, x, train: bool, valid=None):
    """Runs the network.

    Args:
      x: (B, H, W, 3) float32 NHWC images.
      train: BatchNorm batch statistics (unless `bn_frozen`) and dropout.
      valid: optional (B, H, W) bool, True on each image's real pixels when
        images were padded to a common shape (evaluation at original
        resolution): DeepLab-v3's image pooling then averages over the real
        extent only, as it would on the unpadded image.

    Returns:
      Dict with `stages`, `stages_pre`, `encoder` (backbone),
      `aspp_branches`, `pre_logits` (B, h, w, aspp_channels), `logits_os`
      (B, h, w, N) at the output stride and `logits` (B, H, W, N) bilinearly
      upsampled to the input size, N = sum(classes_per_step). With the 'ssul'
      head also `unknown_logits` (B, H, W, 1) and `scores` (B, H, W, N), the
      values a prediction takes the argmax of (`prediction_scores`).
    """
    _validate(self.backbone, self.decoder, self.output_stride, self.activation)
    kw = dict(output_stride=self.output_stride, bn_frozen=self.bn_frozen,
              dtype=self.dtype, activation=self.activation, rc_branches=self.rc_branches, name='backbone')
    if self.backbone == 'resnet_small':
      kw.update(width=self.small_width, blocks=tuple(self.small_blocks))
    out = dict(BACKBONES[self.backbone](**kw)(x, train))

    rates = self.atrous_rates
    if rates is None:
      rates = default_atrous_rates(self.decoder, self.output_stride)
    if self.decoder == 'deeplab_v3':
      dec = ASPPv3(self.aspp_channels, tuple(rates), self.aspp_dropout,
                   self.bn_frozen, self.dtype, self.activation, rc_branches=self.rc_branches, name='decoder')
    else:
      dec = ASPPv2(self.aspp_channels, tuple(rates), self.dtype, name='decoder')
    if self.decoder == 'deeplab_v3':
      # Encoder position i covers input pixel i * output_stride (ceil(H / os)
      # positions), so striding the pixel mask gives the feature mask.
      os_ = self.output_stride
      valid_os = None if valid is None else valid[:, ::os_, ::os_]
      out.update(dec(out['encoder'], train, valid=valid_os))
    else:
      out.update(dec(out['encoder'], train))

    b, h, w, _ = x.shape
    upsample = lambda a: jax.image.resize(a, (b, h, w, a.shape[-1]), method='bilinear')
    if self.head == 'ssul':
      logits_os, unknown_os = SSULClassifier(tuple(self.classes_per_step), self.bn_frozen, self.dtype,
                                             name='classifier')(out['pre_logits'], train)
      out['unknown_logits'] = upsample(unknown_os.astype(jnp.float32))
    else:
      logits_os = IncrementalClassifier(tuple(self.classes_per_step), self.dtype,
                                        name='classifier')(out['pre_logits'])
    logits_os = logits_os.astype(jnp.float32)
    out['logits_os'] = logits_os
    out['logits'] = upsample(logits_os)
    if self.head == 'ssul':
      out['scores'] = ssul_scores(out['logits'], out['unknown_logits'])
    # Every loss reads float32 (softmax, log-sum-exp, POD's and UCD's sums):
    # in low precision only the convolutions and activations are bfloat16 /
    # float16. Casts of outputs no loss reads are removed by XLA.
    return jax.tree.map(lambda a: a.astype(jnp.float32), out)


def prediction_scores(outputs):
  """What a prediction takes the argmax of: `scores` where the head defines them (SSUL), else `logits`."""
  return outputs['scores'] if 'scores' in outputs else outputs['logits']


def check_config(model_cfg) -> None:
  """Raises ValueError naming the `model.*` field that names no known architecture."""
  get = lambda name, default: getattr(model_cfg, name, default)
  _validate_head(get('head', 'linear'))
  # Old configs have no model.activation: they meant torchvision's ReLU.
  _validate(get('backbone', None), get('decoder', None), get('output_stride', None), get('activation', 'relu'))
  _validate_dtype(get('dtype', 'float32'))


DTYPES = ('float32', 'bfloat16', 'float16')


def _validate_dtype(dtype) -> None:
  if str(dtype) not in DTYPES:
    raise ValueError(f'model.dtype={dtype!r} is unknown; expected one of {list(DTYPES)}')


def _validate_head(head) -> None:
  if head not in HEADS:
    raise ValueError(f'model.head={head!r} is unknown; expected one of {list(HEADS)}')


def _validate(backbone, decoder, output_stride, activation='relu'):
  """Raises ValueError naming the offending field."""
  if backbone not in BACKBONES:
    raise ValueError(f'model.backbone={backbone!r} is unknown; expected one '
                     f'of {sorted(BACKBONES)}')
  if decoder not in DECODERS:
    raise ValueError(f'model.decoder={decoder!r} is unknown; expected one of '
                     f'{list(DECODERS)}')
  if output_stride not in OUTPUT_STRIDES:
    raise ValueError(f'model.output_stride={output_stride!r} is not supported; '
                     f'expected one of {OUTPUT_STRIDES}')
  if activation not in ACTIVATIONS:
    raise ValueError(f'model.activation={activation!r} is unknown; expected '
                     f'one of {sorted(ACTIVATIONS)}')


def build_model(model_cfg, classes_per_step) -> SegModel:
  """Builds a `SegModel` from a config.

  Args:
    model_cfg: ConfigDict (or any attribute object) with `backbone`,
      `decoder`, `output_stride` and optionally `aspp_channels` (256),
      `atrous_rates` (None), `small_width` (16), `small_blocks`
      ((1, 1, 1, 1)), `bn_frozen` (False), `aspp_dropout` (0.0), `dtype`
      (float32), `activation` ('relu'), `head` ('linear').
    classes_per_step: classes added at each step up to the current one.

  Returns:
    The (unbound) model.

  Raises:
    ValueError: unknown backbone/decoder/activation, unsupported output stride
      or bad `classes_per_step`.
  """
  get = lambda name, default: getattr(model_cfg, name, default)
  backbone, decoder = get('backbone', None), get('decoder', None)
  output_stride = get('output_stride', None)
  # Old configs have no model.activation: they meant torchvision's ReLU.
  activation = get('activation', 'relu')
  _validate(backbone, decoder, output_stride, activation)
  classes = tuple(int(c) for c in classes_per_step)
  if not classes or min(classes) < 1:
    raise ValueError(f'classes_per_step={tuple(classes_per_step)} must be a '
                     'non-empty sequence of positive ints')
  rates = get('atrous_rates', None)
  _validate_dtype(get('dtype', 'float32'))
  # Configs saved before model.head existed meant the 1x1 heads.
  head = str(get('head', 'linear'))
  _validate_head(head)
  return SegModel(
      backbone=backbone, decoder=decoder, classes_per_step=classes,
      output_stride=int(output_stride),
      aspp_channels=int(get('aspp_channels', 256)),
      atrous_rates=None if rates is None else tuple(int(r) for r in rates),
      small_width=int(get('small_width', 16)),
      small_blocks=tuple(int(b) for b in get('small_blocks', (1, 1, 1, 1))),
      bn_frozen=bool(get('bn_frozen', False)),
      aspp_dropout=float(get('aspp_dropout', 0.0)),
      dtype=jnp.dtype(get('dtype', 'float32')),
      activation=str(activation), head=head)
