"""ResNet checkpoint names -> our backbone's variable paths (torchvision and in-place-ABN layouts).

Two checkpoint layouts are recognised:

* torchvision: `conv1`, `bn1`, `layer{s}.{i}.{conv,bn}{k}`,
  `layer{s}.{i}.downsample.{0,1}` (and the ImageNet head `fc`).
* in-place-ABN (`resnet101_iabn_sync.pth.tar`, the weights MiB/PLOP/UCD
  start from; mapillary/inplace_abn `scripts/models/resnet.py` with
  `modules/residual.py:ResidualBlock`, copied verbatim by MiB and PLOP):
  `mod1.{conv1,bn1}`, `mod{s+1}.block{i+1}.convs.{conv,bn}{k}`,
  `mod{s+1}.block{i+1}.proj_{conv,bn}` (and the head `classifier.fc`),
  usually nested under `state_dict` with a `module.` prefix.

Both are post-activation ResNets with the stride on the 3x3 conv and a strided
1x1 projection, exactly our `Bottleneck`/`BasicBlock`, so every tensor has
exactly one destination: stem/{conv,bn},
stage{s}/block{i-1}/{conv,bn}{k}, .../downsample_{conv,bn}. Convs go from
OIHW to HWIO; BatchNorm `weight/bias` go to `params` `scale/bias` and
`running_mean/running_var` to `batch_stats` `mean/var`.

Two in-place-ABN details change the numbers and are reproduced here:

* Every nonlinearity is leaky ReLU with slope 0.01 (bn1/bn2 of each block,
  the stem BN, and the activation after the residual add; bn3 and proj_bn are
  'identity' because the add follows them). Our ResNet does the same with
  `model.activation='leaky_relu'`, so importing an in-place-ABN file with
  any other activation is an error.
* In-place ABN scales by `|weight| + eps` instead of `weight` (that keeps
  the affine map invertible; `inplace_abn.functions.inplace_abn` documents
  `x <- act(x_hat) * (|weight| + eps) + bias` and every CPU/CUDA kernel
  since v0.1 computes it), so the imported `scale` is `|weight| + 1e-5`.
  Eval-mode outputs then match exactly; under fine-tuning SGD on our
  `scale` equals SGD on in-place-ABN's `weight` as long as the sign of
  `weight` does not flip.

Dilation: both in-place-ABN (`ResNet._stride_dilation`) and our ResNet give
every block of a dilated stage the stage's dilation; torchvision's
`replace_stride_with_dilation` keeps the previous dilation in the first
block of the stage, so torchvision weights at OS8/OS16 run under the
in-place-ABN/DeepLab convention, which is what MiB-style code does anyway.

`resnet_small` (no ImageNet checkpoint exists) takes torchvision-layout files
only: `python -m incseg_jax.pretrain` writes them with `export_backbone`, the
exact inverse of `import_backbone` for that layout.

Reading and writing the files themselves is `weight_files`' job; `pretrained` joins the two for a model config.
"""

import re
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np
from flax import traverse_util

LAYOUTS = ('torchvision', 'iabn')
# The activation each layout's ImageNet training used (see module doc).
LAYOUT_ACTIVATION = {'torchvision': 'relu', 'iabn': 'leaky_relu'}
# BatchNorm epsilon of torchvision, in-place ABN and our ResNet alike.
BN_EPS = 1e-5
_MAX_LISTED_KEYS = 8  # keys shown when a layout is not recognised

# (blocks per stage, bottleneck) -> name, to say what a file is.
_KNOWN_DEPTHS = {
    ((2, 2, 2, 2), False): 'ResNet-18',
    ((3, 4, 6, 3), False): 'ResNet-34',
    ((3, 4, 6, 3), True): 'ResNet-50',
    ((3, 4, 23, 3), True): 'ResNet-101',
    ((3, 8, 36, 3), True): 'ResNet-152',
}
_BLOCK_RE = {
    'torchvision': re.compile(r'^layer([1-4])\.(\d+)\.'),
    'iabn': re.compile(r'^mod([2-5])\.block(\d+)\.'),
}


