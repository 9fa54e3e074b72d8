"""Mixed precision: convolutions in bfloat16, parameters, statistics and every loss in float32."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from incseg_jax import models
from incseg_jax import train
from incseg_jax import validate

MODEL = dict(backbone="resnet_small", decoder="deeplab_v3", output_stride=8, aspp_channels=8,
             atrous_rates=(1, 2, 3), small_width=8, small_blocks=(1, 1, 1, 1), bn_frozen=False)


def _model(dtype):
  return models.build_model(ml_collections.ConfigDict(dict(MODEL, dtype=dtype)), (4, 2))


def test_bfloat16_convolutions_with_float32_parameters_statistics_and_outputs():
  model = _model("bfloat16")
  variables = models.init_variables(model, jax.random.key(0), 32)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  out, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert {leaf.dtype for leaf in jax.tree.leaves(out)} == {jnp.dtype("float32")}
  assert {leaf.dtype for leaf in jax.tree.leaves(mutated)} == {jnp.dtype("float32")}
  jaxpr = str(jax.make_jaxpr(lambda v, i: model.apply(v, i, train=False))(variables, x))
  convs = [line for line in jaxpr.splitlines() if "conv_general_dilated" in line]
  assert convs and all("bf16" in line for line in convs)


def test_bfloat16_logits_stay_close_to_float32():
  variables = models.init_variables(_model("float32"), jax.random.key(0), 32)
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  f32 = _model("float32").apply(variables, x, train=False)["logits"]
  bf16 = _model("bfloat16").apply(variables, x, train=False)["logits"]
  scale = float(jnp.abs(f32).max())
  assert float(jnp.abs(f32 - bf16).max()) < 0.05 * scale
  assert float(jnp.abs(f32 - bf16).max()) > 0  # really computed in another precision


def test_unknown_dtype_is_named(smoke_config):
  cfg = smoke_config()
  cfg.model.dtype = "float8"
  with pytest.raises(ValueError, match="model.dtype='float8'"):
    validate.config(cfg)


def test_a_bfloat16_run_of_plop_ucd_has_no_nonfinite_step(smoke_config, tmp_path):
  cfg = smoke_config("method=plop_ucd,task=15-5")
  cfg.model.dtype = "bfloat16"
  results = train.run(cfg, str(tmp_path / "run"))
  assert all(step["skipped_batches"] == 0 for step in results["steps"])
