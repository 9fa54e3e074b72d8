"""ImageNet-pretrained ResNet weights -> our backbone (`config.pretrained`).

The entry points for a model config: `validate` checks a file before training
and `load_into` puts its weights into the model's variables. The file formats
(.npz, .safetensors, torch) are `weight_files`; the torchvision and
in-place-ABN name layouts, and what each one implies (in-place ABN's leaky
ReLU and `|weight| + eps` BN scale), are `resnet_names`.

`resolve` turns `config.pretrained` into a file: a path stays a path, and
`BUILTIN` ("shapes_builtin") names the `resnet_small` backbone pretrained on
the procedural `shapes_pretrain` set, cached under the data dir and built
there once (`incseg_jax.pretrain`) when missing. A file written by
`python -m incseg_jax.pretrain` has a sidecar `FILE.json` saying what made it;
`validate` and `load_into` refuse one made for another backbone, width,
depth or pretraining-set version, naming the difference.
"""

import fcntl
import json
import os
import time

import flax

from incseg_jax import files
from incseg_jax.data import registry
from incseg_jax.models import resnet_names
from incseg_jax.models import weight_files
from incseg_jax.models.segmodel import build_model
from incseg_jax.models.variables import abstract_variables


# config.pretrained value: the resnet_small backbone pretrained on shapes_pretrain, built once per data dir.
BUILTIN = 'shapes_builtin'
# The sidecar `source` of files made by `python -m incseg_jax.pretrain` (other JSON files are not ours).
PRETRAIN_SOURCE = 'incseg_jax.pretrain'
BUILTIN_SEED = 0


def _small(model_cfg):
  """(width, blocks) of the config's resnet_small, with SegModel's defaults."""
  return (int(getattr(model_cfg, 'small_width', 16)),
          tuple(int(b) for b in getattr(model_cfg, 'small_blocks', (1, 1, 1, 1))))


def builtin_path(model_cfg, data_dir=None) -> str:
  """Cache file of `BUILTIN` for the config's resnet_small.

  `<data_dir>/shapes_pretrain/<set version>/resnet_small_w<width>_b<blocks>_seed0.npz`.
  """
  # Lazy: shapes_pretrain imports data.shapes, hence TensorFlow Datasets, which configs/shapes.py (it reads
  # BUILTIN from here) must not load.
  from incseg_jax.data import shapes_pretrain  # pylint: disable=g-import-not-at-top
  width, blocks = _small(model_cfg)
  name = f'resnet_small_w{width}_b{"-".join(map(str, blocks))}_seed{BUILTIN_SEED}.npz'
  return os.path.join(data_dir or registry.default_data_dir(), shapes_pretrain.NAME, shapes_pretrain.VERSION, name)