def detect_layout(state_dict: Mapping[str, Any], *, source: str = 'state dict'
                  ) -> str:
  """'torchvision' or 'iabn' (in-place-ABN) from the key names.

  Raises:
    ValueError: neither or both layouts match; the message shows some keys.
  """
  keys = list(state_dict)
  tv = any(k == 'conv1.weight' or k.startswith('layer1.') for k in keys)
  iabn = any(k.startswith(('mod1.', 'mod2.')) for k in keys)
  if tv != iabn:
    return 'torchvision' if tv else 'iabn'
  shown = sorted(keys)[:_MAX_LISTED_KEYS]
  more = f' ... ({len(keys)} keys)' if len(keys) > len(shown) else ''
  what = ('mixes torchvision and in-place-ABN key names' if tv else
          'has an unknown ResNet checkpoint layout')
  raise ValueError(
      f'{source} {what}: expected either torchvision keys (conv1.weight, '
      'layer1.0.conv1.weight, ...) or in-place-ABN keys (mod1.conv1.weight, '
      f'mod2.block1.convs.conv1.weight, ...); first keys: {shown}{more}')


def _module_prefix(layout: str, module: tuple[str, ...]) -> str:
  """File-side name of one of our backbone modules (conv or BN)."""
  if module in (('stem', 'conv'), ('stem', 'bn')):
    name = {'conv': 'conv1', 'bn': 'bn1'}[module[1]]
    return name if layout == 'torchvision' else f'mod1.{name}'
  m = (re.fullmatch(r'stage([1-4])', module[0]) if len(module) == 3 else None)
  b = re.fullmatch(r'block(\d+)', module[1]) if m else None
  if not (m and b):
    raise ValueError(f'backbone_vars has a module {"/".join(module)} that no '
                     'ResNet checkpoint has (is it a ResNet backbone subtree?)')
  stage, block, layer = int(m.group(1)), int(b.group(1)), module[2]
  if layout == 'torchvision':
    base, convs = f'layer{stage}.{block}', ''
    sub = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
  else:  # in-place ABN numbers modules and blocks from 1, stem is mod1
    base, convs = f'mod{stage + 1}.block{block + 1}', 'convs.'
    sub = {'downsample_conv': 'proj_conv', 'downsample_bn': 'proj_bn'}
  if layer in sub:
    return f'{base}.{sub[layer]}'
  if re.fullmatch(r'(conv|bn)[1-3]', layer):
    return f'{base}.{convs}{layer}'
  raise ValueError(f'backbone_vars has a module {"/".join(module)} that no '
                   'ResNet checkpoint has (is it a ResNet backbone subtree?)')


# our leaf name -> (file suffix, kind)
_LEAVES = {
    ('params', 'kernel'): ('weight', 'conv'),
    ('params', 'scale'): ('weight', 'bn_scale'),
    ('params', 'bias'): ('bias', 'bn_bias'),
    ('batch_stats', 'mean'): ('running_mean', 'bn_mean'),
    ('batch_stats', 'var'): ('running_var', 'bn_var'),
}


def _plan(backbone_vars, layout):
  """{file key: (collection, our path, expected file shape, dtype, kind)}."""
  plan = {}
  for collection in ('params', 'batch_stats'):
    tree = flax.core.unfreeze(backbone_vars.get(collection, {}))
    for path, leaf in traverse_util.flatten_dict(tree).items():
      if (collection, path[-1]) not in _LEAVES:
        raise ValueError(f'backbone_vars has {collection}/{"/".join(path)}, '
                         'which no ResNet checkpoint has')
      suffix, kind = _LEAVES[(collection, path[-1])]
      shape = tuple(leaf.shape)
      if kind == 'conv':  # ours HWIO, torch OIHW
        shape = (shape[3], shape[2], shape[0], shape[1])
      key = f'{_module_prefix(layout, path[:-1])}.{suffix}'
      plan[key] = (collection, path, shape, leaf.dtype, kind)
  return plan


def _dropped(key: str) -> bool:
  """ImageNet classifier and BN counters: present in the files, not wanted."""
  return (key.startswith(('fc.', 'classifier.'))
          or key.endswith('.num_batches_tracked'))


def _file_depth(keys, layout):
  """(blocks per stage, bottleneck?) of a checkpoint, from its key names."""
  counts = [0, 0, 0, 0]
  first_stage = 1 if layout == 'torchvision' else 2
  for key in keys:
    m = _BLOCK_RE[layout].match(key)
    if m:
      s = int(m.group(1)) - first_stage
      # torchvision counts blocks from 0, in-place ABN from 1.
      counts[s] = max(counts[s], int(m.group(2)) + (layout == 'torchvision'))
  bottleneck = any('conv3.' in k for k in keys)
  return tuple(counts), bottleneck


def _describe_depth(depth):
  counts, bottleneck = depth
  name = _KNOWN_DEPTHS.get(depth)
  kind = 'bottleneck' if bottleneck else 'basic'
  desc = f'blocks per stage {counts}, {kind} blocks'
  return f'a {name} ({desc})' if name else f'a ResNet with {desc}'


