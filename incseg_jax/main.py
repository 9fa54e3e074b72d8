"""Runs an incremental-segmentation experiment.

  python -m incseg_jax.main --config=configs/shapes.py:task=15-5,method=ft \
      --workdir=/tmp/run1 [--config.<field>=<value> ...]
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from incseg_jax import runtime
from incseg_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO.
  runtime.setup()
  with runtime.clear_errors():
    train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=runtime.parse_flags)
