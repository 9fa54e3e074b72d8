"""Tests for config parsing, the shapes config and method presets."""

import importlib.util
import json

import pytest

from incseg_jax import config_lib
from incseg_jax import files
from incseg_jax import methods
from incseg_jax import validate
from incseg_jax.models import pretrained


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
  assert files.json_diff(config_lib.experiment_fields(a), config_lib.experiment_fields(b), elementwise=False) == []
  b.task = "10-10"
  b.log_every = 999  # volatile: not a different experiment
  assert files.json_diff(config_lib.experiment_fields(a), config_lib.experiment_fields(b), elementwise=False) == [
      "task: '15-5' vs '10-10'"]


def test_methods_registry_and_combination():
  assert methods.get("ft").losses == {"ce": 1.0}
  with pytest.raises(ValueError, match="unknown method 'bogus'.*known methods: .*ft"):
    methods.get("bogus")
  with pytest.raises(ValueError, match="cannot be combined"):
    methods.get("ft+joint")


def test_validate_catches_bad_losses_and_method_override(smoke_config):
  config = smoke_config("method=ft")
  config.losses = {"nonexistent": 1.0}
  with pytest.raises(ValueError, match="unknown loss 'nonexistent'"):
    validate.config(config)
  config = smoke_config("method=ft")
  config.method = "mib"  # overridden after the config argument filled config.losses
  with pytest.raises(ValueError, match="needs loss term.*choose the method in the config argument"):
    validate.config(config)


def test_method_presets_fill_weights_and_options(smoke_config):
  c = smoke_config("method=ef+kd_cls_t")
  assert dict(c.losses) == {"ce": 1.0, "kd_cls_t": 1.0}
  assert c.loss_options.kd_cls_t.temperature == 10.0 and c.loss_options.kd_cls_t.pixels == "bg_old"
  paper = smoke_config("method=kd_enc,conventions=paper")
  assert paper.loss_options.kd_enc.reduction == "sum"
  assert smoke_config("method=kd_enc").loss_options.kd_enc.reduction == "mean"
  assert methods.get("e2lf").frozen == ("backbone/stem", "backbone/stage1")
  other = methods.Method(name="kd_all_pixels", losses={"ce": 1.0, "kd_cls": 1.0}, options={"kd_cls": {"pixels": "all"}})
  with methods.registered(other), pytest.raises(ValueError, match="different options"):
    methods.get("kd_cls+kd_all_pixels")


