"""Runs an incremental-segmentation experiment.

  python -m incseg_jax.main --config=configs/shapes.py:task=15-5,method=ft \
      --workdir=/tmp/run1 [--config.<field>=<value> ...] [--allow_config_change]

Rerunning the same command resumes (after a crash or a kill, too). A workdir
saved under another config is refused unless --allow_config_change is given.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from incseg_jax import hooks
from incseg_jax import runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Continue a workdir saved under a different config: the old config.json is kept "
    "as config.<n>.json; checkpoints of another model or class split are still refused.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv, run_hooks: hooks.Hooks = hooks.NONE):
  runtime.setup_command(argv)
  # Imported here so that a bad flag is reported before TensorFlow and orbax load.
  from incseg_jax import distributed  # pylint: disable=g-import-not-at-top
  from incseg_jax import train  # pylint: disable=g-import-not-at-top
  with runtime.clear_errors():
    if distributed.initialize(_CONFIG.value):  # before anything touches a device
      distributed.quiet_other_processes(_WORKDIR.value)
    train.run(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value, hooks=run_hooks)


if __name__ == "__main__":
  app.run(main, flags_parser=runtime.parse_flags)
