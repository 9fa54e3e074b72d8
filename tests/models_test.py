"""Tests for incseg_jax.models: shapes, strides, growth, frozen BN, names."""

import math

import flax
import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from incseg_jax.benchmarks import conv_taps
from incseg_jax.models import SegModel, add_head, build_model, grow_variables
from incseg_jax.models import init_variables, jit_init
from incseg_jax.models import resnet
from incseg_jax.models.classifier import _SSUL_INIT
from incseg_jax.models.resnet import KAIMING_NORMAL, TAP_READ_FRACTION, Conv, conv2d, tap_read_fraction
from incseg_jax.models.segmodel import default_atrous_rates

SIZE = 33  # odd on purpose: checks the ceil(H / stride) padding convention


def _expected_hw(size, output_stride):
  """Spatial size of stage1..4: stride 4/8/16/32 capped at the output stride."""
  return [math.ceil(size / min(4 * 2**i, output_stride)) for i in range(4)]


def _check_outputs(out, size, output_stride, decoder, enc_channels, n_classes,
                   aspp_channels, batch):
  hws = _expected_hw(size, output_stride)
  assert len(out['stages']) == len(out['stages_pre']) == 4
  for i, (s, p) in enumerate(zip(out['stages'], out['stages_pre'])):
    assert s.shape[:3] == (batch, hws[i], hws[i]), (i, s.shape)
    assert p.shape == s.shape
  assert out['encoder'].shape == (batch, hws[3], hws[3], enc_channels)
  h = hws[3]
  assert len(out['aspp_branches']) == (5 if decoder == 'deeplab_v3' else 4)
  for b in out['aspp_branches']:
    assert b.shape == (batch, h, h, aspp_channels)
  assert out['pre_logits'].shape == (batch, h, h, aspp_channels)
  assert out['logits_os'].shape == (batch, h, h, n_classes)
  assert out['logits'].shape == (batch, size, size, n_classes)


@pytest.mark.parametrize('decoder', ['deeplab_v3', 'deeplab_v2'])
@pytest.mark.parametrize('output_stride', [8, 16, 32])
@pytest.mark.parametrize('backbone,enc_channels', [('resnet_small', 128),
                                                   ('resnet18', 512)])
def test_shapes_real_apply(backbone, enc_channels, output_stride, decoder):
  model = SegModel(backbone=backbone, decoder=decoder, classes_per_step=(3, 2),
                   output_stride=output_stride, aspp_channels=8)
  x = jax.random.normal(jax.random.key(0), (1, SIZE, SIZE, 3))
  out, _ = model.init_with_output(jax.random.key(1), x, train=False)
  _check_outputs(out, SIZE, output_stride, decoder, enc_channels, 5, 8, 1)
  # Stage output is the ReLU of the pre-activation that PLOP distils.
  for s, p in zip(out['stages'], out['stages_pre']):
    np.testing.assert_array_equal(s, jnp.maximum(p, 0))
  assert float(out['stages_pre'][3].min()) < 0
  np.testing.assert_allclose(out['logits'], jax.image.resize(
      out['logits_os'], (1, SIZE, SIZE, 5), 'bilinear'), atol=1e-6)
  branches = out['aspp_branches']
  if decoder == 'deeplab_v2':
    np.testing.assert_allclose(out['pre_logits'], sum(branches), atol=1e-5)
  else:  # image-pooling branch is spatially constant
    pool = branches[4]
    np.testing.assert_array_equal(
        pool, jnp.broadcast_to(pool[:, :1, :1], pool.shape))


@pytest.mark.parametrize('decoder', ['deeplab_v3', 'deeplab_v2'])
@pytest.mark.parametrize('output_stride', [8, 16])
@pytest.mark.parametrize('backbone,enc_channels', [
    ('resnet34', 512), ('resnet50', 2048), ('resnet101', 2048)])
def test_shapes_eval_shape(backbone, enc_channels, output_stride, decoder):
  model = SegModel(backbone=backbone, decoder=decoder,
                   classes_per_step=(16, 1, 1), output_stride=output_stride)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  out, variables = jax.eval_shape(
      lambda r, x: model.init_with_output(r, x, train=False),
      jax.random.key(0), x)
  _check_outputs(out, 64, output_stride, decoder, enc_channels, 18, 256, 2)
  n_blocks = {'resnet34': 6, 'resnet50': 6, 'resnet101': 23}[backbone]
  assert len(variables['params']['backbone']['stage3']) == n_blocks


