"""Segmentation models: ResNet encoders, DeepLab decoders, incremental head.

Public API: ``SegModel``, ``build_model``, ``init_variables``,
``grow_variables``.
"""

from incseg_jax.models.segmodel import SegModel, build_model
from incseg_jax.models.variables import add_head, batchnorm_prefixes, grow_variables, init_variables

__all__ = ["SegModel", "add_head", "batchnorm_prefixes", "build_model", "grow_variables", "init_variables"]
