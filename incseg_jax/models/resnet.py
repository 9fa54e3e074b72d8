"""ResNet encoders (ResNet-18/34/50/101 and a narrow CPU-sized ResNet).

This module owns the backbone: the torchvision-layout ResNets used by the
papers, a width-configurable `resnet_small` for CPU experiments, the
output-stride/dilation logic and the `bn_frozen` BatchNorm behaviour.

Param tree (stable names, later code freezes layers by them):

    stem/{conv,bn}
    stage{1..4}/block{i}/{conv1,bn1,conv2,bn2[,conv3,bn3]
                          [,downsample_conv,downsample_bn]}

Output stride follows the DeepLab convention: OS32 is the plain network,
OS16 sets stage4 to stride 1 / dilation 2, OS8 sets stage3 to stride 1 /
dilation 2 and stage4 to stride 1 / dilation 4. Every block of a dilated stage
uses the stage's dilation (the inplace-ABN/MiB convention; torchvision instead
keeps the previous dilation in the first block of the stage).

`activation` is the nonlinearity after every BatchNorm that is not followed
by the residual add, and after the add: 'relu' (torchvision) or 'leaky_relu'
(negative slope 0.01, what in-place-ABN's ImageNet ResNets, and hence
MiB/PLOP/UCD, use in those same places).

`rc_branches` (RCIL, incseg_jax/models/rcil.py) gives every 3x3 conv of the
residual blocks (and its BatchNorm) a parallel twin `<name>_new`, mixed per
channel before the activation / residual add; the plain names are kept.
"""

import functools
import math
from typing import Any

import flax
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu').
KAIMING_NORMAL = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# stride and dilation of stage1..4 for each supported output stride.
_STAGE_LAYOUT = {
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
}
OUTPUT_STRIDES = tuple(sorted(_STAGE_LAYOUT))

# The epsilon of every BatchNorm (PyTorch's default); RCIL's merge folds it into the convs.
BN_EPSILON = 1e-5

# in-place-ABN's default (activation_param=0.01), used by MiB/PLOP/UCD.
LEAKY_RELU_SLOPE = 0.01


# jax.nn.relu and jax.nn.leaky_relu written in lax: the same values and gradients (relu's is 0 at 0, as
# jax.nn's), without the nested jit each call of those traces (docs/benchmarks.md, "Tracing").
@jax.custom_jvp
def relu(x):
  """`jax.nn.relu`: max(x, 0), gradient 0 at 0."""
  return lax.max(x, lax.full_like(x, 0))


relu.defjvps(lambda g, ans, x: lax.select(lax.gt(x, lax.full_like(x, 0)), g, lax.full_like(g, 0)))


def leaky_relu(x):
  """`jax.nn.leaky_relu(x, LEAKY_RELU_SLOPE)`: x where x >= 0, else slope * x."""
  slope = lax.full_like(x, LEAKY_RELU_SLOPE)
  return lax.select(lax.ge(x, lax.full_like(x, 0)), x, lax.mul(slope, x))


ACTIVATIONS = {'relu': relu, 'leaky_relu': leaky_relu}


