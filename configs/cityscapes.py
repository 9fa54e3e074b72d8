"""Cityscapes (19 train classes): the second paper's 13-6 and 13-1 scenarios.

Usage:
  python -m incseg_jax.main \
      --config=configs/cityscapes.py:task=13-6,method=ucd,manual_dir=/data/cityscapes \
      --workdir=runs/cs_13-6_ucd

`manual_dir` holds `leftImg8bit/` and `gtFine/` (the `*_gtFine_labelIds.png`
files are mapped to the 19 train ids). Following UCD's code
(docs/reference_code.md, "Protocol facts"), class id = train id + 1 and every
void label id is class 0, trained and evaluated as background;
`--config.dataset.void=ignore` gives the usual Cityscapes convention (void
ignored). In dataset order 13-6 learns road ... rider first, then car, truck,
bus, train, motorcycle, bicycle; 13-1 adds those six one at a time.

Config argument keys: task (13-6, 13-1, joint), method, setting, labeling,
order, conventions, protocol (ucd, default), manual_dir, data_dir, runlocal.
Evaluation is at the full 1024x2048 resolution.
"""

from incseg_jax import config_lib


def get_config(arg=None):
  """Returns the experiment config for `arg` (see the module docstring)."""
  return config_lib.dataset_config(arg, dataset="cityscapes", protocol="ucd", task="13-6", eval_batch_size=4)
