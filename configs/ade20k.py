"""ADE20K (SceneParsing, 150 classes): the second paper's ADE20K scenarios.

Usage:
  python -m incseg_jax.main \
      --config=configs/ade20k.py:task=100-50,method=plop,manual_dir=/data/ade \
      --workdir=runs/ade_100-50_plop

`manual_dir` holds `ADEChallengeData2016/` (images/ and annotations/, each with
training/ and validation/). Label 0 ("other") is void: by default it is the
background channel, as PLOP and UCD train and evaluate it; MiB ignores it:
add `--config.dataset.void=ignore` for MiB's convention.

Config argument keys: task (100-50, 100-10, 50-50, 100-5, joint), method,
setting, labeling, order (dataset | frequency | random | explicit), conventions,
protocol (ucd, default: DeepLab-v3 ResNet-101, 60 epochs per step as in MiB,
PLOP and UCD; UCD also keeps lr 1e-2 after step 0: add
--config.schedule.inc_lr=0.01), manual_dir, data_dir, runlocal.

ADE20K images vary in size, so evaluation groups them by size rounded up to
multiples of 128 px (config.eval_bucket) instead of padding all to the largest.
"""

from incseg_jax import config_lib


def get_config(arg=None):
  """Returns the experiment config for `arg` (see the module docstring)."""
  return config_lib.dataset_config(
      arg, dataset="ade20k", protocol="ucd", task="100-50", eval_bucket=128, eval_batch_size=8,
      protocol_overrides={"ucd": {"schedule.base_length": 60, "schedule.inc_length": 60}})
