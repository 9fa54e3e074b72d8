"""Segmentation models: ResNet encoders, DeepLab decoders, incremental head.

Public API: `SegModel`, `build_model`, `check_config`, `init_variables`, `abstract_variables`,
`add_head`, `grow_variables`, `jit_init`, `prediction_scores`, and the parameter-path helpers `path_str`,
`is_frozen`, `frozen_mask`, `batchnorm_prefixes`.
"""

from incseg_jax.models.segmodel import SegModel, build_model, check_config, prediction_scores
from incseg_jax.models.variables import (abstract_variables, add_head, batchnorm_prefixes, frozen_mask,
                                         grow_variables, init_variables, is_frozen, jit_init, path_str)

__all__ = ["SegModel", "abstract_variables", "add_head", "batchnorm_prefixes", "build_model", "check_config",
           "frozen_mask",
           "grow_variables", "init_variables", "is_frozen", "jit_init", "path_str", "prediction_scores"]
