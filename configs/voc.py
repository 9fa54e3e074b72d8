"""Pascal VOC 2012 (+ SBD augmented training set): both papers' VOC scenarios.

Usage:
  python -m incseg_jax.main \
      --config=configs/voc.py:task=15-1,method=mib,manual_dir=/data/voc \
      --workdir=runs/voc_15-1_mib

`manual_dir` is the directory holding `VOCdevkit/VOC2012` (JPEGImages,
SegmentationClass, ImageSets/Segmentation, and, for the 10,582-image training
set, SegmentationClassAug + train_aug.txt). The records are built once into the
data dir ($INCSEG_DATA_DIR or ~/tensorflow_datasets); later runs need no
manual_dir. Without SBD the VOC-only train list (1,464 images) is used, and
the build says so.

Config argument keys: task (19-1, 15-5, 15-1, 10-10, 10-1, 10-5-5, joint),
method, setting (overlapped | disjoint | sequential), labeling (keep |
background; sequential only: the first paper's incremental learning vs
incremental labeling), order (dataset = alphabetical | frequency (computed from
the training pixels) | ilt_frequency (the first paper's published VOC order) |
random | "15;8;...")), conventions (code | paper), protocol (ucd: the second
paper's DeepLab-v3 setup, default | ilt: the first paper's DeepLab-v2 setup),
manual_dir, data_dir, runlocal.

The first paper's tables: protocol=ilt,setting=sequential,labeling=keep
(incremental learning) or labeling=background (incremental labeling), with
order=dataset or order=ilt_frequency. The second paper's: protocol=ucd,
setting=overlapped or disjoint.
"""

from incseg_jax import config_lib


def get_config(arg=None):
  """Returns the experiment config for `arg` (see the module docstring)."""
  return config_lib.dataset_config(arg, dataset="voc", protocol="ucd", task="15-1", builder_config="auto",
                                   eval_batch_size=8)
