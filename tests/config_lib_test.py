"""Tests for config parsing, the shapes config and method presets."""

import pytest

from incseg_jax import config_lib
from incseg_jax import methods


def test_parse_arg_types_and_bare_flags():
  arg = config_lib.parse_arg("task=15-5,runlocal,n=3", task="15-1", runlocal=False, n=1)
  assert arg.task == "15-5" and arg.runlocal is True and arg.n == 3


@pytest.mark.parametrize("bad, message", [("nope=1", "unknown key 'nope'"), ("n=x", "expected an integer"),
                                          ("flag=maybe", "expected a boolean")])
def test_parse_arg_errors(bad, message):
  with pytest.raises(ValueError, match=message):
    config_lib.parse_arg(bad, n=1, flag=False)


def test_shapes_config_methods(smoke_config):
  ft = smoke_config("task=15-5,method=ft,setting=disjoint")
  assert (ft.task, ft.setting, dict(ft.losses)) == ("15-5", "disjoint", {"ce": 1.0})
  joint = smoke_config("method=joint")
  assert joint.task == "joint"
  assert joint.model.backbone == "resnet_small" and joint.schedule.base_length <= 5  # runlocal shrink


def test_config_json_roundtrip_and_diff(smoke_config):
  a = smoke_config("task=15-5")
  b = config_lib.from_json(config_lib.to_json(a))
  assert config_lib.diff(config_lib.experiment_fields(a), config_lib.experiment_fields(b)) == []
  b.task = "10-10"
  b.log_every = 999  # volatile: not a different experiment
  assert config_lib.diff(config_lib.experiment_fields(a), config_lib.experiment_fields(b)) == [
      "task: '15-5' vs '10-10'"]


def test_methods_registry_and_combination():
  assert methods.get("ft").losses == {"ce": 1.0}
  with pytest.raises(ValueError, match="unknown method 'bogus'.*known methods: .*ft"):
    methods.get("bogus")
  with pytest.raises(ValueError, match="cannot be combined"):
    methods.get("ft+joint")


def test_check_config_catches_method_override(smoke_config):
  config = smoke_config("method=ft")
  config.losses = {"nonexistent": 1.0}
  with pytest.raises(ValueError, match="unknown loss 'nonexistent'"):
    methods.check_config(config)
