"""Tests for models/{pretrained,weight_files,resnet_names}.py and tools/convert_weights.py.

The reference network is an independent float64 NumPy ResNet written from the
torchvision and in-place-ABN definitions (NCHW, OIHW kernels, explicit
PyTorch paddings), addressed by the checkpoint's own key names; it shares no
code with the importer or with our Flax ResNet.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy

from incseg_jax.models import build_model, pretrained, resnet_names, weight_files
from incseg_jax.models.resnet import ResNet
from incseg_jax.tools import convert_weights

HAS_TORCH = importlib.util.find_spec('torch') is not None
requires_torch = pytest.mark.skipif(not HAS_TORCH, reason='needs torch')

SIZE = 33  # odd on purpose: PyTorch padding/ceil conventions show up
R50 = (3, 4, 6, 3)
EPS = 1e-5
# (stride, dilation) of layer1..4 per output stride; every block of a dilated
# stage uses the stage's dilation (in-place-ABN's _stride_dilation; see the
# resnet.py docstring), stride only in block 0.
STAGE_LAYOUT = {32: ((1, 2, 2, 2), (1, 1, 1, 1)),
                16: ((1, 2, 2, 1), (1, 1, 1, 2))}


# ---------------------------------------------------------------------------
# Key names, written from the two PyTorch definitions. stage 0 is the stem;
# layer is conv{k}, bn{k}, 'ds_conv' or 'ds_bn'.

def tv_name(stage, block, layer):
  if stage == 0:
    return layer  # conv1, bn1
  base = f'layer{stage}.{block}'
  return {'ds_conv': f'{base}.downsample.0', 'ds_bn': f'{base}.downsample.1'
          }.get(layer, f'{base}.{layer}')


def iabn_name(stage, block, layer):
  if stage == 0:
    return f'mod1.{layer}'
  base = f'mod{stage + 1}.block{block + 1}'
  return {'ds_conv': f'{base}.proj_conv', 'ds_bn': f'{base}.proj_bn'
          }.get(layer, f'{base}.convs.{layer}')


def random_state_dict(seed, name, stage_sizes=R50, width=64, bottleneck=True,
                      negative_scales=False):
  """Random ImageNet-ResNet state dict with the right names and shapes."""
  rng = np.random.default_rng(seed)
  sd = {}

  def conv(key, o, i, k):
    std = np.sqrt(2.0 / (i * k * k))
    sd[f'{key}.weight'] = (std * rng.standard_normal((o, i, k, k))).astype(
        np.float32)

  def bn(key, c):
    w = rng.uniform(0.5, 1.5, c)
    if negative_scales:  # in-place ABN uses |weight| + eps
      w *= rng.choice([-1.0, 1.0], c)
    sd[f'{key}.weight'] = w.astype(np.float32)
    sd[f'{key}.bias'] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f'{key}.running_mean'] = rng.normal(0, 0.1, c).astype(np.float32)
    sd[f'{key}.running_var'] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    sd[f'{key}.num_batches_tracked'] = np.array(1234, np.int64)

  conv(name(0, 0, 'conv1'), width, 3, 7)
  bn(name(0, 0, 'bn1'), width)
  cin = width
  for s, n in enumerate(stage_sizes, 1):
    mid = width * 2**(s - 1)
    out = 4 * mid if bottleneck else mid
    for b in range(n):
      layers = ([('conv1', cin, 1), ('conv2', mid, 3), ('conv3', mid, 1)]
                if bottleneck else [('conv1', cin, 3), ('conv2', mid, 3)])
      for k, (conv_name, cin_k, ksize) in enumerate(layers, 1):
        cout = out if k == len(layers) else mid
        conv(name(s, b, conv_name), cout, cin_k, ksize)
        bn(name(s, b, f'bn{k}'), cout)
      if b == 0 and (s > 1 or cin != out):
        conv(name(s, b, 'ds_conv'), out, cin, 1)
        bn(name(s, b, 'ds_bn'), out)
      cin = out
  fc = 'fc' if name is tv_name else 'classifier.fc'
  sd[f'{fc}.weight'] = rng.normal(0, 0.01, (1000, cin)).astype(np.float32)
  sd[f'{fc}.bias'] = np.zeros(1000, np.float32)
  return sd


# ---------------------------------------------------------------------------
# float64 NumPy reference (NCHW).

def np_conv(x, w, stride, padding, dilation=1):
  """torch.nn.functional.conv2d (no bias) by summing kernel taps."""
  w = w.astype(np.float64)
  n, _, h, wd = x.shape
  o, _, kh, kw = w.shape
  xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
  ow = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros((n, o, oh, ow))
  for a in range(kh):
    for b in range(kw):
      i0, j0 = a * dilation, b * dilation
      patch = xp[:, :, i0:i0 + stride * (oh - 1) + 1:stride,
                 j0:j0 + stride * (ow - 1) + 1:stride]
      out += np.einsum('nchw,oc->nohw', patch, w[:, :, a, b])
  return out


def np_bn(sd, key, x, iabn):
  """Eval-mode BatchNorm; in-place ABN scales by |weight| + eps."""
  c = lambda v: sd[f'{key}.{v}'].astype(np.float64)[None, :, None, None]
  w = np.abs(c('weight')) + EPS if iabn else c('weight')
  return (x - c('running_mean')) / np.sqrt(c('running_var') + EPS) * w + c(
      'bias')


def np_act(x, slope):
  return np.where(x >= 0, x, slope * x)


def np_maxpool(x):
  """MaxPool2d(3, stride=2, padding=1): padding never wins (-inf)."""
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  oh, ow = (x.shape[2] - 1) // 2 + 1, (x.shape[3] - 1) // 2 + 1
  out = np.full(x.shape[:2] + (oh, ow), -np.inf)
  for a in range(3):
    for b in range(3):
      out = np.maximum(out, xp[:, :, a:a + 2 * (oh - 1) + 1:2,
                               b:b + 2 * (ow - 1) + 1:2])
  return out


def np_stem(sd, name, x, slope, iabn):
  y = np_conv(x, sd[f'{name(0, 0, "conv1")}.weight'], 2, 3)
  return np_maxpool(np_act(np_bn(sd, name(0, 0, 'bn1'), y, iabn), slope))


def np_block(sd, name, s, b, x, stride, dil, slope, iabn):
  """torchvision Bottleneck/BasicBlock == in-place-ABN ResidualBlock."""
  key = lambda layer: name(s, b, layer)
  bn = lambda layer, y: np_bn(sd, key(layer), y, iabn)
  w = lambda layer: sd[f'{key(layer)}.weight']
  if f'{key("conv3")}.weight' in sd:  # bottleneck: stride on the 3x3
    y = np_act(bn('bn1', np_conv(x, w('conv1'), 1, 0)), slope)
    y = np_act(bn('bn2', np_conv(y, w('conv2'), stride, dil, dil)), slope)
    y = bn('bn3', np_conv(y, w('conv3'), 1, 0))
  else:
    y = np_act(bn('bn1', np_conv(x, w('conv1'), stride, dil, dil)), slope)
    y = bn('bn2', np_conv(y, w('conv2'), 1, dil, dil))
  if f'{key("ds_conv")}.weight' in sd:
    x = bn('ds_bn', np_conv(x, w('ds_conv'), stride, 0))
  pre = y + x
  return np_act(pre, slope), pre


def np_resnet(sd, name, x, stage_sizes, output_stride, slope, iabn):
  """Stage outputs and last pre-activations, NCHW."""
  strides, dilations = STAGE_LAYOUT[output_stride]
  x = np_stem(sd, name, x, slope, iabn)
  stages, pres = [], []
  for s, n in enumerate(stage_sizes, 1):
    for b in range(n):
      x, pre = np_block(sd, name, s, b, x, strides[s - 1] if b == 0 else 1,
                        dilations[s - 1], slope, iabn)
    stages.append(x)
    pres.append(pre)
  return stages, pres


def nchw(x):
  return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def assert_close(ours, ref, what, rtol=1e-4):
  """float32 vs float64: relative, with atol scaled to the output's range."""
  ours = nchw(ours)
  assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
  np.testing.assert_allclose(ours, ref, rtol=rtol,
                             atol=rtol * np.abs(ref).max(), err_msg=what)