def _conv_dilations(jaxpr):
  """All conv rhs dilations in a jaxpr (recursing into sub-jaxprs)."""
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      found.update(eqn.params['rhs_dilation'])
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found |= _conv_dilations(sub)
  return found


@pytest.mark.parametrize('decoder,output_stride,rates,expected', [
    ('deeplab_v3', 32, None, {1, 3, 6, 9}),
    ('deeplab_v3', 16, None, {1, 2, 6, 12, 18}),
    ('deeplab_v3', 8, None, {1, 2, 4, 12, 24, 36}),
    ('deeplab_v3', 8, (3, 5, 7), {1, 2, 4, 3, 5, 7}),
    ('deeplab_v2', 8, None, {1, 2, 4, 6, 12, 18, 24}),
])
def test_dilations(decoder, output_stride, rates, expected):
  """Backbone dilation (stage3 2 / stage4 4 at OS8) and ASPP atrous rates."""
  model = SegModel(backbone='resnet_small', decoder=decoder,
                   classes_per_step=(2,), output_stride=output_stride,
                   aspp_channels=8, atrous_rates=rates)
  # Traced only: large enough that every atrous tap reads most of the map (conv2d
  # cuts the taps that read only padding and computes mostly-padding kernels tap by tap).
  x = jnp.zeros((1, 1200, 1200, 3))
  jaxpr = jax.make_jaxpr(
      lambda r, x: model.init_with_output(r, x, train=False))(
          jax.random.key(0), x).jaxpr
  assert _conv_dilations(jaxpr) == expected


def test_default_atrous_rates():
  assert default_atrous_rates('deeplab_v3', 16) == (6, 12, 18)
  assert default_atrous_rates('deeplab_v3', 8) == (12, 24, 36)
  assert default_atrous_rates('deeplab_v2', 8) == (6, 12, 18, 24)
  assert default_atrous_rates('deeplab_v2', 16) == (6, 12, 18, 24)


def _init(model, seed):
  # Eager init: reuses cached per-op kernels, much faster on CPU than the
  # jit compile in init_variables (exercised once, in test_param_tree_names).
  x = jnp.zeros((1, SIZE, SIZE, 3))
  return model.init(jax.random.key(seed), x, train=False)


def _small(classes_per_step, **kw):
  kw = {'backbone': 'resnet_small', 'decoder': 'deeplab_v3',
        'output_stride': 16, 'aspp_channels': 8, 'small_width': 8, **kw}
  return SegModel(classes_per_step=classes_per_step, **kw)


@pytest.mark.parametrize('decoder', ['deeplab_v3', 'deeplab_v2'])
def test_head_growth(decoder):
  old_model = _small((3, 2), decoder=decoder)
  new_model = _small((3, 2, 4), decoder=decoder)
  old_vars = _init(old_model, 0)
  fresh = _init(new_model, 1)
  grown = grow_variables(old_vars, fresh)

  flat_old = dict(jax.tree_util.tree_leaves_with_path(old_vars))
  flat_grown = dict(jax.tree_util.tree_leaves_with_path(grown))
  for path, leaf in flat_old.items():
    assert np.array_equal(leaf, flat_grown[path]), path
  new_paths = {jax.tree_util.keystr(p) for p in set(flat_grown) - set(flat_old)}
  assert new_paths == {"['params']['classifier']['head_2']['kernel']",
                       "['params']['classifier']['head_2']['bias']"}
  assert grown['params']['classifier']['head_2']['kernel'].shape == (1, 1, 8, 4)

  x = jax.random.normal(jax.random.key(2), (2, SIZE, SIZE, 3))
  old_out = old_model.apply(old_vars, x, train=False)
  new_out = new_model.apply(grown, x, train=False)
  assert new_out['logits'].shape[-1] == 9
  np.testing.assert_array_equal(new_out['logits'][..., :5], old_out['logits'])
  np.testing.assert_array_equal(new_out['logits_os'][..., :5],
                                old_out['logits_os'])