def test_ilt_protocol_preset(shapes_data_dir):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("s", os.path.join(os.path.dirname(__file__), "..", "configs",
                                                                  "shapes.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("protocol=ilt,method=kd_cls_t")
  assert (c.model.backbone, c.model.decoder, c.model.output_stride, c.model.bn_frozen) == (
      "resnet101", "deeplab_v2", 8, True)
  assert (c.schedule.unit, c.schedule.base_lr, c.schedule.inc_lr, c.schedule.end_lr) == (
      "steps_per_class", 1e-4, 5e-5, 1e-6)
  assert (c.input.batch_size, c.input.crop_size, c.optim.nesterov) == (4, 321, False)
  with pytest.raises(ValueError, match="protocol="):
    module.get_config("protocol=unknown")


def test_freeze_typo_is_reported_before_training(smoke_config, tmp_path):
  from incseg_jax import train  # pylint: disable=g-import-not-at-top
  c = smoke_config("task=19-1")
  c.freeze = ("backbone/stage9",)
  with pytest.raises(ValueError, match="'backbone/stage9'.*matches no parameter"):
    train.run(c, str(tmp_path / "run"))


def test_ucd_protocol_and_the_second_papers_scenarios():
  from incseg_jax import tasks  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  config_lib.apply_protocol(c, "ucd")
  assert (c.model.decoder, c.model.output_stride, c.input.batch_size, c.input.crop_size) == ("deeplab_v3", 16, 24, 512)
  assert (c.schedule.unit, c.schedule.base_length, c.schedule.base_lr, c.schedule.inc_lr) == ("epochs", 30, 1e-2, 1e-3)
  expected = {  # (scenario, foreground classes): steps
      ("19-1", 20): (19, 1), ("15-5", 20): (15, 5), ("15-1", 20): (15, 1, 1, 1, 1, 1), ("10-10", 20): (10, 10),
      ("10-1", 20): (10,) + (1,) * 10, ("100-50", 150): (100, 50), ("100-10", 150): (100,) + (10,) * 5,
      ("50-50", 150): (50, 50, 50), ("13-6", 19): (13, 6), ("13-1", 19): (13,) + (1,) * 6}
  for (task, n), steps in expected.items():
    assert tasks.parse_scenario(task, n) == steps, task


def test_fields_added_by_a_newer_version_do_not_make_a_different_experiment(smoke_config):
  now = config_lib.experiment_fields(smoke_config("task=15-5"))
  saved = {k: v for k, v in now.items() if k != "freeze"}
  saved["dataset"] = {k: v for k, v in now["dataset"].items() if k != "skip_bad_records"}
  assert files.json_diff(saved, now, defaults=config_lib.defaults_dict(), elementwise=False) == []
  now["dataset"]["skip_bad_records"] = True  # a non-default value is a difference
  assert files.json_diff(saved, now, defaults=config_lib.defaults_dict(), elementwise=False) == [
      "dataset.skip_bad_records: '<absent>' vs True"]


# ----------------------------------------------------------------------------------------
# config.quirks (removed): its switches became loss options
# ----------------------------------------------------------------------------------------

OLD_QUIRKS = {"ucd_bilinear_labels": False, "ucd_unshifted_negatives": False, "plop_histogram_median": False}


def old_version_json(config, **quirks):
  """`config` as an older version saved it: a `quirks` section, the switches absent from loss_options."""
  d = json.loads(config_lib.to_json(config))
  for term, option in config_lib.MOVED_QUIRKS.values():
    d["loss_options"].get(term, {}).pop(option, None)
  d["quirks"] = dict(OLD_QUIRKS, **quirks)
  return json.dumps(d)


def test_quirks_field_is_gone():
  assert "quirks" not in config_lib.base_config()


@pytest.mark.parametrize("method", ["ft", "ucd", "plop", "plop_ucd", "mib_ucd"])
def test_old_config_with_switches_off_is_the_same_experiment(smoke_config, method):
  # A resume of a workdir saved before the move sees no difference.
  now = smoke_config(f"method={method}")
  saved = config_lib.from_json(old_version_json(now))
  assert "quirks" not in saved
  assert files.json_diff(config_lib.experiment_fields(saved), config_lib.experiment_fields(now),
                         defaults=config_lib.defaults_dict(), elementwise=False) == []


def test_old_config_switch_on_moves_to_its_loss_option(smoke_config):
  now = smoke_config("method=plop_ucd")
  saved = config_lib.from_json(old_version_json(now, ucd_unshifted_negatives=True, plop_histogram_median=True))
  assert "quirks" not in saved
  assert saved.loss_options.ucd.unshifted_negatives is True and saved.loss_options.ucd.bilinear_labels is False
  assert saved.loss_options.plop_ce.histogram_median is True
  # Resuming without the new options set is a different experiment, named by the new paths.
  assert files.json_diff(config_lib.experiment_fields(saved), config_lib.experiment_fields(now),
                         defaults=config_lib.defaults_dict(), elementwise=False) == [
                             "loss_options.plop_ce.histogram_median: True vs False",
                             "loss_options.ucd.unshifted_negatives: True vs False"]
  now.loss_options.ucd.unshifted_negatives = True
  now.loss_options.plop_ce.histogram_median = True
  assert files.json_diff(config_lib.experiment_fields(saved), config_lib.experiment_fields(now),
                         defaults=config_lib.defaults_dict(), elementwise=False) == []


def test_old_config_switch_on_without_its_term_is_refused(smoke_config):
  text = old_version_json(smoke_config("method=plop"), ucd_bilinear_labels=True)
  with pytest.raises(ValueError, match=r"config\.quirks\.ucd_bilinear_labels=True moved to "
                                       r"config\.loss_options\.ucd\.bilinear_labels.*no 'ucd' loss term"):
    config_lib.from_json(text)
  # Off, the same switch had no effect on that run: dropped.
  assert "ucd" not in config_lib.from_json(old_version_json(smoke_config("method=plop"))).loss_options


def test_oldest_config_with_empty_quirks():
  d = json.loads(config_lib.to_json(config_lib.base_config()))
  d["quirks"] = {}
  assert config_lib.from_json(json.dumps(d)).to_dict() == config_lib.base_config().to_dict()


def test_shapes_protocol_is_the_papers_shape(smoke_config):
  """Epochs per step, the papers' 10:1 lr ratio, the built-in pretrained backbone; runlocal and the papers'
  ResNet-101 protocols leave the backbone out."""
  spec = importlib.util.spec_from_file_location("shapes_config", "configs/shapes.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("task=15-5")
  assert (c.schedule.unit, c.schedule.base_length, c.schedule.inc_length) == ("epochs", 8, 8)
  assert c.schedule.base_lr == 10 * c.schedule.inc_lr
  assert c.pretrained == pretrained.BUILTIN and c.model.backbone == "resnet_small"
  assert module.get_config("task=15-5,protocol=ucd").pretrained == ""
  assert smoke_config("task=15-5").pretrained == ""