def activation_fn(name: str):
  """The elementwise nonlinearity called `name` (see `ACTIVATIONS`)."""
  if name not in ACTIVATIONS:
    raise ValueError(f'model.activation={name!r} is unknown; expected one of '
                     f'{sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


def conv(features, kernel, stride=1, dilation=1, *, name, dtype=jnp.float32):
  """Bias-free conv with PyTorch-style symmetric padding `dilation*(k-1)//2`.

  Explicit padding (instead of 'SAME') keeps spatial sizes identical to the
  torchvision reference for odd input sizes, which matters when porting
  checkpoints. The module is `Conv` (nn.Conv's parameter layout).
  """
  return Conv(features, kernel, stride, dilation, dtype=dtype, name=name)


def param(module, name, init_fn, shape):
  """`module.param(name, init_fn, shape, float32)`, without flax's trace of `init_fn` when the parameter exists.

  When a parameter exists (every apply), flax's `param` checks its shape
  against `jax.eval_shape` of the initialiser: one trace of the truncated
  normal per convolution per forward: 18% of a ResNet-101 student + teacher
  step's trace under cProfile (docs/benchmarks.md, "Tracing"). The same shape
  check is done here on the shape the module asks for.

  Raises:
    flax.errors.ScopeParamShapeError: the existing parameter has another shape.
  """
  shape = tuple(shape)
  if not module.has_variable('params', name):
    return module.param(name, init_fn, shape, jnp.float32)
  value = module.get_variable('params', name)
  if tuple(value.shape) != shape:
    raise flax.errors.ScopeParamShapeError(name, module.scope.path_text, tuple(value.shape), shape)
  return value


class Conv(nn.Module):
  """Bias-free square 2-D convolution with nn.Conv's parameters.

  The parameter is nn.Conv's `kernel` (HWIO, drawn by `KAIMING_NORMAL` from
  the same rng), so checkpoints, the torchvision import and a model built
  with nn.Conv are interchangeable; the computation is `conv2d`'s.

  Attributes:
    features: output channels.
    kernel_size: height and width of the kernel.
    stride: spatial stride.
    dilation: spatial dilation; the padding is `dilation*(k-1)//2` per side.
    dtype: computation dtype (the kernel is stored in float32).
  """

  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = param(self, 'kernel', KAIMING_NORMAL, (k, k, x.shape[-1], self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return conv2d(x, kernel, self.stride, self.dilation)


# On the CPU, `conv2d` computes a stride-1 convolution tap by tap when at most this share
# of its (output position, tap) products reads the feature map: XLA's CPU
# convolution spends its time on the padding read by the others (e.g. 32 ms
# of a 33 ms ASPP rate-6 branch on an 8 x 8 map, docs/benchmarks.md), while a
# product per tap skips it; on maps where most taps read the whole map, one
# convolution is faster than nine products.
TAP_READ_FRACTION = 0.5
# ... and when its kernel has at least this many weights per tap (in x out
# channels): on smaller ones the time saved is under a millisecond (0.2 ms for
# 64 -> 64 channels on an 8 x 8 map), while the extra operations lengthen the
# compile (the step of the tests' width-8 ResNet took 4 s longer to compile).
TAP_MIN_WEIGHTS = 256 * 256


def _tap_ranges(size, taps, dilation):
  """Per tap of an odd, centred kernel axis: (first, end) output index whose input lies in [0, size)."""
  centre = (taps - 1) // 2
  out = []
  for j in range(taps):
    offset = (j - centre) * dilation
    out.append((max(0, -offset), min(size, size - offset)))
  return out


def tap_read_fraction(spatial, kernel_hw, dilation):
  """Share of a stride-1, same-size convolution's (output position, tap) products that read the map.

  Args:
    spatial: (H, W) of the input (and output).
    kernel_hw: (kh, kw), both odd.
    dilation: spatial dilation.

  Returns:
    The product over both axes of (sum over taps of the output positions
    whose input is inside the map) / (taps x positions); 1 for a 1x1 kernel.
  """
  fraction = 1.0
  for size, taps in zip(spatial, kernel_hw):
    reads = sum(max(0, end - first) for first, end in _tap_ranges(size, taps, dilation))
    fraction *= reads / (taps * size)
  return fraction


def conv_by_taps(x, kernel, dilation):
  """Stride-1 convolution with padding `dilation*(k-1)//2` (odd kernel), one matrix product per tap.

  Each tap multiplies the part of `x` it reads at some output position by its
  (C, F) matrix and adds the product at those output positions; taps that
  read only padding are skipped. Same function as the convolution, summed in
  another order.

  Args:
    x: (B, H, W, C) input.
    kernel: (kh, kw, C, F) kernel, kh and kw odd.
    dilation: spatial dilation.

  Returns:
    (B, H, W, F).
  """
  _, h, w, _ = x.shape
  kh, kw = kernel.shape[:2]
  rows, cols = _tap_ranges(h, kh, dilation), _tap_ranges(w, kw, dilation)
  ch, cw = (kh - 1) // 2, (kw - 1) // 2
  out = None
  for i, (y0, y1) in enumerate(rows):
    for j, (x0, x1) in enumerate(cols):
      if y1 <= y0 or x1 <= x0:
        continue
      dy, dx = (i - ch) * dilation, (j - cw) * dilation
      part = lax.dot_general(x[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx], kernel[i, j], (((3,), (0,)), ((), ())))
      part = jnp.pad(part, ((0, 0), (y0, h - y1), (x0, w - x1), (0, 0)))
      out = part if out is None else out + part
  return out


def conv2d(x, kernel, stride=1, dilation=1):
  """`x` (B, H, W, C) convolved with `kernel` (k, k, C, F), torch's padding.

  Three rewrites give the same function and gradients as the plain
  convolution with padding `dilation*(k-1)//2`, faster where XLA's CPU
  convolution is slow (docs/benchmarks.md, "Where the time goes"):
  * a 1x1 kernel is a matrix product over the channels (of every `stride`-th
    position): as a dot, the weight gradient needs no layout copy of the
    activations;
  * with stride 1, a tap whose offset `|j - centre| * dilation` is at least
    the feature map's size reads only zero padding at every output position,
    so it is cut from the kernel (an ASPP rate of 12 or 18 on an 8 x 8 map
    keeps only its centre tap); the padding shrinks with it, so the output
    size is unchanged;
  * on the CPU backend, with stride 1, when at most half of the (output
    position, tap) products read the map (`TAP_READ_FRACTION`; the rest
    read padding) and the kernel is large enough to matter (at least
    `TAP_MIN_WEIGHTS` weights per tap), each tap is a matrix product over
    the part of the map it reads, placed at the output positions it reaches
    and summed (`conv_by_taps`): an ASPP rate of 6 on an 8 x 8 map reads
    the map in a quarter of its products. At crops of 128² and more no
    convolution of the ResNets qualifies (smaller crops can put layer 4's
    dilated 3x3 on a 4 x 4 map). GPUs and TPUs keep the convolution: the
    rewrite was measured on CPUs only.

  Args:
    x: (B, H, W, C) input.
    kernel: (k, k, C, F) kernel.
    stride: spatial stride.
    dilation: spatial dilation.

  Returns:
    (B, H', W', F), H' = (H + 2p - dilation*(k-1) - 1) // stride + 1.
  """
  k = kernel.shape[0]
  if k % 2 == 0:  # torch's padding for an even kernel: dilation*(k-1)//2 per side, no cut
    padding = [(dilation * (k - 1) // 2,) * 2] * 2
  else:
    centre = (k - 1) // 2
    padding = []
    for axis in (0, 1):
      keep = centre
      if stride == 1:
        keep = min(centre, (x.shape[1 + axis] - 1) // dilation)
      if keep < centre:
        kernel = lax.slice_in_dim(kernel, centre - keep, centre + keep + 1, axis=axis)
      padding.append((keep * dilation, keep * dilation))
  if kernel.shape[:2] == (1, 1):
    if stride > 1:
      x = x[:, ::stride, ::stride]
    return lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())))
  if (stride == 1 and k % 2 == 1 and jax.default_backend() == 'cpu'
      and kernel.shape[2] * kernel.shape[3] >= TAP_MIN_WEIGHTS
      and tap_read_fraction(x.shape[1:3], kernel.shape[:2], dilation) <= TAP_READ_FRACTION):
    return conv_by_taps(x, kernel, dilation)
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def batch_norm(train, bn_frozen, *, name, dtype=jnp.float32):
  """BatchNorm with PyTorch defaults (torch momentum 0.1 == flax 0.9).

  With `bn_frozen` the running averages are always used, so batch_stats are
  never written even when `train=True` (scale/bias freezing is the
  optimizer's job, not the module's).
  """
  return BatchNorm(use_running_average=(not train) or bn_frozen, dtype=dtype, name=name)


class BatchNorm(nn.Module):
  """`nn.BatchNorm(momentum=0.9, epsilon=BN_EPSILON, use_fast_variance=False)`, traced once per shape.

  The same variables (params scale / bias, batch_stats mean / var, float32)
  and the same arithmetic in the same order as flax's module, so values,
  gradients and running statistics are bit for bit flax's
  (tests/models_test.py). Written out because flax's goes through `jnp`
  functions that are each a nested jit and a shape-checking trace of its
  initialisers: 40% of a ResNet-101 student + teacher step's trace under
  cProfile (docs/benchmarks.md, "Tracing"). The arithmetic is one nested
  jit, `normalize`, so a network traces it once per distinct (shape,
  mode) instead of once per layer (the ResNet-101 student + teacher step:
  330 equations from 36 traces; docs/benchmarks.md, "BatchNorm traced once
  per shape").

  Statistics are reduced in float32 whatever `dtype`; the output is `dtype`.

  Attributes:
    use_running_average: normalise with the running statistics (and leave
      them unchanged) instead of the batch's.
    dtype: dtype of the output.
  """

  use_running_average: bool
  dtype: Any = jnp.float32
  momentum: float = 0.9
  epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    scale = param(self, 'scale', nn.initializers.ones, (c,))
    bias = param(self, 'bias', nn.initializers.zeros, (c,))
    y, mean, var = normalize(x, scale, bias, ra_mean.value, ra_var.value, batch_statistics=not self.use_running_average,
                              momentum=self.momentum, epsilon=self.epsilon, dtype=jnp.dtype(self.dtype))
    if not self.use_running_average and not self.is_initializing():
      ra_mean.value, ra_var.value = mean, var
    return y


@functools.partial(jax.jit, static_argnames=('batch_statistics', 'momentum', 'epsilon', 'dtype'))
def normalize(x, scale, bias, ra_mean, ra_var, *, batch_statistics: bool, momentum: float, epsilon: float,
               dtype: np.dtype):
  """`BatchNorm`'s arithmetic over the last axis: flax's operations, in flax's order.

  A jit of its own: inside a traced step each call is one cached equation,
  not the ~20 operations that JAX's differentiation would trace again at
  every layer (XLA inlines it: the compiled step is the same).

  Args:
    x: (..., C) input.
    scale, bias: (C,) float32 parameters.
    ra_mean, ra_var: (C,) float32 running statistics.
    batch_statistics: normalise with the batch's statistics (training)
      rather than the running ones.
    momentum: weight of the old running statistics in their update.
    epsilon: added to the variance.
    dtype: dtype of the output.

  Returns:
    (y, mean, var): the output in `dtype`; with `batch_statistics` the
    updated running statistics, else `ra_mean` and `ra_var` unchanged.
  """
  # lax throughout: every jnp operator is a nested jit to trace; each line is one of flax's, in its order.
  f32, last = np.float32, x.ndim - 1  # NumPy scalars: jnp.float32(v) puts one on a device
  if batch_statistics:
    xf, axes = lax.convert_element_type(x, f32), tuple(range(last))
    n = f32(math.prod(x.shape[:last]))
    mean = lax.div(lax.reduce_sum(xf, axes), n)
    var = lax.div(lax.reduce_sum(lax.square(lax.sub(xf, lax.broadcast_in_dim(mean, xf.shape, (last,)))), axes), n)
    keep, take = f32(momentum), f32(1 - momentum)
    new_mean = lax.add(lax.mul(keep, ra_mean), lax.mul(take, mean))
    new_var = lax.add(lax.mul(keep, ra_var), lax.mul(take, var))
  else:
    mean, var, new_mean, new_var = ra_mean, ra_var, ra_mean, ra_var
  per_channel = lambda v: lax.broadcast_in_dim(v, x.shape, (last,))
  mul = lax.mul(lax.rsqrt(lax.add(var, f32(epsilon))), scale)
  y = lax.mul(lax.sub(lax.convert_element_type(x, f32), per_channel(mean)), per_channel(mul))
  y = lax.add(y, per_channel(bias))
  return lax.convert_element_type(y, dtype), new_mean, new_var


def conv_bn(parent, x, features, kernel, stride=1, dilation=1, *, conv_name, bn_name, train, bn_frozen,
            dtype=jnp.float32, rc_branches=None):
  """conv `conv_name` then BatchNorm `bn_name`, inside `parent`'s compact method.

  With `rc_branches` (a `models.rcil.Branches`): RCIL's two parallel
  conv + BatchNorm branches, the plain-named one and its twin
  `<name>_new`, mixed per channel (training draws from `parent`'s 'dropout'
  rng); the plain-named BatchNorm uses running statistics when that branch is
  frozen (`freeze_first`).
  """
  def branch(suffix, frozen):
    y = conv(features, kernel, stride, dilation, name=conv_name + suffix, dtype=dtype)(x)
    return batch_norm(train, bn_frozen or frozen, name=bn_name + suffix, dtype=dtype)(y)
  if rc_branches is None:
    return branch('', False)
  first = branch('', rc_branches.freeze_first)
  second = branch(rc_branches.suffix, False)
  return rc_branches.mix(first, second, parent.make_rng('dropout') if train else None)


class BasicBlock(nn.Module):
  """Two 3x3 convs plus identity/projection shortcut (ResNet-18/34)."""

  features: int
  stride: int = 1
  dilation: int = 1
  bn_frozen: bool = False
  dtype: Any = jnp.float32
  activation: str = 'relu'
  rc_branches: Any = None  # RCIL's twin branches of both 3x3 convs (models/rcil.py)
  expansion = 1

  @nn.compact
  def __call__(self, x, train):
    """Returns `(act(out), out)`; PLOP distils the pre-activation `out`."""
    kw = dict(dtype=self.dtype)
    bn = lambda name: batch_norm(train, self.bn_frozen, name=name, **kw)
    cbn = dict(train=train, bn_frozen=self.bn_frozen, rc_branches=self.rc_branches, **kw)
    act = activation_fn(self.activation)
    s, d = self.stride, self.dilation
    y = act(conv_bn(self, x, self.features, 3, s, d, conv_name='conv1', bn_name='bn1', **cbn))
    y = conv_bn(self, y, self.features, 3, 1, self.dilation, conv_name='conv2', bn_name='bn2', **cbn)
    shortcut = _shortcut(x, self.features, self.stride, bn, self.dtype)
    pre = y + shortcut
    return act(pre), pre


class Bottleneck(nn.Module):
  """1x1-3x3-1x1 bottleneck, stride on the 3x3 (torchvision v1.5)."""

  features: int
  stride: int = 1
  dilation: int = 1
  bn_frozen: bool = False
  dtype: Any = jnp.float32
  activation: str = 'relu'
  rc_branches: Any = None  # RCIL's twin branch of the 3x3 conv (models/rcil.py)
  expansion = 4

  @nn.compact
  def __call__(self, x, train):
    """Returns `(act(out), out)`; PLOP distils the pre-activation `out`."""
    kw = dict(dtype=self.dtype)
    bn = lambda name: batch_norm(train, self.bn_frozen, name=name, **kw)
    act = activation_fn(self.activation)
    out_features = self.features * self.expansion
    y = conv(self.features, 1, name='conv1', **kw)(x)
    y = act(bn('bn1')(y))
    s, d = self.stride, self.dilation
    y = act(conv_bn(self, y, self.features, 3, s, d, conv_name='conv2', bn_name='bn2', train=train,
                    bn_frozen=self.bn_frozen, rc_branches=self.rc_branches, **kw))
    y = conv(out_features, 1, name='conv3', **kw)(y)
    y = bn('bn3')(y)
    shortcut = _shortcut(x, out_features, self.stride, bn, self.dtype)
    pre = y + shortcut
    return act(pre), pre


def _shortcut(x, out_features, stride, bn, dtype):
  """Identity, or 1x1 conv + BN when the shape changes (torchvision style)."""
  if stride == 1 and x.shape[-1] == out_features:
    return x
  s = conv(out_features, 1, stride, name='downsample_conv', dtype=dtype)(x)
  return bn('downsample_bn')(s)


_BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


class Stem(nn.Module):
  """ImageNet stem (7x7/2 conv) or small stem (3x3/2 conv), then 3x3/2 maxpool.

  The small stem keeps the maxpool so that `resnet_small` has the same
  stage strides (4/8/16/32) as the big ResNets; the maxpool is nearly free.
  """

  features: int
  kernel: int = 7
  bn_frozen: bool = False
  dtype: Any = jnp.float32
  activation: str = 'relu'

  @nn.compact
  def __call__(self, x, train):
    x = conv(self.features, self.kernel, 2, name='conv', dtype=self.dtype)(x)
    x = batch_norm(train, self.bn_frozen, name='bn', dtype=self.dtype)(x)
    x = activation_fn(self.activation)(x)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class Stage(nn.Module):
  """A sequence of blocks `block0..` ; only `block0` may stride."""

  block: str
  num_blocks: int
  features: int
  stride: int = 1
  dilation: int = 1
  bn_frozen: bool = False
  dtype: Any = jnp.float32
  activation: str = 'relu'
  rc_branches: Any = None

  @nn.compact
  def __call__(self, x, train):
    """Returns `(output, pre_activation_output_of_last_block)`."""
    pre = None
    for i in range(self.num_blocks):
      x, pre = _BLOCKS[self.block](
          self.features, stride=self.stride if i == 0 else 1,
          dilation=self.dilation, bn_frozen=self.bn_frozen, dtype=self.dtype,
          activation=self.activation, rc_branches=self.rc_branches, name=f'block{i}')(x, train)
    return x, pre


class ResNet(nn.Module):
  """Generic ResNet encoder.

  Attributes:
    block: 'basic' or 'bottleneck'.
    stage_sizes: number of blocks in stage1..4.
    width: channels of stage1 (x2 per stage, x4 for bottleneck outputs).
    stem_kernel: 7 for the ImageNet stem, 3 for the small stem.
    output_stride: 8, 16 or 32 (dilation replaces stride, see module doc).
    bn_frozen: if True, BatchNorm always uses (and never updates) running
      statistics.
    dtype: computation dtype (params stay float32).
    activation: 'relu' or 'leaky_relu' (slope 0.01), see module doc.
    rc_branches: None, or RCIL's `models.rcil.Branches` (see module doc).
  """

  block: str = 'bottleneck'
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  width: int = 64
  stem_kernel: int = 7
  output_stride: int = 16
  bn_frozen: bool = False
  dtype: Any = jnp.float32
  activation: str = 'relu'
  rc_branches: Any = None

  @nn.compact
  def __call__(self, x, train: bool):
    """Encodes an NHWC image batch.

    Args:
      x: (B, H, W, C) float input.
      train: selects batch statistics in BatchNorm (unless `bn_frozen`).

    Returns:
      Dict with `stages` (4 post-activation stage outputs), `stages_pre`
      (the same before the last block's final activation) and `encoder`
      (= stages[-1]).
    """
    if self.output_stride not in _STAGE_LAYOUT:
      raise ValueError(f'output_stride must be one of {OUTPUT_STRIDES}, '
                       f'got {self.output_stride}')
    if len(self.stage_sizes) != 4:
      raise ValueError(f'stage_sizes needs 4 entries, got {self.stage_sizes}')
    activation_fn(self.activation)  # fail early, naming the field
    strides, dilations = _STAGE_LAYOUT[self.output_stride]
    x = Stem(self.width, self.stem_kernel, self.bn_frozen, self.dtype,
             self.activation, name='stem')(x, train)
    stages, stages_pre = [], []
    for i in range(4):
      x, pre = Stage(self.block, self.stage_sizes[i], self.width * 2**i,
                     strides[i], dilations[i], self.bn_frozen, self.dtype,
                     self.activation, rc_branches=self.rc_branches, name=f'stage{i + 1}')(x, train)
      stages.append(x)
      stages_pre.append(pre)
    return {'stages': tuple(stages), 'stages_pre': tuple(stages_pre),
            'encoder': x}


def resnet18(**kw):
  """ResNet-18 (basic blocks, [2, 2, 2, 2])."""
  return ResNet(block='basic', stage_sizes=(2, 2, 2, 2), **kw)


def resnet34(**kw):
  """ResNet-34 (basic blocks, [3, 4, 6, 3])."""
  return ResNet(block='basic', stage_sizes=(3, 4, 6, 3), **kw)


def resnet50(**kw):
  """ResNet-50 (bottlenecks, [3, 4, 6, 3]); 2048 output channels."""
  return ResNet(block='bottleneck', stage_sizes=(3, 4, 6, 3), **kw)


def resnet101(**kw):
  """ResNet-101 (bottlenecks, [3, 4, 23, 3]); 2048 output channels."""
  return ResNet(block='bottleneck', stage_sizes=(3, 4, 23, 3), **kw)


def resnet_small(width: int = 16, blocks: tuple[int, ...] = (1, 1, 1, 1), **kw):
  """Narrow CPU ResNet: basic blocks, 3x3/2 stem conv + 3x3/2 maxpool.

  Stage strides are 4/8/16/32 like the big ResNets (see `Stem`).
  """
  return ResNet(block='basic', stage_sizes=tuple(blocks), width=width,
                stem_kernel=3, **kw)


BACKBONES = {
    'resnet18': resnet18, 'resnet34': resnet34, 'resnet50': resnet50,
    'resnet101': resnet101, 'resnet_small': resnet_small,
}