def test_add_head_initialises_only_the_new_head():
  old_model = _small((3, 2))
  new_model = _small((3, 2, 4))
  old_vars = _init(old_model, 0)
  grown = add_head(new_model, old_vars, jax.random.key(5), SIZE)
  full = _init(new_model, 1)
  # Same tree, shapes and dtypes as a full init of the grown model.
  assert jax.tree.structure(grown) == jax.tree.structure(full)
  jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype) or pytest.fail("shape"), grown, full)
  for path, leaf in jax.tree_util.tree_leaves_with_path(old_vars):
    got = grown
    for k in path:
      got = got[k.key]
    assert np.array_equal(leaf, got), path
  head = grown['params']['classifier']['head_2']
  assert np.abs(head['kernel']).sum() > 0  # initialised, not zeros
  with pytest.raises(ValueError, match='already has classifier/head_2'):
    add_head(new_model, grown, jax.random.key(5), SIZE)


def test_grow_variables_errors():
  old = {'params': {'a': jnp.zeros((2, 3)), 'b': jnp.zeros(1)}}
  with pytest.raises(ValueError, match='params/a'):
    grow_variables(old, {'params': {'a': jnp.zeros((2, 4)),
                                    'b': jnp.zeros(1)}})
  with pytest.raises(ValueError, match='params/b'):
    grow_variables(old, {'params': {'a': jnp.zeros((2, 3))}})
  with pytest.raises(ValueError, match='dtype'):
    grow_variables(old, {'params': {'a': jnp.zeros((2, 3), jnp.int32),
                                    'b': jnp.zeros(1)}})


def _tree_equal(a, b):
  return all(jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(np.array_equal, a, b)))


@pytest.mark.parametrize('decoder', ['deeplab_v3', 'deeplab_v2'])
def test_bn_frozen(decoder):
  x = 3.0 + jax.random.normal(jax.random.key(2), (2, SIZE, SIZE, 3))
  frozen, free = _small((3,), bn_frozen=True, decoder=decoder), _small(
      (3,), decoder=decoder)
  variables = _init(free, 0)
  out, upd = frozen.apply(variables, x, train=True, mutable=['batch_stats'])
  assert _tree_equal(upd['batch_stats'], variables['batch_stats'])
  # Frozen BN in train mode computes exactly what eval mode computes.
  eval_out = free.apply(variables, x, train=False)
  np.testing.assert_array_equal(out['logits'], eval_out['logits'])

  _, upd = free.apply(variables, x, train=True, mutable=['batch_stats'])
  for path, leaf in jax.tree_util.tree_leaves_with_path(upd['batch_stats']):
    old = variables['batch_stats']
    for key in path:
      old = old[key.key]
    assert not np.array_equal(leaf, old), jax.tree_util.keystr(path)


def test_aspp_dropout_uses_rng():
  model = _small((3,), aspp_dropout=0.5)
  variables = _init(model, 0)
  x = jax.random.normal(jax.random.key(1), (2, SIZE, SIZE, 3))
  run = lambda seed: model.apply(
      variables, x, train=True, mutable=['batch_stats'],
      rngs={'dropout': jax.random.key(seed)})[0]['pre_logits']
  assert not np.array_equal(run(0), run(1))
  assert float((run(0) == 0).mean()) > 0.3
  a, b = (model.apply(variables, x, train=False)['pre_logits'] for _ in '12')
  np.testing.assert_array_equal(a, b)


def test_param_tree_names():
  model = _small((3, 2, 1), small_blocks=(2, 1, 1, 3))
  variables = init_variables(model, jax.random.key(0), SIZE)
  assert set(variables) == {'params', 'batch_stats'}
  params = variables['params']
  assert set(params) == {'backbone', 'decoder', 'classifier'}
  assert set(params['backbone']) == {'stem', 'stage1', 'stage2', 'stage3',
                                     'stage4'}
  assert set(params['backbone']['stem']) == {'conv', 'bn'}
  assert set(params['backbone']['stage1']) == {'block0', 'block1'}
  assert set(params['backbone']['stage4']) == {'block0', 'block1', 'block2'}
  assert {'conv1', 'bn1', 'conv2', 'bn2', 'downsample_conv', 'downsample_bn'
          } == set(params['backbone']['stage2']['block0'])
  assert set(params['classifier']) == {'head_0', 'head_1', 'head_2'}
  assert set(variables['batch_stats']) == {'backbone', 'decoder'}
  assert params['backbone']['stem']['conv']['kernel'].shape == (3, 3, 3, 8)
  assert params['backbone']['stage4']['block0']['conv1']['kernel'].shape == (
      3, 3, 32, 64)