def resolve(path, model_cfg, data_dir=None, **overrides) -> str:
  """The weights file `config.pretrained` stands for; builds the `BUILTIN` one when it is missing.

  Args:
    path: `config.pretrained`: a file path (returned as it is) or `BUILTIN`.
    model_cfg: `config.model` (`BUILTIN` needs model.backbone='resnet_small'; its small_width and
      small_blocks choose the file).
    data_dir: `config.dataset.data_dir`; None or '' for $INCSEG_DATA_DIR or ~/tensorflow_datasets.
    **overrides: `pretrain.Settings` fields for a build (tests make it tiny); the width and blocks come
      from `model_cfg` and the seed is `BUILTIN_SEED`.

  Returns:
    The path of the weights file.

  Raises:
    ValueError: `BUILTIN` with another backbone or activation.
  """
  path = os.fspath(path)
  if path != BUILTIN:
    return path
  backbone = getattr(model_cfg, 'backbone', None)
  if backbone != 'resnet_small':
    raise ValueError(
        f'config.pretrained={BUILTIN!r} is a resnet_small backbone pretrained on the procedural '
        f'shapes_pretrain set, but model.backbone={backbone!r}; use model.backbone=resnet_small or '
        'point config.pretrained at a weights file for that backbone')
  activation = getattr(model_cfg, 'activation', 'relu')
  if activation != 'relu':  # Checked before a build, which would be refused after minutes.
    raise ValueError(f'config.pretrained={BUILTIN!r} is trained with ReLU (torchvision layout), so the model '
                     f'needs --config.model.activation=relu (it has {activation!r})')
  target = builtin_path(model_cfg, data_dir)
  if os.path.exists(target):
    return target
  problem = files.unwritable(os.path.dirname(target))
  if problem:  # checked before a build of minutes, which would fail at its first write with a traceback
    raise ValueError(
        f'config.pretrained={BUILTIN!r}: the backbone is not built yet and must be written (once) to {target}, '
        f'but {os.path.dirname(target)} {problem}; expected a writable data dir: make it writable, point '
        'INCSEG_DATA_DIR or --config.dataset.data_dir at a writable one, or pass --config.pretrained=FILE')
  os.makedirs(os.path.dirname(target), exist_ok=True)
  # Concurrent runs (test workers, parallel experiments) build it once: the first takes the lock, the
  # others wait and then find the file, which `pretrain.write` renames into place only when complete.
  with open(target + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes, or when its holder dies.
    if not os.path.exists(target):
      from incseg_jax import pretrain  # pylint: disable=g-import-not-at-top
      width, blocks = _small(model_cfg)
      settings = pretrain.Settings(**{**overrides, 'width': width, 'blocks': blocks, 'seed': BUILTIN_SEED})
      print(f'building the {BUILTIN} pretrained backbone (resnet_small, width {width}, blocks '
            f'{"-".join(map(str, blocks))}, {settings.steps} steps on shapes_pretrain) into {target} '
            '(once)', flush=True)
      start = time.time()
      record = pretrain.build(target, settings, log=None)
      print(f'built {target} in {time.time() - start:.0f} s (held-out mAP {record["heldout"]["map"]:.3f})',
            flush=True)
  return target


def sidecar_path(path) -> str:
  """Where the record of what made weights file `path` lives: `path` + '.json'."""
  return os.fspath(path) + '.json'


def read_sidecar(path):
  """The record `python -m incseg_jax.pretrain` wrote next to `path`, or None when there is none of ours.

  Raises:
    ValueError: the sidecar exists but is not readable JSON.
  """
  sidecar = sidecar_path(path)
  if not os.path.isfile(sidecar):
    return None
  try:
    with open(sidecar) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {sidecar!r}, the record of what made {os.fspath(path)!r}: {e}; '
                     'delete both and rebuild the file with python -m incseg_jax.pretrain') from e
  if not isinstance(record, dict) or record.get('source') != PRETRAIN_SOURCE:
    return None
  return record


def check_sidecar(path, model_cfg) -> None:
  """Refuses a file of ours made for another backbone, width, depth or pretraining-set version.

  Raises:
    ValueError: naming every differing field, with the command that rebuilds a matching file.
  """
  record = read_sidecar(path)
  if record is None:
    return
  # Lazy: shapes_pretrain imports data.shapes, hence TensorFlow Datasets, which configs/shapes.py (it reads
  # BUILTIN from here) must not load.
  from incseg_jax.data import shapes_pretrain  # pylint: disable=g-import-not-at-top
  backbone = getattr(model_cfg, 'backbone', None)
  width, blocks = _small(model_cfg)
  made_for = []
  if record.get('backbone') != backbone:
    made_for.append(f'model.backbone={record.get("backbone")!r}, this run has {backbone!r}')
  else:
    if record.get('width') != width:
      made_for.append(f'model.small_width={record.get("width")}, this run has {width}')
    if tuple(record.get('blocks') or ()) != blocks:
      made_for.append(f'model.small_blocks={tuple(record.get("blocks") or ())}, this run has {blocks}')
  version = (record.get('pretrain_set'), record.get('pretrain_set_version'))
  current = (shapes_pretrain.NAME, shapes_pretrain.VERSION)
  if version != current:
    made_for.append(f'pretraining set {" ".join(map(str, version))}, this code draws {" ".join(current)}')
  if not made_for:
    return
  if backbone == 'resnet_small':
    fix = (f'rebuild it with python -m incseg_jax.pretrain --out={os.fspath(path)} --width={width} '
           f'--blocks={",".join(map(str, blocks))}')
  else:
    fix = 'python -m incseg_jax.pretrain builds resnet_small backbones only'
  raise ValueError(f'pretrained file {os.fspath(path)!r} was made for {", and for ".join(made_for)}; '
                   f'{fix} or point config.pretrained at a matching file')