def _natural(key):
  """Sort key that puts layer3.9 before layer3.10."""
  return [(0, int(t), '') if t.isdigit() else (1, 0, t)
          for t in re.findall(r'\d+|\D+', key)]


def _block_of(key, layout):
  m = _BLOCK_RE[layout].match(key)
  return m.group(0)[:-1] if m else None


def _whole_blocks(keys, all_keys, layout):
  """Blocks all of whose keys (in `all_keys`) are among `keys`."""
  keys = set(keys)
  by_block = {}
  for k in all_keys:
    block = _block_of(k, layout)
    if block:
      by_block.setdefault(block, set()).add(k)
  return sorted((b for b, ks in by_block.items() if ks <= keys), key=_natural)


def check_fit(state_dict, backbone_vars, *, arch, layout, source):
  """Checks every key, shape and value of `state_dict` against `backbone_vars`.

  Args:
    state_dict: flat `{name: array}`, as for `import_backbone`.
    backbone_vars: our backbone's variables or their `jax.eval_shape`.
    arch: the model's backbone name ('resnet_small' takes the torchvision
      layout only, see `check_arch`).
    layout: 'torchvision' or 'iabn'; None detects it from the keys.
    source: what to call the state dict in messages.

  Returns:
    (plan, layout): `{file key: (collection, our path, file shape, dtype,
    kind)}` and the layout used (detected when `layout` is None).

  Raises:
    ValueError: one error that lists every problem (see `import_backbone`).
  """
  if layout is None:
    layout = detect_layout(state_dict, source=source)
  check_arch(arch, layout, source=source)
  plan = _plan(backbone_vars, layout)
  present = {k: v for k, v in state_dict.items() if not _dropped(k)}
  missing = sorted(set(plan) - set(present), key=_natural)
  surplus = sorted(set(present) - set(plan), key=_natural)
  mismatched, bad_values = [], []
  for key in sorted(set(plan) & set(present), key=_natural):
    _, _, shape, _, kind = plan[key]
    value = np.asarray(present[key])
    if tuple(value.shape) != shape:
      mismatched.append(f'{key}: file {tuple(value.shape)} vs model {shape}')
    elif not np.issubdtype(value.dtype, np.floating):
      bad_values.append(f'{key}: dtype {value.dtype} is not floating point')
    elif not np.all(np.isfinite(value)):
      bad_values.append(f'{key}: has non-finite values')
    elif kind == 'bn_var' and np.any(value < 0):
      bad_values.append(f'{key}: negative running variance')
  if not (missing or surplus or mismatched or bad_values):
    return plan, layout

  lines = [f'{source} ({layout} layout) does not fit the '
           f'{arch!r} backbone:']
  file_depth = _file_depth(present, layout)
  model_depth = _file_depth(plan, layout)
  if file_depth != model_depth:
    lines.append(f'  depth: the file is {_describe_depth(file_depth)}; the '
                 f'model needs {_describe_depth(model_depth)}.')
  whole_missing = _whole_blocks(missing, plan, layout)
  whole_surplus = _whole_blocks(surplus, present, layout)
  if whole_missing:
    lines.append(f'  blocks missing from the file: {", ".join(whole_missing)}')
  if whole_surplus:
    lines.append('  blocks the model does not have: '
                 f'{", ".join(whole_surplus)}')
  sections = (
      ('missing keys (shape the model needs)', [f'{k} {plan[k][2]}' for k in missing]),
      ('surplus keys (shape in the file)', [f'{k} {tuple(np.shape(present[k]))}' for k in surplus]),
      ('shape mismatches', mismatched),
      ('bad values', bad_values))
  for title, items in sections:
    if items:
      lines.append(f'  {len(items)} {title}:')
      lines += [f'    {item}' for item in items]
  raise ValueError('\n'.join(lines))


def check_arch(arch, layout=None, *, source='the weights file'):
  """Refuses a layout the backbone cannot take.

  'resnet_small' has no ImageNet checkpoint; it takes torchvision-layout files
  (its BasicBlock names are torchvision's), which is what
  `python -m incseg_jax.pretrain` writes. Whether such a file fits its width
  and depth is `check_fit`'s shape check. `layout=None` (not known yet) passes.
  """
  if arch == 'resnet_small' and layout not in (None, 'torchvision'):
    raise ValueError(
        f"model.backbone='resnet_small' takes only torchvision-layout weights "
        f'(conv1.weight, layer1.0.conv1.weight, ...: what python -m '
        f'incseg_jax.pretrain writes), but {source} has the {layout} layout; '
        'use a resnet18/34/50/101 backbone for it or leave config.pretrained '
        'empty.')


