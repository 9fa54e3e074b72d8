"""Shared fixtures: the tiny `shapes` build and a fast smoke config."""

import fcntl
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from incseg_jax import runtime  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "long: takes half a minute or more; its file is scheduled first (see pytest_collection_modifyitems)")
  runtime.setup()


def pytest_collection_modifyitems(items):
  """Puts the files that hold a `long` test first, keeping every other order.

  Under `pytest -n 2 --dist=loadfile --no-loadscope-reorder` (launch/test.sh)
  the workers take whole files in this order. A two-minute test file that
  started last would run alone while the other worker idles; started first,
  it overlaps the many short files.
  """
  long_files = {item.path for item in items if item.get_closest_marker("long")}
  items.sort(key=lambda item: item.path not in long_files)  # stable: the order within each group is kept


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


@pytest.fixture(scope="session")
def smoke_config(shapes_data_dir):
  """Returns a function (arg) -> runlocal shapes config on the tiny build, a new config at every call."""
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
