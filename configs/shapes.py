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

The protocol is a miniature of the papers' (docs/results_shapes.md, "Protocol"):
a width-16 ResNet with a DeepLab-v3 head at output stride 8 (8x8 maps for 64 px
images, so atrous rates 1/2/3 instead of 6/12/18, which would only sample
padding) whose backbone starts from `shapes_builtin`, an ImageNet-style
pretraining on the separate `shapes_pretrain` set (built once, ~3 min; see
incseg_jax/pretrain.py), as both papers start from ImageNet weights. Every task
step trains 8 epochs over its images (the papers: 30), batch 16, poly lr from
0.1 at step 0 and 0.01 after (the papers' 10:1 ratio). Calibrated on ft and
joint alone, on val: fine-tuning forgets the old classes (below 10% of the
step-0 model's mIoU) while learning the new ones (15-5: 72% of joint's
new-class mIoU). `runlocal` leaves out the pretrained backbone (a smoke run
should not wait for a 3-minute build; tests/pretrain_test.py covers that path).
"""

from incseg_jax import config_lib
from incseg_jax import methods
from incseg_jax.models import pretrained


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

  c.schedule.unit = "epochs"
  c.schedule.base_length = 8
  c.schedule.inc_length = 8
  c.schedule.base_lr = 0.1
  c.schedule.inc_lr = 0.01
  c.pretrained = pretrained.BUILTIN

  c.log_every = 50
  c.checkpoint_every = 250

  methods.apply_to_config(c, arg.conventions)
  config_lib.apply_protocol(c, arg.protocol)
  if arg.protocol != "ours":
    c.pretrained = ""  # the papers' ResNet-101s: no built-in backbone fits them (pass --config.pretrained)
  if arg.runlocal:
    config_lib.apply_runlocal(c)
  return c