def _cfg(**overrides):
  cfg = ml_collections.ConfigDict({
      'backbone': 'resnet_small', 'decoder': 'deeplab_v2', 'output_stride': 8,
      'aspp_channels': 16, 'atrous_rates': None, 'small_width': 8,
      'small_blocks': [2, 1, 1, 1], 'bn_frozen': True})
  cfg.update(overrides)
  return cfg


def test_build_model():
  model = build_model(_cfg(), [16, 5])
  assert isinstance(model, SegModel)
  assert model.classes_per_step == (16, 5)
  assert model.small_blocks == (2, 1, 1, 1)
  assert (model.decoder, model.output_stride, model.bn_frozen) == (
      'deeplab_v2', 8, True)
  assert model.atrous_rates is None
  model = build_model(_cfg(atrous_rates=(1, 2, 3)), (4,))
  assert model.atrous_rates == (1, 2, 3)


@pytest.mark.parametrize('field,value,match', [
    ('backbone', 'resnet152', r'backbone.*resnet152'),
    ('decoder', 'deeplab_v3plus', r'decoder.*deeplab_v3plus'),
    ('output_stride', 4, r'output_stride=4'),
    ('activation', 'gelu', r"activation='gelu'"),
])
def test_build_model_errors(field, value, match):
  with pytest.raises(ValueError, match=match):
    build_model(_cfg(**{field: value}), (3,))


def test_build_model_bad_classes():
  with pytest.raises(ValueError, match='classes_per_step'):
    build_model(_cfg(), ())
  with pytest.raises(ValueError, match='classes_per_step'):
    build_model(_cfg(), (3, 0))


def test_activation():
  """model.activation reaches every backbone nonlinearity; default ReLU."""
  cfg = _cfg()
  assert build_model(cfg, (3,)).activation == 'relu'  # old configs lack it
  model = build_model(_cfg(activation='leaky_relu'), (3,))
  assert model.activation == 'leaky_relu'
  x = jax.random.normal(jax.random.key(0), (1, SIZE, SIZE, 3))
  out, variables = model.init_with_output(jax.random.key(1), x, train=False)
  for s, p in zip(out['stages'], out['stages_pre']):
    np.testing.assert_allclose(s, jnp.where(p >= 0, p, 0.01 * p), rtol=1e-6)
  assert float(out['stages'][3].min()) < 0
  # The v3 ASPP follows it too: every branch output has negative values.
  for branch in out['aspp_branches']:
    assert float(branch.min()) < 0
  # Same parameters either way: only the nonlinearity differs.
  relu_out = build_model(cfg, (3,)).apply(variables, x, train=False)
  assert jax.tree.structure(relu_out) == jax.tree.structure(out)
  assert not np.allclose(relu_out['encoder'], out['encoder'])


def _pooled_branch(variables, feats):
  """The image-pooling branch of a v3 decoder with `variables`, on features `feats`."""
  from incseg_jax.models.deeplab import ASPPv3  # pylint: disable=g-import-not-at-top
  dec = {'params': variables['params']['decoder'], 'batch_stats': variables['batch_stats']['decoder']}
  channels = dec['params']['conv_pool']['kernel'].shape[-1]
  return ASPPv3(channels=channels, rates=(1, 2, 3)).apply(dec, feats, False)['aspp_branches'][-1][:, 0, 0]