def run_backbone(backbone_vars, x, **kw):
  """Our ResNet in eval mode, plus every submodule's output."""
  out, state = ResNet(**kw).apply(backbone_vars, x, train=False,
                                  capture_intermediates=True,
                                  mutable=['intermediates'])
  return out, state['intermediates']


# ---------------------------------------------------------------------------
# Fixtures.

def model_cfg(**kw):
  cfg = ml_collections.ConfigDict({
      'backbone': 'resnet50', 'decoder': 'deeplab_v3', 'output_stride': 32,
      'aspp_channels': 8, 'atrous_rates': None, 'bn_frozen': False,
      'activation': 'relu'})
  cfg.update(kw)
  return cfg


def abstract_variables(cfg, classes=(2,)):
  model = build_model(cfg, classes)
  x = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda r, x: model.init(r, x, train=False),
                        jax.random.key(0), x)


@pytest.fixture(scope='module')
def r50_sd():
  return random_state_dict(0, tv_name)


@pytest.fixture(scope='module')
def r50_files(r50_sd, tmp_path_factory):
  d = tmp_path_factory.mktemp('r50')
  npz, st = str(d / 'r50.npz'), str(d / 'r50.safetensors')
  # DataParallel-style names in one of them: load_state_dict strips them.
  np.savez(npz, **{f'module.{k}': v for k, v in r50_sd.items()})
  safetensors.numpy.save_file(r50_sd, st)
  return {'npz': npz, 'safetensors': st}


