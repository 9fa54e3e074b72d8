"""Converts a PyTorch ResNet checkpoint to .npz or .safetensors.

Usage:

  python -m incseg_jax.tools.convert_weights IN OUT [--trust-pickle]

IN is anything `incseg_jax.models.weight_files.load_state_dict` reads
(`.pth`/`.pth.tar`/`.pt` need torch installed; `.npz` and
`.safetensors` do not). OUT's extension picks the format: `.npz` or
`.safetensors`. A top-level `state_dict`/`model` entry is unwrapped and
a leading `module.` is stripped from every name; all other keys (including
the ImageNet classifier, which the importer drops later) are kept as they
are. Torch files are read with `weights_only=True`; `--trust-pickle`
lifts that for a checkpoint you trust that also pickles other objects.

Equivalent one-liner that needs only torch and numpy (not incseg_jax), e.g.
on another machine:

  python -c "import sys,torch,numpy as np;d=torch.load(sys.argv[1],map_location='cpu');d=d.get('state_dict',d.get('model',d));np.savez(sys.argv[2],**{(k[7:] if k.startswith('module.') else k):(v.float() if v.is_floating_point() else v).numpy() for k,v in d.items()})" IN.pth OUT.npz

Then train with `--config.pretrained=OUT.npz` (and
`--config.model.activation=leaky_relu` for in-place-ABN files such as
MiB's `resnet101_iabn_sync.pth.tar`).
"""

import argparse
import sys

import numpy as np

from incseg_jax.models import resnet_names
from incseg_jax.models import weight_files


def convert(in_path: str, out_path: str, *, trust_pickle: bool = False
            ) -> dict[str, np.ndarray]:
  """Reads `in_path` and writes its state dict to `out_path`.

  Args:
    in_path: weights file (see `weight_files.load_state_dict`).
    out_path: `.npz` or `.safetensors` destination.
    trust_pickle: read torch files with full unpickling (trusted files only).

  Returns:
    The state dict that was written.

  Raises:
    FileNotFoundError, ValueError: unreadable input or unknown output
      extension (checked before reading the input).
  """
  weight_files.output_extension(out_path)  # before reading: a bad OUT fails fast
  state_dict = weight_files.load_state_dict(in_path, trust_pickle=trust_pickle)
  weight_files.save_state_dict(state_dict, out_path)
  return state_dict


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m incseg_jax.tools.convert_weights',
      description='Convert a (PyTorch) ResNet state dict to .npz or '
      '.safetensors for config.pretrained.')
  parser.add_argument('input', help='.pth/.pth.tar/.pt (needs torch), .npz '
                      'or .safetensors')
  parser.add_argument('output', help='.npz or .safetensors')
  parser.add_argument('--trust-pickle', action='store_true',
                      help='unpickle arbitrary objects in a torch checkpoint '
                      '(only for files you trust)')
  args = parser.parse_args(argv)
  try:
    state_dict = convert(args.input, args.output,
                         trust_pickle=args.trust_pickle)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  try:
    layout = resnet_names.detect_layout(state_dict)
  except ValueError:
    layout = 'unrecognised'
  n = sum(int(np.size(v)) for v in state_dict.values())
  print(f'wrote {len(state_dict)} arrays ({n:,} values, {layout} layout) to '
        f'{args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
