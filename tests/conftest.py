"""Shared fixtures: the tiny `shapes` build and a fast smoke config."""

import fcntl
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from incseg_jax import runtime  # noqa: E402


def pytest_configure(config):
  del config
  runtime.setup()


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A data dir holding the `tiny` build of `shapes`, built once per test run.

  Under pytest-xdist every worker has its own basetemp below the run's, so the
  build goes one level up, where all workers see it; the first worker builds
  it under a file lock and the others wait and reuse it. The build is
  finished only once its marker file exists, so a directory left half-built
  by a worker that died is rebuilt, never read.
  """
  from incseg_jax.data import shapes  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  data_dir = base / "shapes_tfds"
  done = base / "shapes_tfds.done"
  with open(base / "shapes_tfds.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its holder dies
    if not done.exists():
      shutil.rmtree(data_dir, ignore_errors=True)
      shapes.build(data_dir=str(data_dir), config="tiny")
      done.touch()
  return str(data_dir)


@pytest.fixture
def smoke_config(shapes_data_dir):
  """Returns a function (arg) -> runlocal shapes config on the tiny build."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "shapes.py")
  spec = importlib.util.spec_from_file_location("shapes_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)

  def make(arg: str = ""):
    config = module.get_config(",".join(a for a in (arg, "runlocal") if a))
    config.dataset.data_dir = shapes_data_dir
    return config

  return make