@pytest.fixture(scope='module')
def r50_abstract():
  return abstract_variables(model_cfg())


def backbone_of(variables):
  return {c: variables[c]['backbone'] for c in ('params', 'batch_stats')}


# ---------------------------------------------------------------------------
# Loading and the full ResNet-50.

def test_load_state_dict_formats_agree(r50_sd, r50_files):
  for path in r50_files.values():
    sd = weight_files.load_state_dict(path)
    assert set(sd) == set(r50_sd), path
    for k, v in r50_sd.items():
      np.testing.assert_array_equal(sd[k], v, err_msg=k)
  assert resnet_names.detect_layout(sd) == 'torchvision'


def test_torchvision_resnet50_matches_numpy(r50_sd, r50_files, r50_abstract):
  cfg = model_cfg()
  pretrained.validate(r50_files['safetensors'], cfg)
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), r50_abstract)
  loaded = pretrained.load_into(variables, r50_files['npz'], cfg)

  # Decoder and classifier are untouched (same objects), BN stats imported.
  for c in ('params', 'batch_stats'):
    for k in variables[c]:
      if k != 'backbone':
        old, new = jax.tree.leaves(variables[c][k]), jax.tree.leaves(
            loaded[c][k])
        assert len(old) == len(new) and all(
            a is b for a, b in zip(old, new)), (c, k)
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  bb = backbone_of(loaded)
  np.testing.assert_array_equal(
      bb['batch_stats']['stage3']['block5']['bn2']['var'],
      r50_sd['layer3.5.bn2.running_var'])
  np.testing.assert_array_equal(
      bb['params']['stage2']['block0']['downsample_conv']['kernel'][0, 0],
      r50_sd['layer2.0.downsample.0.weight'][:, :, 0, 0].T)

  x = np.random.default_rng(1).standard_normal((1, SIZE, SIZE, 3)).astype(
      np.float32)
  for output_stride in (32, 16):
    out, inter = run_backbone(bb, x, stage_sizes=R50,
                              output_stride=output_stride)
    if output_stride == 32:
      # Stem alone, then one bottleneck with downsample fed our own stage1
      # output, so each comparison isolates one piece.
      assert_close(inter['stem']['__call__'][0],
                   np_stem(r50_sd, tv_name, nchw(x), 0.0, False), 'stem')
      block_in = nchw(out['stages'][0])
      got, got_pre = inter['stage2']['block0']['__call__'][0]
      ref, ref_pre = np_block(r50_sd, tv_name, 2, 0, block_in, 2, 1, 0.0,
                              False)
      assert_close(got, ref, 'stage2/block0')
      assert_close(got_pre, ref_pre, 'stage2/block0 pre-activation')
    stages, pres = np_resnet(r50_sd, tv_name, nchw(x), R50, output_stride,
                             0.0, False)
    for i in range(4):
      assert_close(out['stages'][i], stages[i], f'OS{output_stride} stage{i}')
      assert_close(out['stages_pre'][i], pres[i],
                   f'OS{output_stride} stage{i} pre')
    hw = {32: 2, 16: 3}[output_stride]  # ceil(33 / OS)
    assert out['encoder'].shape == (1, hw, hw, 2048)