def test_masked_image_pooling_pools_only_the_real_extent():
  """With `valid`, a padded input's image-pooling branch equals the unpadded one's."""
  from incseg_jax.models.deeplab import ASPPv3  # pylint: disable=g-import-not-at-top
  aspp = ASPPv3(channels=8, rates=(1, 2, 3))
  feats = jax.random.normal(jax.random.key(0), (2, 5, 7, 4))  # real features of a 40x56 input (stride 8)
  padded = jnp.pad(feats, ((0, 0), (0, 3), (0, 2), (0, 0)), constant_values=9.0)  # 8x9 -> 64x72 input
  variables = aspp.init(jax.random.key(1), feats, False)
  valid = jnp.zeros((2, 8, 9), bool).at[:, :5, :7].set(True)
  ref = aspp.apply(variables, feats, False)['aspp_branches'][-1][:, 0, 0]
  masked = aspp.apply(variables, padded, False, valid=valid)['aspp_branches'][-1][:, 0, 0]
  unmasked = aspp.apply(variables, padded, False)['aspp_branches'][-1][:, 0, 0]
  np.testing.assert_allclose(masked, ref, rtol=1e-5, atol=1e-6)
  assert not np.allclose(unmasked, ref, atol=1e-3)  # padding would shift the pooled context
  # The whole v3 model: an all-true mask changes nothing; masking the bottom
  # rows of an odd-sized input (ceil(33 / 8) = 5 feature rows) changes the
  # pooled context exactly as cropping the input to its real rows would.
  model = build_model(_cfg(decoder='deeplab_v3', atrous_rates=(1, 2, 3)), (3,))
  x = jax.random.normal(jax.random.key(2), (1, SIZE, SIZE, 3))
  v = model.init(jax.random.key(3), x, train=False)
  plain = model.apply(v, x, train=False)
  out = model.apply(v, x, train=False, valid=jnp.ones((1, SIZE, SIZE), bool))
  np.testing.assert_allclose(out['logits'], plain['logits'], rtol=1e-5, atol=1e-5)
  half = jnp.zeros((1, SIZE, SIZE), bool).at[:, :17].set(True)  # rows 0..16: feature rows 0..2
  out = model.apply(v, x, train=False, valid=half)
  feats = plain['encoder'][:, :3]
  np.testing.assert_allclose(out['aspp_branches'][-1][:, 0, 0], _pooled_branch(v, feats), rtol=1e-5, atol=1e-5)


def _numpy_conv(x, kernel, stride, dilation):
  """float64 convolution straight from the definition, torch's padding."""
  b, h, w, c = x.shape
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  xp = np.zeros((b, h + 2 * pad, w + 2 * pad, c))
  xp[:, pad:pad + h, pad:pad + w] = x
  ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  out = np.zeros((b, ho, wo, kernel.shape[-1]))
  for i in range(k):
    for j in range(k):
      patch = xp[:, i * dilation:i * dilation + stride * (ho - 1) + 1:stride,
                 j * dilation:j * dilation + stride * (wo - 1) + 1:stride]
      out += patch @ kernel[i, j]
  return out


# (height, width, kernel, stride, dilation): 1x1 (stride 1, 2: a dot), atrous taps that
# read only padding in both / one dimension (cut), taps that read some of the map (kept:
# one product per tap where at most half the products read the map, e.g. rate 6 or 7 on
# 8x8 and the 5x5 kernel), the stem's 7x7 stride 2, an even kernel and odd sizes.
_CONV_CASES = [(8, 8, 1, 1, 1), (9, 7, 1, 2, 1), (8, 8, 3, 1, 18), (8, 8, 3, 1, 12), (8, 8, 3, 1, 6),
               (5, 9, 3, 1, 6), (8, 8, 3, 1, 7), (8, 8, 3, 1, 8), (9, 9, 3, 2, 1), (33, 31, 7, 2, 1),
               (6, 6, 5, 1, 2), (4, 5, 2, 1, 3)]


@pytest.mark.parametrize('h,w,k,stride,dilation', _CONV_CASES)
def test_conv_is_nn_conv(h, w, k, stride, dilation, monkeypatch):
  """`Conv` = nn.Conv with torch's padding: same parameters, outputs and gradients.

  Its 1x1-as-dot, cut-tap and product-per-tap rewrites are checked against a
  float64 NumPy convolution written from the definition and against
  nn.Conv's gradients.
  """
  # Taps on this 5 -> 4 kernel too, so the cases reach every rewrite.
  monkeypatch.setattr(resnet, 'TAP_MIN_WEIGHTS', 0)
  x = jax.random.normal(jax.random.key(1), (2, h, w, 5))
  pad = dilation * (k - 1) // 2
  ref = nn.Conv(4, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                kernel_dilation=(dilation, dilation), use_bias=False, kernel_init=KAIMING_NORMAL)
  mine = Conv(4, k, stride, dilation)
  v_ref = ref.init(jax.random.key(0), x)
  v = mine.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, v, v_ref)  # same names, shapes and initial values
  want = _numpy_conv(np.asarray(x, np.float64), np.asarray(v['params']['kernel'], np.float64), stride, dilation)
  got = mine.apply(v, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ref.apply(v_ref, x), want, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(2), want.shape)
  grads = lambda m: jax.grad(lambda v, x: jnp.sum(m.apply(v, x) * cotangent), argnums=(0, 1))(v, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), grads(mine), grads(ref))


