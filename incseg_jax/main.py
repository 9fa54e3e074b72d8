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
  runtime.setup_command(argv, tensorflow=False)
  # Imported here, and train only after the workdir path and the config are checked: a bad flag, workdir or
  # config is reported before TensorFlow loads (a bad scenario: 3.2 s instead of 10.6 s, docs/benchmarks.md).
  from incseg_jax import distributed  # pylint: disable=g-import-not-at-top
  from incseg_jax import validate  # pylint: disable=g-import-not-at-top
  from incseg_jax import workdir  # pylint: disable=g-import-not-at-top
  with runtime.clear_errors():
    if distributed.initialize(_CONFIG.value):  # before anything touches a device
      distributed.quiet_other_processes(_WORKDIR.value)
    workdir.check_path(_WORKDIR.value)
    validate.config(_CONFIG.value)  # after initialize: it checks batch sizes against the global device count
    runtime.hide_accelerators_from_tensorflow()
    from incseg_jax import train  # pylint: disable=g-import-not-at-top
    train.run(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value, hooks=run_hooks,
              config_checked=True)


if __name__ == "__main__":
  app.run(main, flags_parser=runtime.parse_flags)