def import_backbone(state_dict: Mapping[str, np.ndarray], backbone_vars: dict,
                    *, arch: str, layout: str | None = None,
                    source: str = 'state dict') -> dict:
  """Maps a ResNet state dict onto our backbone variables.

  Args:
    state_dict: flat `{name: array}` (`weight_files.load_state_dict`'s output). The ImageNet classifier
      (`fc.*`, `classifier.*`) and `*.num_batches_tracked` are dropped; every other key must be used.
    backbone_vars: `{'params': ..., 'batch_stats': ...}` of our backbone
      (the `backbone` subtrees of the model's variables). Only shapes and
      dtypes are read, so `jax.eval_shape` output works.
    arch: the model's backbone name, for messages ('resnet_small' takes the
      torchvision layout only, see `check_arch`).
    layout: 'torchvision' or 'iabn'; None detects it from the keys.
    source: what to call the state dict in messages (e.g. its path).

  Returns:
    A new `{'params': ..., 'batch_stats': ...}` with the structure, shapes
    and dtypes of `backbone_vars`, as NumPy arrays.

  Raises:
    ValueError: unknown layout, or one error that lists every missing key,
      surplus key, shape mismatch and bad value (with names and shapes, and
      which blocks are missing or surplus when the depths differ).
  """
  plan, layout = check_fit(state_dict, backbone_vars, arch=arch, layout=layout,
                           source=source)
  flat = {'params': {}, 'batch_stats': {}}
  for key, (collection, path, _, dtype, kind) in plan.items():
    value = np.asarray(state_dict[key])
    if kind == 'conv':
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif kind == 'bn_scale' and layout == 'iabn':
      # In-place ABN multiplies by |weight| + eps (see module doc).
      value = np.abs(value) + BN_EPS
    flat[collection][path] = np.ascontiguousarray(value, dtype=dtype)
  return {c: traverse_util.unflatten_dict(f) for c, f in flat.items()}


def export_backbone(backbone_vars: dict, *, layout: str = 'torchvision'
                    ) -> dict[str, np.ndarray]:
  """Our backbone variables -> a flat torchvision state dict (the inverse of `import_backbone`).

  Every tensor goes to the one key `import_backbone` reads it from, convs
  from HWIO back to OIHW, BatchNorm `scale/bias` to `weight/bias` and
  `mean/var` to `running_mean/running_var`; values and dtypes are unchanged,
  so importing the result gives back bit-identical variables. No `fc.*` and
  no `num_batches_tracked` (the importer drops both anyway).

  Args:
    backbone_vars: `{'params': ..., 'batch_stats': ...}` of our backbone
      (the `backbone` subtrees of a model's variables), as arrays.
    layout: 'torchvision' only: in-place ABN keeps `|weight| + eps` as our
      scale, which loses the sign of `weight`, so no file of that layout
      could be written that imports back exactly.

  Returns:
    `{key: np.ndarray}` in natural key order (conv1, bn1, layer1.0..., ...).

  Raises:
    ValueError: another layout, or a variable no ResNet checkpoint has.
  """
  if layout != 'torchvision':
    raise ValueError(f'export_backbone writes the torchvision layout only, '
                     f'not {layout!r} (see its docstring)')
  flat = {c: traverse_util.flatten_dict(
              flax.core.unfreeze(backbone_vars.get(c, {})))
          for c in ('params', 'batch_stats')}
  out = {}
  for key, (collection, path, _, _, kind) in sorted(
      _plan(backbone_vars, layout).items(), key=lambda kv: _natural(kv[0])):
    value = np.asarray(flat[collection][path])
    if kind == 'conv':
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    out[key] = np.ascontiguousarray(value)
  return out


def check_activation(layout: str, activation: str, *, source: str) -> None:
  """Refuses weights whose ImageNet nonlinearity differs from the model's."""
  expected = LAYOUT_ACTIVATION[layout]
  if activation == expected:
    return
  if layout == 'iabn':
    raise ValueError(
        f'{source} is an in-place-ABN checkpoint (mod1.*, mod2.block1.convs.*):'
        ' those ResNets were trained with leaky ReLU (negative slope 0.01) '
        'after every BatchNorm and residual add, so the model needs '
        f'--config.model.activation=leaky_relu (it has {activation!r}).')
  raise ValueError(
      f'{source} is a torchvision-layout checkpoint, trained with ReLU, so the '
      f'model needs --config.model.activation=relu (it has {activation!r}).')