# ---------------------------------------------------------------------------
# Reduced networks: in-place-ABN bottlenecks (leaky ReLU, |w|+eps) and
# torchvision basic blocks.

@pytest.mark.parametrize('layout,bottleneck', [('iabn', True),
                                                ('torchvision', False)])
def test_reduced_resnet_matches_numpy(layout, bottleneck):
  name = iabn_name if layout == 'iabn' else tv_name
  stage_sizes, width = (1, 2, 1, 1), 16
  iabn = layout == 'iabn'
  sd = random_state_dict(2, name, stage_sizes, width, bottleneck,
                         negative_scales=iabn)
  slope = 0.01 if iabn else 0.0
  kw = dict(block='bottleneck' if bottleneck else 'basic',
            stage_sizes=stage_sizes, width=width,
            activation='leaky_relu' if iabn else 'relu')
  x = np.random.default_rng(3).standard_normal((1, SIZE, SIZE, 3)).astype(
      np.float32)
  abstract = jax.eval_shape(
      lambda r: ResNet(output_stride=16, **kw).init(r, x, train=False),
      jax.random.key(0))
  assert resnet_names.detect_layout(sd) == layout
  bb = resnet_names.import_backbone(sd, abstract, arch='reduced')
  assert jax.tree.structure(bb) == jax.tree.structure(abstract)

  # Values land where the PyTorch definition puts them.
  p, stats = bb['params'], bb['batch_stats']
  conv2 = sd[f'{name(3, 0, "conv2")}.weight']
  np.testing.assert_array_equal(p['stage3']['block0']['conv2']['kernel'],
                                conv2.transpose(2, 3, 1, 0))
  ds_bn = name(2, 0, 'ds_bn')
  scale = sd[f'{ds_bn}.weight']
  np.testing.assert_allclose(
      p['stage2']['block0']['downsample_bn']['scale'],
      np.abs(scale) + EPS if iabn else scale, rtol=1e-7)
  np.testing.assert_array_equal(p['stage2']['block0']['downsample_bn']['bias'],
                                sd[f'{ds_bn}.bias'])
  np.testing.assert_array_equal(stats['stage2']['block0']['downsample_bn'][
      'mean'], sd[f'{ds_bn}.running_mean'])
  np.testing.assert_array_equal(stats['stem']['bn']['var'],
                                sd[f'{name(0, 0, "bn1")}.running_var'])
  np.testing.assert_array_equal(stats['stage2']['block1']['bn1']['var'],
                                sd[f'{name(2, 1, "bn1")}.running_var'])
  if iabn:
    assert (sd[f'{ds_bn}.weight'] < 0).any()  # the |w| path is exercised

  for output_stride in (32, 16):
    out, _ = run_backbone(bb, x, output_stride=output_stride, **kw)
    stages, pres = np_resnet(sd, name, nchw(x), stage_sizes, output_stride,
                             slope, iabn)
    for i in range(4):
      assert_close(out['stages'][i], stages[i], f'OS{output_stride} stage{i}')
      assert_close(out['stages_pre'][i], pres[i],
                   f'OS{output_stride} stage{i} pre')
    if iabn:  # leaky ReLU actually mattered
      assert (nchw(out['stages'][3]) < 0).any()


