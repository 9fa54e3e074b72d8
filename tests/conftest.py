"""Shared fixtures: the tiny `shapes` build and a fast smoke config."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from incseg_jax import runtime  # noqa: E402


def pytest_configure(config):
  del config
  runtime.setup()


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A data dir holding the `tiny` build of `shapes` (built once per worker)."""
  from incseg_jax.data import shapes  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  shapes.build(data_dir=data_dir, config="tiny")
  return data_dir


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