def test_conv_cuts_taps_that_read_only_padding():
  """Which computation `conv2d` picks: dots for cut and mostly-padding kernels, else one convolution.

  An ASPP rate of 18 on an 8x8 map is one dot (its centre tap); rate 6 reads
  the map in a quarter of its products, so it is nine dots, one per tap; on a
  32x32 map rate 6 stays one 3x3 convolution; rate 12 on 8x32 cuts its rows to
  the centre and stays a 1x3 convolution (three quarters of its products read
  the map), on 8x16 its three taps are dots (half of them do).
  """
  def convs(h, w, dilation, cin=256, cout=256):
    jaxpr = jax.make_jaxpr(lambda x, k: conv2d(x, k, 1, dilation))(
        jax.ShapeDtypeStruct((1, h, w, cin), jnp.float32), jax.ShapeDtypeStruct((3, 3, cin, cout), jnp.float32))
    return [(e.primitive.name, e.invars[1].aval.shape[:2] if e.primitive.name == 'conv_general_dilated' else None)
            for e in jaxpr.jaxpr.eqns if e.primitive.name in ('conv_general_dilated', 'dot_general')]
  assert convs(8, 8, 18) == [('dot_general', None)]
  assert convs(8, 8, 6) == [('dot_general', None)] * 9
  assert convs(32, 32, 6) == [('conv_general_dilated', (3, 3))]
  assert convs(8, 32, 12) == [('conv_general_dilated', (1, 3))]
  assert convs(8, 16, 12) == [('dot_general', None)] * 3
  # Below TAP_MIN_WEIGHTS weights per tap the products would save too little.
  assert convs(8, 8, 6, 255, 256) == [('conv_general_dilated', (3, 3))]
  assert convs(8, 8, 6, 2048, 32) == [('dot_general', None)] * 9


def test_conv_by_taps_is_cpu_only(monkeypatch):
  """On another backend a mostly-padding kernel stays one convolution (the taps were measured on CPUs)."""
  trace = lambda: jax.make_jaxpr(lambda x, k: conv2d(x, k, 1, 6))(
      jax.ShapeDtypeStruct((1, 8, 8, 256), jnp.float32), jax.ShapeDtypeStruct((3, 3, 256, 256), jnp.float32))
  names = lambda jaxpr: [e.primitive.name for e in jaxpr.jaxpr.eqns if e.primitive.name in
                         ('conv_general_dilated', 'dot_general')]
  assert names(trace()) == ['dot_general'] * 9
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert names(trace()) == ['conv_general_dilated']


def test_tap_read_fraction_by_hand():
  """Share of (output position, tap) products that read the map, counted by hand."""
  # 8 rows, rate 6: the taps at -6 / 0 / +6 reach 2 / 8 / 2 output rows of 8.
  assert tap_read_fraction((8, 8), (3, 3), 6) == pytest.approx((12 / 24) ** 2)
  assert tap_read_fraction((32, 32), (3, 3), 6) == pytest.approx((84 / 96) ** 2)
  # 5 taps at rate 2 on 6 rows reach 2, 4, 6, 4, 2 rows; one tap reads everything.
  assert tap_read_fraction((6, 7), (5, 1), 2) == pytest.approx(18 / 30)
  assert tap_read_fraction((3, 3), (1, 1), 5) == 1.0
  # Rates 1, 2, 3 of the shapes model's 8x8 maps all stay above the threshold.
  assert min(tap_read_fraction((8, 8), (3, 3), r) for r in (1, 2, 3)) > TAP_READ_FRACTION


def test_conv_taps_benchmark_compares_the_same_function():
  """The tap benchmark's two ways agree, and its read share is `tap_read_fraction`'s."""
  row = conv_taps.measure(8, 6, 5, 6, repeats=1)
  assert row['read'] == pytest.approx(0.25)
  assert row['rel_diff'] < 1e-5
  assert set(row) == {'read', 'rel_diff', 'conv_fwd', 'conv_grad', 'taps_fwd', 'taps_grad'}
  assert conv_taps.parse_case('32:2048:256:18') == (32, 2048, 256, 18)
  for bad in ('32:2048:256', '32:x:256:18', '0:1:1:1'):
    with pytest.raises(ValueError, match='map:in:out:rate'):
      conv_taps.parse_case(bad)
  with pytest.raises(ValueError, match='--repeats=0'):
    conv_taps.check_counts(0, 1)
  with pytest.raises(ValueError, match='--threads=-1'):
    conv_taps.check_counts(1, -1)
  conv_taps.check_counts(1, 0)