def _prepare(path, model_cfg):
  """Loads `path` and checks it against the config's architecture (and its sidecar, if any)."""
  backbone = getattr(model_cfg, 'backbone', None)
  state_dict = weight_files.load_state_dict(path)
  check_sidecar(path, model_cfg)
  source = repr(os.fspath(path))
  layout = resnet_names.detect_layout(state_dict, source=source)
  resnet_names.check_arch(backbone, layout, source=source)
  resnet_names.check_activation(layout, getattr(model_cfg, 'activation', 'relu'), source=source)
  return state_dict, layout, backbone, source


def _backbone_subtree(variables, what):
  try:
    return {c: flax.core.unfreeze(variables[c])['backbone']
            for c in ('params', 'batch_stats')}
  except KeyError as e:
    raise ValueError(f'{what} has no {e} backbone subtree (expected '
                     "variables['params'/'batch_stats']['backbone'])") from e


def load_into(variables: dict, path: str, model_cfg, data_dir=None) -> dict:
  """Model variables with the backbone replaced by the weights in `path`.

  Args:
    variables: full model variables (`init_variables` output).
    path: weights file (see `weight_files.load_state_dict`) or `BUILTIN`
      (see `resolve`).
    model_cfg: the `config.model` the variables were built from (reads
      `backbone`, `activation`, `small_width`, `small_blocks`).
    data_dir: `config.dataset.data_dir`, where `BUILTIN` is cached.

  Returns:
    A new plain dict: `params/backbone` and `batch_stats/backbone` are
    NumPy arrays from the file; every other leaf (decoder, classifier) is the
    very object of `variables`.

  Raises:
    FileNotFoundError, ValueError: see `resolve`, `check_sidecar`,
      `weight_files.load_state_dict`, `resnet_names.import_backbone` and
      `resnet_names.check_activation`.
  """
  path = resolve(path, model_cfg, data_dir)
  state_dict, layout, backbone, source = _prepare(path, model_cfg)
  new_backbone = resnet_names.import_backbone(
      state_dict, _backbone_subtree(variables, 'variables'), arch=backbone,
      layout=layout, source=source)
  out = {c: dict(flax.core.unfreeze(tree)) for c, tree in variables.items()}
  for collection, tree in new_backbone.items():
    out[collection]['backbone'] = tree
  return out


def validate(path: str, model_cfg, data_dir=None) -> None:
  """Full check of `path` against `model_cfg` without building weights.

  Loads the file and maps it against `jax.eval_shape`'d variables of
  `build_model(model_cfg, ...)` (nothing of the model is allocated), so a
  bad `config.pretrained` fails before training starts.

  `BUILTIN` is resolved (and built, once, if missing) in `data_dir`, see
  `resolve`.

  Raises:
    FileNotFoundError, ValueError: exactly what `load_into` would raise.
  """
  path = resolve(path, model_cfg, data_dir)
  state_dict, layout, backbone, source = _prepare(path, model_cfg)
  # The backbone's variable shapes depend on neither the classes nor the
  # input size (two step-0 classes: SSUL's heads need a foreground one).
  abstract = abstract_variables(build_model(model_cfg, (2,)), 64)
  resnet_names.check_fit(state_dict, _backbone_subtree(abstract, 'the model'), arch=backbone,
                         layout=layout, source=source)