# ---------------------------------------------------------------------------
# Errors.

def test_one_error_lists_every_problem(r50_sd, r50_abstract):
  sd = dict(r50_sd)
  del sd['layer2.0.downsample.1.running_var']
  sd['layer1.0.conv4.weight'] = np.zeros((64, 64, 1, 1), np.float32)
  sd['layer3.1.conv2.weight'] = np.zeros((256, 256, 1, 1), np.float32)
  sd['layer1.1.bn1.running_var'] = -sd['layer1.1.bn1.running_var']
  with pytest.raises(ValueError) as e:
    resnet_names.import_backbone(sd, backbone_of(r50_abstract), arch='resnet50')
  msg = str(e.value)
  assert 'layer2.0.downsample.1.running_var (512,)' in msg
  assert 'layer1.0.conv4.weight (64, 64, 1, 1)' in msg
  assert ('layer3.1.conv2.weight: file (256, 256, 1, 1) vs model '
          '(256, 256, 3, 3)') in msg
  assert 'layer1.1.bn1.running_var: negative' in msg
  assert 'depth' not in msg  # same depth, only those four problems


def test_resnet50_file_into_resnet101(r50_files):
  with pytest.raises(ValueError) as e:
    pretrained.validate(r50_files['npz'], model_cfg(backbone='resnet101'))
  msg = str(e.value)
  assert 'the file is a ResNet-50' in msg and 'needs a ResNet-101' in msg
  assert 'blocks missing from the file: layer3.6, layer3.7,' in msg
  assert 'layer3.22' in msg and 'layer3.23' not in msg
  assert 'layer3.22.conv3.weight (1024, 256, 1, 1)' in msg
  assert "'resnet101'" in msg and 'r50.npz' in msg


def test_file_errors(tmp_path):
  missing = str(tmp_path / 'nope.npz')
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    weight_files.load_state_dict(missing)
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    pretrained.validate(missing, model_cfg())
  h5 = tmp_path / 'weights.h5'
  h5.write_bytes(b'x')
  with pytest.raises(ValueError, match=r'weights\.h5.*unknown extension.*'
                     r'\.pth.*\.safetensors.*\.npz'):
    weight_files.load_state_dict(str(h5))
  for ext in ('npz', 'safetensors'):
    bad = tmp_path / f'garbage.{ext}'
    bad.write_bytes(b'not a weights file')
    with pytest.raises(ValueError, match=rf'cannot read .*garbage\.{ext}'):
      weight_files.load_state_dict(str(bad))


