"""The built-in `shapes` dataset: CPU-sized incremental segmentation.

Usage:
  python -m incseg_jax.main --config=configs/shapes.py:task=15-1,method=ft \
      --workdir=/tmp/run

Config argument keys: task (scenario, e.g. 15-1, 15-5, 10-5-5, joint), method
(e.g. ft, joint), setting (overlapped | disjoint | sequential), labeling (keep |
background, sequential only), order (dataset | frequency | random | "3,1,..."),
conventions (code | paper: loss options as the public code or as the
equations are written, see docs/methods.md), protocol (ours | ilt | ucd: the first
paper's schedule and DeepLab-v2 ResNet-101, or the second paper's DeepLab-v3
ResNet-101 setup; see config_lib.PROTOCOLS),
runlocal (shrink to a seconds-long smoke run).

Model and schedule are our choice for a 2-core CPU (no paper trains on this
data): a width-16 ResNet with a DeepLab-v3 head at output stride 8 (8x8 maps for
64 px images, so atrous rates 1/2/3 instead of 6/12/18, which would only sample
padding), SGD lr 0.1 for 1500 steps at step 0 and 0.01 for 150 steps at each incremental
step (batch 16), tuned once on the base step (lr 0.05 -> 0.1: +3.4 mIoU; width
24 instead of 16: no gain; see README).
"""

from incseg_jax import config_lib
from incseg_jax import methods


def get_config(arg=None):
  """Returns the experiment config for `arg` (see the module docstring)."""
  arg = config_lib.parse_arg(arg, task="15-1", method="ft", setting="overlapped", labeling="",
                             order="dataset", conventions="code", protocol="ours", runlocal=False)
  c = config_lib.base_config()
  c.dataset.name = "shapes"
  c.dataset.builder_config = "default"
  c.task = arg.task
  c.method = arg.method
  c.setting = arg.setting
  c.labeling = arg.labeling
  c.class_order = arg.order.replace(";", ",")

  c.model.backbone = "resnet_small"
  c.model.small_width = 16
  c.model.small_blocks = (1, 1, 1, 1)
  c.model.decoder = "deeplab_v3"
  c.model.output_stride = 8
  c.model.aspp_channels = 64
  c.model.atrous_rates = (1, 2, 3)

  c.input.batch_size = 16
  c.input.crop_size = 64
  c.input.scale_min = 0.75
  c.input.scale_max = 1.5
  c.eval_batch_size = 100

  c.schedule.unit = "steps"
  c.schedule.base_length = 1500
  c.schedule.inc_length = 150
  c.schedule.base_lr = 0.1
  c.schedule.inc_lr = 0.01

  c.log_every = 50
  c.checkpoint_every = 250

  methods.apply_to_config(c, arg.conventions)
  config_lib.apply_protocol(c, arg.protocol)
  if arg.runlocal:
    config_lib.apply_runlocal(c)
  return c