def test_init_compiled_at_o1_is_bit_identical_to_the_default_level():
  """`jit_init` compiles initialisation at LLVM -O1 to save compile time; the values must not change."""
  def init(key):
    keys = jax.random.split(key, 5)
    # The initializers of every model: conv kernels (truncated normal, fan-out and fan-in), the
    # classifier's default, and BatchNorm's constants, at shapes with odd and vector-unfriendly sizes.
    return [KAIMING_NORMAL(keys[0], (7, 7, 3, 8)), KAIMING_NORMAL(keys[1], (3, 3, 8, 13)),
            _SSUL_INIT(keys[2], (1, 1, 24, 5)), nn.initializers.lecun_normal()(keys[3], (1, 1, 16, 3)),
            nn.initializers.zeros(keys[4], (13,)), nn.initializers.ones(keys[4], (13,))]

  fast = jit_init(init)(jax.random.key(7))
  default = jax.jit(init)(jax.random.key(7))
  assert len(fast) == len(default)
  for a, b in zip(fast, default):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.std(np.asarray(fast[0])) > 0  # random, not a constant


def test_init_runs_inside_another_trace():
  # JAX refuses compiler options on a nested jit: under a trace `jit_init` must fall back to a plain jit, both
  # when an argument is a tracer and when every argument is a closed-over concrete array.
  init = jit_init(lambda key, x: jax.random.normal(key, (3,)) + x.sum())
  key, x = jax.random.key(0), np.ones(2, np.float32)
  expected = np.asarray(init(key, x))
  assert jax.eval_shape(lambda k: init(k, x), key).shape == (3,)
  assert jax.eval_shape(lambda: init(key, x)).shape == (3,)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda: init(key, x))()), expected)


def test_traced_functions_are_shared_by_equal_models_only():
  # evaluation, prediction, teacher forward and initialisation are memoised by model value (flax modules compare
  # by their fields): a model equal in every field reuses them; one field apart (dtype, bn_frozen) must not.
  from incseg_jax import evaluation  # pylint: disable=g-import-not-at-top
  from incseg_jax import train_step  # pylint: disable=g-import-not-at-top
  from incseg_jax.models import abstract_variables  # pylint: disable=g-import-not-at-top
  a, b = build_model(_cfg(), (3, 1)), build_model(_cfg(), (3, 1))
  others = [build_model(_cfg(dtype='bfloat16'), (3, 1)), build_model(_cfg(bn_frozen=False), (3, 1)),
            build_model(_cfg(), (3, 2))]
  makers = [lambda m: evaluation.make_eval_step(m, 4, 255), evaluation.make_predict,
            train_step.make_teacher_forward]
  for make in makers:
    assert make(a) is make(b)
    assert all(make(o) is not make(a) for o in others)
  first, second = abstract_variables(a, 32), abstract_variables(b, (32, 32))
  assert first is not second and first['params'] is not second['params']  # new containers: callers may edit them
  assert jax.tree.structure(first) == jax.tree.structure(second)
  assert all(x.shape == y.shape and x.dtype == y.dtype for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(second)))
  wider = abstract_variables(others[2], 32)
  assert wider['params']['classifier']['head_1']['kernel'].shape[-1] == 2


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('use_running_average', [False, True])
def test_batch_norm_is_bit_for_bit_flaxs(dtype, use_running_average):
  # resnet.BatchNorm writes flax's nn.BatchNorm out in fewer ops (its trace is faster); outputs, gradients and the
  # updated running statistics must be flax's exactly, so checkpoints and published figures do not move.
  ours = resnet.BatchNorm(use_running_average=use_running_average, dtype=dtype)
  flaxs = nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, epsilon=resnet.BN_EPSILON,
                       use_fast_variance=False, dtype=dtype)
  x = (3 + 2 * jax.random.normal(jax.random.key(0), (4, 5, 7, 6))).astype(dtype)
  init_ours, init_flax = ours.init(jax.random.key(1), x), flaxs.init(jax.random.key(1), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), init_ours) == jax.tree.map(lambda a: (a.shape, a.dtype),
                                                                               init_flax)
  k = jax.random.split(jax.random.key(2), 4)
  variables = {'params': {'scale': 1 + jax.random.normal(k[0], (6,)), 'bias': jax.random.normal(k[1], (6,))},
               'batch_stats': {'mean': jax.random.normal(k[2], (6,)), 'var': 1 + jax.random.uniform(k[3], (6,))}}

  def run(module):
    # The statistics are arguments, as in every step: closed over, they are constants that XLA folds, and its
    # constant folder's rsqrt can differ from the compiled one by an ulp depending on where the fold happens.
    def loss(params, stats, x):
      y, new = module.apply({'params': params, 'batch_stats': stats}, x, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, new)
    (value, (y, new)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))(
        variables['params'], variables['batch_stats'], x)
    return value, y, new, grads

  a, b = run(ours), run(flaxs)
  assert a[1].dtype == dtype
  for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(p, np.float32), np.asarray(q, np.float32))
  moved = not np.array_equal(a[2]['batch_stats']['mean'], variables['batch_stats']['mean'])
  assert moved != use_running_average  # updated from the batch in training mode only