def test_unknown_layout(tmp_path):
  path = str(tmp_path / 'other.npz')
  np.savez(path, **{'encoder.0.weight': np.zeros(3, np.float32),
                    'head.weight': np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r'other\.npz.*unknown ResNet '
                     r"checkpoint layout.*'encoder.0.weight'"):
    pretrained.validate(path, model_cfg())


def test_activation_must_match_layout(tmp_path, r50_files):
  path = str(tmp_path / 'iabn.safetensors')
  safetensors.numpy.save_file(
      random_state_dict(4, iabn_name, (1, 1, 1, 1), 8), path)
  with pytest.raises(ValueError, match=r'iabn\.safetensors.*in-place-ABN.*'
                     r'leaky ReLU \(negative slope 0\.01\).*'
                     r'--config\.model\.activation=leaky_relu'):
    pretrained.validate(path, model_cfg(activation='relu'))
  with pytest.raises(ValueError, match=r'torchvision.*ReLU.*'
                     r'--config\.model\.activation=relu'):
    pretrained.validate(r50_files['npz'], model_cfg(activation='leaky_relu'))


def test_resnet_small_takes_torchvision_files_that_fit(r50_files, tmp_path):
  # resnet_small takes torchvision-layout files (python -m incseg_jax.pretrain writes them, see
  # pretrain_test.py); an ImageNet ResNet-50 does not fit it, and the error says how.
  with pytest.raises(ValueError, match=r"does not fit the 'resnet_small' backbone:\n  depth: the file is a ResNet-50"):
    pretrained.validate(r50_files['npz'], model_cfg(backbone='resnet_small'))
  path = str(tmp_path / 'iabn.npz')
  np.savez(path, **random_state_dict(1, iabn_name, stage_sizes=(1, 1, 1, 1)))
  with pytest.raises(ValueError, match=r"resnet_small' takes only torchvision-layout weights"):
    pretrained.validate(path, model_cfg(backbone='resnet_small', activation='leaky_relu'))


@pytest.mark.skipif(HAS_TORCH, reason='torch is installed')
def test_torch_file_without_torch(tmp_path):
  path = tmp_path / 'resnet101_iabn_sync.pth.tar'
  path.write_bytes(b'x')
  with pytest.raises(ValueError) as e:
    weight_files.load_state_dict(str(path))
  msg = str(e.value)
  assert 'resnet101_iabn_sync.pth.tar' in msg and 'torch' in msg
  assert weight_files.TORCH_TO_NPZ_COMMAND in msg


# ---------------------------------------------------------------------------
# Conversion tool.

def test_convert_weights_tool(r50_files, r50_sd, tmp_path, capsys):
  out = str(tmp_path / 'converted.safetensors')
  assert convert_weights.main([r50_files['npz'], out]) == 0
  assert 'torchvision layout' in capsys.readouterr().out
  sd = safetensors.numpy.load_file(out)
  assert set(sd) == set(r50_sd)  # 'module.' stripped, nothing dropped
  np.testing.assert_array_equal(sd['layer4.2.conv3.weight'],
                                r50_sd['layer4.2.conv3.weight'])
  assert convert_weights.main([r50_files['npz'], str(tmp_path / 'x.h5')]) == 1
  assert '.npz, .safetensors' in capsys.readouterr().err
  # The README's torch+numpy one-liner is the one the errors print.
  assert weight_files.TORCH_TO_NPZ_COMMAND in convert_weights.__doc__


@requires_torch
def test_torch_checkpoint(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  sd = random_state_dict(5, iabn_name, (1, 1, 1, 1), 8)
  path = str(tmp_path / 'resnet_iabn_sync.pth.tar')
  # MiB's file: {'state_dict': {'module.mod1.conv1.weight': ...}, ...}.
  torch.save({'state_dict': {f'module.{k}': torch.from_numpy(v)
                             for k, v in sd.items()}, 'epoch': 90}, path)
  loaded = weight_files.load_state_dict(path)
  assert set(loaded) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)

  npz = str(tmp_path / 'tool.npz')
  assert convert_weights.main([path, npz]) == 0
  one_liner = str(tmp_path / 'one_liner.npz')
  cmd = weight_files.TORCH_TO_NPZ_COMMAND.replace('IN.pth', path).replace(
      'OUT.npz', one_liner).replace('python -c', f'{sys.executable} -c', 1)
  subprocess.run(cmd, shell=True, check=True, env=dict(os.environ))
  for converted in (npz, one_liner):
    got = weight_files.load_state_dict(converted)
    assert set(got) == set(sd), converted
    for k, v in sd.items():
      np.testing.assert_array_equal(got[k], v, err_msg=k)
