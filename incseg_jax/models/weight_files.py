"""Weight files <-> flat `{name: np.ndarray}` state dicts, with no layout knowledge.

Reads `.npz` and `.safetensors` (no torch), or `.pth`/`.pth.tar`/`.pt` when torch happens to be installed
(never a dependency; without it the error prints the conversion command `TORCH_TO_NPZ_COMMAND`), and writes
`.npz` or `.safetensors`. Checkpoint containers (`state_dict`/`model`) are unwrapped and the
DataParallel `module.` prefix is stripped; what the names mean is `resnet_names`' business.
"""

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

TORCH_EXTENSIONS = ('.pth.tar', '.pth', '.pt')
ACCEPTED_EXTENSIONS = TORCH_EXTENSIONS + ('.safetensors', '.npz')
OUTPUT_EXTENSIONS = ('.npz', '.safetensors')
# Checkpoint containers that hold the state dict one level down.
_WRAPPER_KEYS = ('state_dict', 'model')

# Converts a torch checkpoint to .npz with torch + numpy only; kept in sync
# with the docstring of incseg_jax/tools/convert_weights.py (tested).
TORCH_TO_NPZ_COMMAND = (
    'python -c "import sys,torch,numpy as np;'
    "d=torch.load(sys.argv[1],map_location='cpu');"
    "d=d.get('state_dict',d.get('model',d));"
    "np.savez(sys.argv[2],**{(k[7:] if k.startswith('module.') else k):"
    '(v.float() if v.is_floating_point() else v).numpy() '
    'for k,v in d.items()})"'
    ' IN.pth OUT.npz')


def _extension(path: str) -> str | None:
  lower = path.lower()
  for ext in ACCEPTED_EXTENSIONS:
    if lower.endswith(ext):
      return ext
  return None


def _torch_missing_message(path: str) -> str:
  return (
      f'{path!r} is a PyTorch file; reading it needs torch, which is not '
      'installed (incseg_jax does not depend on it). Convert it once, on any '
      'machine with torch, to .npz:\n'
      f'  {TORCH_TO_NPZ_COMMAND}\n'
      '(or `python -m incseg_jax.tools.convert_weights IN.pth OUT.npz` where '
      'both torch and incseg_jax are installed) and point config.pretrained '
      'at the .npz file.')


def _load_torch(path: str, trust_pickle: bool):
  if importlib.util.find_spec('torch') is None:
    raise ValueError(_torch_missing_message(path))
  import torch  # pylint: disable=g-import-not-at-top
  if trust_pickle:
    return torch.load(path, map_location='cpu', weights_only=False)
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except TypeError:  # torch < 1.13 has no weights_only (and always unpickles)
    return torch.load(path, map_location='cpu')


def _to_numpy(value):
  """np.ndarray for arrays and torch tensors, None for anything else."""
  if isinstance(value, np.ndarray):
    return value
  if type(value).__module__.startswith('torch') and hasattr(value, 'detach'):
    t = value.detach().cpu()
    if not hasattr(np, str(t.dtype).rsplit('.', 1)[-1]):  # bfloat16
      t = t.float()
    return t.numpy()
  return None


def _normalise(raw: Any, path: str) -> dict[str, np.ndarray]:
  """Unwraps checkpoint containers, strips 'module.' and converts to NumPy."""
  for _ in range(3):  # e.g. {'model': {'state_dict': {...}}}
    if not isinstance(raw, Mapping):
      break
    inner = [k for k in _WRAPPER_KEYS if isinstance(raw.get(k), Mapping)]
    if not inner:
      break
    raw = raw[inner[0]]
  if not isinstance(raw, Mapping):
    raise ValueError(f'{path!r} does not hold a state dict (a mapping of '
                     f'names to arrays) but a {type(raw).__name__}')
  out, bad = {}, []
  for key, value in raw.items():
    # DataParallel/DistributedDataParallel prefix (PLOP strips key[7:]).
    name = key[len('module.'):] if key.startswith('module.') else key
    array = _to_numpy(value)
    if array is None:
      bad.append(f'{key} ({type(value).__name__})')
    elif name in out:
      bad.append(f'{key} (duplicate of {name} once "module." is stripped)')
    else:
      out[name] = array
  if bad:
    raise ValueError(f'{path!r} is not a plain state dict; these entries are '
                     f'not arrays: {", ".join(bad)}')
  if not out:
    raise ValueError(f'{path!r} holds no arrays')
  return out


def load_state_dict(path, *, trust_pickle: bool = False
                    ) -> dict[str, np.ndarray]:
  """Reads a weights file into a flat `{name: np.ndarray}` dict.

  A top-level `state_dict`/`model` entry is unwrapped and a leading
  `module.` is stripped from every name. Names are otherwise kept (no
  layout knowledge here; see `resnet_names.import_backbone`).

  Args:
    path: `.npz`, `.safetensors`, or `.pth`/`.pth.tar`/`.pt` (these
      need torch installed).
    trust_pickle: torch files are read with `weights_only=True` unless this
      is set; set it only for a file you trust, whose checkpoint also holds
      other Python objects.

  Returns:
    Flat dict of NumPy arrays.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: unknown extension (the accepted ones are listed), torch file
      without torch (the conversion command is shown), unreadable file, or a
      file that is not a state dict.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'pretrained weights file {path!r} does not exist')
  if os.path.isdir(path):
    raise ValueError(f'pretrained weights path {path!r} is a directory, not a '
                     'file')
  ext = _extension(path)
  if ext is None:
    raise ValueError(
        f'{path!r} has an unknown extension; accepted: '
        f'{", ".join(ACCEPTED_EXTENSIONS)} ({", ".join(TORCH_EXTENSIONS)} '
        'need torch)')
  if ext in TORCH_EXTENSIONS and importlib.util.find_spec('torch') is None:
    raise ValueError(_torch_missing_message(path))
  try:
    if ext in TORCH_EXTENSIONS:
      raw = _load_torch(path, trust_pickle)
    elif ext == '.safetensors':
      import safetensors.numpy  # pylint: disable=g-import-not-at-top
      raw = safetensors.numpy.load_file(path)
    else:
      with np.load(path, allow_pickle=False) as f:
        raw = {k: f[k] for k in f.files}
  except Exception as e:  # pylint: disable=broad-except
    hint = ''
    if ext in TORCH_EXTENSIONS and not trust_pickle:
      hint = (' (if it is a checkpoint you trust that also pickles other '
              'Python objects, convert it with `python -m '
              'incseg_jax.tools.convert_weights --trust-pickle IN OUT.npz`)')
    raise ValueError(f'cannot read {path!r} as a {ext} file: '
                     f'{type(e).__name__}: {e}{hint}') from e
  return _normalise(raw, path)


def output_extension(path: str) -> str:
  """The format `save_state_dict` writes `path` in: '.npz' or '.safetensors'.

  Raises:
    ValueError: any other extension (the accepted ones are listed).
  """
  ext = os.path.splitext(path)[1].lower()
  if ext not in OUTPUT_EXTENSIONS:
    raise ValueError(f'{path!r}: output extension must be one of {", ".join(OUTPUT_EXTENSIONS)}')
  return ext


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  """Writes a flat state dict to `path` (format from the extension), creating its directory.

  Raises:
    ValueError: the extension is not in `OUTPUT_EXTENSIONS`.
  """
  ext = output_extension(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if ext == '.npz':
    with open(path, 'wb') as f:  # a file object: np.savez adds no suffix
      np.savez(f, **state_dict)
  else:
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)
