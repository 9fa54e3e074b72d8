"""MSRC-v2 (21 classes: 23 minus horse and mountain): the first paper's MSRC tables.

Usage:
  python -m incseg_jax.main \
      --config=configs/msrc.py:task=20-1,method=ilt,manual_dir=/data/msrc \
      --workdir=runs/msrc_20-1_ilt

`manual_dir` holds `MSRC_ObjCategImageDatabase_v2/` (Images/, GroundTruth/)
with the standard split files of Shotton et al. (Train.txt, Validation.txt,
Test.txt) placed in it: train = Train + Validation (335 images), evaluation on
Test (256). Void, horse and mountain pixels are ignored.

MSRC has no background class. The paper's class c0 is a real class that is
always learned first; here class id 0 is building (data/msrc.py), kept in the
channel every step starts from, and the other 20 classes follow the class
order. The paper names its scenarios by its model indices: "the last class
added" is M0(0-19) + boat, i.e. 19 classes besides c0 then 1: task=20-1 is
accepted as that (= our 19-1); 15-5 and 15-1 are M0(0-15) then 5 classes at
once or one at a time. The paper sorts the classes by their occurrence, so the
default order here is frequency (from the training pixels).

Config argument keys: task (20-1, 15-5, 15-1, joint), method, setting, labeling,
order (frequency, default | dataset | random | explicit), conventions, protocol
(ilt, default: the first paper's DeepLab-v2 setup | ucd), manual_dir, data_dir,
runlocal.
"""

from incseg_jax import config_lib


def get_config(arg=None):
  """Returns the experiment config for `arg` (see the module docstring)."""
  return config_lib.dataset_config(arg, dataset="msrc", protocol="ilt", task="20-1", order="frequency",
                                   eval_split="test", task_aliases={"20-1": "19-1"}, eval_batch_size=4)