@pytest.mark.parametrize('bn_frozen', [True, False])
def test_batch_norm_is_traced_once_per_shape(bn_frozen):
  # Every BatchNorm layer of equal input shape and mode binds the same traced `normalize`: the step's trace then
  # grows with the distinct shapes, not with the layers (docs/benchmarks.md, "BatchNorm traced once per shape").
  model = build_model(_cfg(bn_frozen=bn_frozen), (3, 2))
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    return sum(jnp.sum(o) for o in jax.tree.leaves(out))

  def normalize_eqns(jaxpr, found):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ('pjit', 'jit') and eqn.params['name'] == 'normalize':
        found.append((id(eqn.params['jaxpr']), eqn.invars[0].aval.shape))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        normalize_eqns(sub, found)
    return found

  layers = len(jax.tree.leaves(variables['batch_stats'])) // 2
  forward = normalize_eqns(jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables).jaxpr, [])
  assert len(forward) == layers
  shapes = {shape for _, shape in forward}
  assert len({j for j, _ in forward}) == len(shapes) < layers
  backward = normalize_eqns(jax.make_jaxpr(jax.grad(loss))(variables['params']).jaxpr, [])
  assert len(backward) == 2 * layers  # forward and transposed
  assert len({j for j, _ in backward}) <= 2 * len(shapes)


def test_param_shape_is_checked_without_flaxs_trace():
  conv = Conv(4, 3)
  x = jnp.zeros((1, 8, 8, 2))
  variables = conv.init(jax.random.key(0), x)
  with pytest.raises(flax.errors.ScopeParamShapeError, match=r'\(3, 3, 2, 4\)'):
    conv.apply(variables, jnp.zeros((1, 8, 8, 5)))  # a kernel for 2 input channels given 5


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_activations_are_jax_nns_bit_for_bit(dtype):
  # resnet's relu / leaky_relu are jax.nn's in lax (no nested jit to trace): the same values and gradients,
  # relu's gradient 0 at 0 included, and NaN / inf propagate as they do there (a non-finite step must stay one).
  x = jnp.asarray(np.r_[np.linspace(-3, 3, 61), 0.0, -0.0, np.inf, -np.inf, np.nan], dtype)
  for ours, theirs in [(resnet.relu, jax.nn.relu),
                       (resnet.leaky_relu, lambda v: jax.nn.leaky_relu(v, resnet.LEAKY_RELU_SLOPE))]:
    for f in (lambda v, a=ours: a(v), lambda v, a=theirs: a(v)):
      assert f(x).dtype == dtype
    grad = lambda a: jax.grad(lambda v: jnp.sum(a(v).astype(jnp.float32) * jnp.arange(x.size)))(x)
    for p, q in [(ours(x), theirs(x)), (jax.jit(ours)(x), jax.jit(theirs)(x)), (grad(ours), grad(theirs))]:
      np.testing.assert_array_equal(np.asarray(p, np.float32), np.asarray(q, np.float32))
      assert np.array_equal(np.signbit(np.asarray(p, np.float32)), np.signbit(np.asarray(q, np.float32)))
  assert resnet.ACTIVATIONS['relu'] is resnet.relu and resnet.ACTIVATIONS['leaky_relu'] is resnet.leaky_relu
