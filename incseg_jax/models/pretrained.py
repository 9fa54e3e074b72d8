"""ImageNet-pretrained ResNet weights -> our backbone (``config.pretrained``).

The entry points for a model config: ``validate`` checks a file before training
and ``load_into`` puts its weights into the model's variables. The file formats
(.npz, .safetensors, torch) are ``weight_files``; the torchvision and
in-place-ABN name layouts, and what each one implies (in-place ABN's leaky
ReLU and ``|weight| + eps`` BN scale), are ``resnet_names``.
"""

import os

import flax
import jax
import jax.numpy as jnp

from incseg_jax.models import resnet_names
from incseg_jax.models import weight_files
from incseg_jax.models.segmodel import build_model


def _backbone_name(model_cfg):
  backbone = getattr(model_cfg, 'backbone', None)
  resnet_names.check_arch(backbone)
  return backbone


def _prepare(path, model_cfg):
  """Loads ``path`` and checks it against the config's architecture."""
  backbone = _backbone_name(model_cfg)
  state_dict = weight_files.load_state_dict(path)
  source = repr(os.fspath(path))
  layout = resnet_names.detect_layout(state_dict, source=source)
  resnet_names.check_activation(layout, getattr(model_cfg, 'activation', 'relu'), source=source)
  return state_dict, layout, backbone, source


def _backbone_subtree(variables, what):
  try:
    return {c: flax.core.unfreeze(variables[c])['backbone']
            for c in ('params', 'batch_stats')}
  except KeyError as e:
    raise ValueError(f'{what} has no {e} backbone subtree (expected '
                     "variables['params'/'batch_stats']['backbone'])") from e


def load_into(variables: dict, path: str, model_cfg) -> dict:
  """Model variables with the backbone replaced by the weights in ``path``.

  Args:
    variables: full model variables (``init_variables`` output).
    path: weights file (see ``weight_files.load_state_dict``).
    model_cfg: the ``config.model`` the variables were built from (reads
      ``backbone`` and ``activation``).

  Returns:
    A new plain dict: ``params/backbone`` and ``batch_stats/backbone`` are
    NumPy arrays from the file; every other leaf (decoder, classifier) is the
    very object of ``variables``.

  Raises:
    FileNotFoundError, ValueError: see ``weight_files.load_state_dict``,
      ``resnet_names.import_backbone`` and ``resnet_names.check_activation``.
  """
  state_dict, layout, backbone, source = _prepare(path, model_cfg)
  new_backbone = resnet_names.import_backbone(
      state_dict, _backbone_subtree(variables, 'variables'), arch=backbone,
      layout=layout, source=source)
  out = {c: dict(flax.core.unfreeze(tree)) for c, tree in variables.items()}
  for collection, tree in new_backbone.items():
    out[collection]['backbone'] = tree
  return out


def validate(path: str, model_cfg) -> None:
  """Full check of ``path`` against ``model_cfg`` without building weights.

  Loads the file and maps it against ``jax.eval_shape``'d variables of
  ``build_model(model_cfg, ...)`` (nothing of the model is allocated), so a
  bad ``config.pretrained`` fails before training starts.

  Raises:
    FileNotFoundError, ValueError: exactly what ``load_into`` would raise.
  """
  state_dict, layout, backbone, source = _prepare(path, model_cfg)
  # The backbone's variable shapes depend on neither the classes nor the
  # input size.
  model = build_model(model_cfg, (1,))
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  abstract = jax.eval_shape(lambda r, x: model.init(r, x, train=False),
                            jax.random.key(0), x)
  resnet_names.check_fit(state_dict, _backbone_subtree(abstract, 'the model'), arch=backbone,
                         layout=layout, source=source)
