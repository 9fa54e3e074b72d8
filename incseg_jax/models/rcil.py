"""RCIL's representation-compensation branches (Zhang et al., CVPR 2022; public code zhangchbin/RCIL).

This module owns what makes a model two-branch and plain again:

  * `Branches`, the `rc_branches` attribute of `SegModel`, `ResNet` and
    `ASPPv3`: every converted conv + BatchNorm becomes two parallel
    conv + BatchNorm branches, the plain-named one (`conv2`, `bn2`) and a twin
    (`conv2_new`, `bn2_new`), mixed per channel by `mix` before the layer's
    activation (or its residual add). The first branch keeps the plain names,
    so the plain model's parameter paths are unchanged and a merged checkpoint
    is an ordinary checkpoint.
  * `expand`: plain variables -> two-branch variables, both branches the
    plain layer (the model's function is unchanged).
  * `merge`: two-branch variables -> plain variables; exact in eval mode
    (the re-parameterisation: each branch's BatchNorm is folded into its conv,
    the two halves are added, and the sum is written back as conv + BatchNorm).
  * `two_branch_model` and `frozen_branch_prefixes`, which the `rcil` preset
    (incseg_jax/methods/rcil.py) trains with.

Converted layers, as the public code converts them: the 3x3 conv of every
bottleneck block (`modules/residual.py`, `conv2` / `conv2_new`) and the 1x1
and three atrous convs of DeepLab-v3's ASPP (`modules/deeplab.py`,
`map_convs` / `map_convs_new`; not its image pooling nor its projection).
The code has no basic blocks; ours (ResNet-18/34, `resnet_small`) convert
both of their 3x3 convs. The stem, the 1x1 convs, the shortcuts, DeepLab-v2's
biased convs and the classifier stay single.

The mix (the code's "random drop-path"): in training one r ~ U[0, 1) per
channel and forward pass, shared by the whole batch and every position (the
code's `torch.rand(1, C, 1, 1)`); r < 0.33 takes the first branch only,
0.33 <= r < 0.66 the second only, otherwise the mean of both. In evaluation
always the mean. Each converted layer draws its own r.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from incseg_jax.models.resnet import BN_EPSILON

NEW_SUFFIX = "_new"  # the second branch's conv / BatchNorm: `<name>_new` beside `<name>`

# The code's thresholds on r: below the first the first branch alone, below
# the second the second branch alone, else the mean of both.
FIRST_ONLY_BELOW, SECOND_ONLY_BELOW = 0.33, 0.66


@dataclasses.dataclass(frozen=True)
class Branches:
  """Two parallel branches at every converted conv + BatchNorm (see the module doc).

  The models read only this object (`resnet.conv_bn`), so they need not
  import this module.

  Attributes:
    freeze_first: the plain-named branch is the previous step's merged layer:
      its BatchNorm uses its running statistics even in training (its
      parameters are frozen by the step's frozen prefixes,
      `frozen_branch_prefixes`). False at step 0, where both branches train.
  """
  freeze_first: bool = False
  suffix: ClassVar[str] = NEW_SUFFIX

  def mix(self, first: jax.Array, second: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """`mix` (module level)."""
    return mix(first, second, key)


def mix(first: jax.Array, second: jax.Array, key: jax.Array | None = None) -> jax.Array:
  """The two branches' outputs (..., C) mixed per channel.

  Args:
    first: the plain-named branch's output.
    second: the twin's output.
    key: None in evaluation (the mean); in training the PRNG key of the
      per-channel draw (module doc).

  Returns:
    An array like `first`.
  """
  if key is None:
    return 0.5 * first + 0.5 * second
  r = jax.random.uniform(key, (first.shape[-1],))
  w = jnp.where(r < FIRST_ONLY_BELOW, 1.0, jnp.where(r < SECOND_ONLY_BELOW, 0.0, 0.5)).astype(first.dtype)
  return first * w + second * (1 - w)


def two_branch_model(model, task_index: int):
  """The `SegModel` `model` with RCIL's branches; the plain-named ones frozen after step 0."""
  return model.clone(rc_branches=Branches(freeze_first=task_index > 0))


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(flax.core.unfreeze(dict(tree)), sep="/")


def _unflat(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def plain_path(path: str) -> str:
  """'decoder/conv_1x1_new/kernel' -> 'decoder/conv_1x1/kernel' (the twin's path -> its plain-named one)."""
  return "/".join(part[:-len(NEW_SUFFIX)] if part.endswith(NEW_SUFFIX) else part for part in path.split("/"))


def branch_layers(params: Mapping[str, Any]) -> list[tuple[str, str]]:
  """(conv, BatchNorm) module paths of the plain-named branches of a two-branch parameter tree.

  Found from the twins' convs (`<conv>_new/kernel`); a conv `conv<x>` pairs
  with the BatchNorm `bn<x>` beside it (conv2/bn2, conv_1x1/bn_1x1,
  conv_atrous0/bn_atrous0).

  Raises:
    ValueError: a twin conv whose name does not start with `conv`, or whose
      plain conv or either BatchNorm is missing.
  """
  flat = _flat(params)
  pairs = []
  for path in sorted(flat):
    parent, _, leaf = path.rpartition("/")
    if leaf != "kernel" or not parent.endswith(NEW_SUFFIX):
      continue
    conv = parent[:-len(NEW_SUFFIX)]
    where, _, name = conv.rpartition("/")
    if not name.startswith("conv"):
      raise ValueError(f"RCIL branches: {parent} is not a conv named conv*, no BatchNorm to pair it with")
    bn = f"{where}/bn{name[len('conv'):]}" if where else f"bn{name[len('conv'):]}"
    for needed in (f"{conv}/kernel", f"{bn}/scale", f"{bn}/bias", f"{bn}{NEW_SUFFIX}/scale", f"{bn}{NEW_SUFFIX}/bias"):
      if needed not in flat:
        raise ValueError(f"RCIL branches: {parent} has no {needed} beside it")
    pairs.append((conv, bn))
  return pairs


def frozen_branch_prefixes(abstract_variables: Mapping[str, Any]) -> tuple[str, ...]:
  """The parameter prefixes of the plain-named branches (conv and BatchNorm of each converted layer).

  Frozen after step 0, where they hold the previous step's merged layers.
  """
  return tuple(p for conv, bn in branch_layers(abstract_variables["params"]) for p in (conv, bn))


def expand(plain_variables: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
  """The two-branch variables whose shapes are `target`'s, both branches the plain layer.

  Args:
    plain_variables: a plain model's variables ({"params", "batch_stats"}).
    target: the two-branch model's abstract variables (shapes and dtypes,
      `models.abstract_variables`).

  Returns:
    Nested dict of host arrays: every leaf of `plain_variables` as it is (the
    same object), every twin leaf a copy of its plain-named one.

  Raises:
    ValueError: a leaf of `target` without a plain counterpart of its shape,
      or a plain leaf `target` does not have.
  """
  plain = _flat(plain_variables)
  out = {}
  for path, spec in _flat(target).items():
    source = plain_path(path)
    if source not in plain:
      raise ValueError(f"RCIL expand: {path} has no counterpart {source} in the plain variables")
    value = np.asarray(plain[source])
    if value.shape != tuple(spec.shape):
      raise ValueError(f"RCIL expand: {path} {tuple(spec.shape)} vs the plain {source} {value.shape}")
    out[path] = value if source == path else value.copy()
  extra = sorted(set(plain) - {plain_path(p) for p in out})
  if extra:
    raise ValueError(f"RCIL expand: plain leaves the two-branch model lacks: {extra[:5]}")
  return _unflat(out)


def merge(variables: Mapping[str, Any], eps: float = BN_EPSILON) -> dict[str, Any]:
  """The plain variables computing, in eval mode, what the two-branch `variables` compute.

  Per converted layer, branch i is conv W_i then BatchNorm (scale g_i, bias
  b_i, running mean m_i and variance v_i), i.e. the affine map
  a_i (W_i * x) + c_i with a_i = g_i / sqrt(v_i + eps), c_i = b_i - a_i m_i;
  their eval-mode mean is (0.5 a_1 W_1 + 0.5 a_2 W_2) * x + 0.5 (c_1 + c_2).
  It is written back as one conv + BatchNorm:

    rho = 0.5 (|a_1| + |a_2|)             (1 where 0), per output channel
    W   = (0.5 a_1 W_1 + 0.5 a_2 W_2) / rho
    m   = (0.5 a_1 m_1 + 0.5 a_2 m_2) / rho
    v   = max(s^2 - eps, 0),  s = 0.5 (|g_1| + |g_2|) / rho
    g   = rho sqrt(v + eps),  b = 0.5 (c_1 + c_2) + rho m

  so that g / sqrt(v + eps) = rho and the eval output is the same affine map.
  The choice of rho, m and v does not change that output; it keeps the
  BatchNorm a plausible one for training: m is W's running mean, s estimates
  the channel's standard deviation (the branches' sum, as if fully
  correlated), and a layer merged with an identical twin (both branches equal,
  positive scales) comes back as it was. The code instead writes the sum into
  a conv with a bias and an identity BatchNorm (`run.py`, `convert_model`),
  which a BatchNorm that trains on batch statistics would not keep.

  Computed in float64 and cast back to each leaf's dtype.

  Args:
    variables: two-branch variables ({"params", "batch_stats"}).
    eps: the BatchNorm epsilon (`BN_EPSILON`, the models' own).

  Returns:
    The plain variables: the merged leaves as NumPy arrays, every other leaf
    (and collection) as it was.

  Raises:
    ValueError: a twin without its pair (see `branch_layers`).
  """
  variables = flax.core.unfreeze(dict(variables))
  params = _flat(variables["params"])
  stats = _flat(variables.get("batch_stats", {}))
  f64 = lambda x: np.asarray(x, np.float64)
  for conv, bn in branch_layers(variables["params"]):
    twin_conv, twin_bn = conv + NEW_SUFFIX, bn + NEW_SUFFIX
    a, c, kernels, means, scales = [], [], [], [], []
    for cv, bnn in ((conv, bn), (twin_conv, twin_bn)):
      g, b = f64(params[f"{bnn}/scale"]), f64(params[f"{bnn}/bias"])
      m, v = f64(stats[f"{bnn}/mean"]), f64(stats[f"{bnn}/var"])
      a_i = g / np.sqrt(v + eps)
      a.append(a_i)
      c.append(b - a_i * m)
      kernels.append(f64(params[f"{cv}/kernel"]))
      means.append(m)
      scales.append(np.abs(g))
    rho = 0.5 * (np.abs(a[0]) + np.abs(a[1]))
    rho = np.where(rho > 0, rho, 1.0)
    kernel = (0.5 * a[0] * kernels[0] + 0.5 * a[1] * kernels[1]) / rho  # HWIO: the output channel is last
    mean = (0.5 * a[0] * means[0] + 0.5 * a[1] * means[1]) / rho
    std = 0.5 * (scales[0] + scales[1]) / rho
    var = np.maximum(std**2 - eps, 0.0)
    updates = ((params, f"{conv}/kernel", kernel), (params, f"{bn}/scale", rho * np.sqrt(var + eps)),
               (params, f"{bn}/bias", 0.5 * (c[0] + c[1]) + rho * mean), (stats, f"{bn}/mean", mean),
               (stats, f"{bn}/var", var))
    for tree, path, value in updates:
      tree[path] = value.astype(np.asarray(tree[path]).dtype)
    for tree in (params, stats):
      for path in [p for p in tree if p.startswith(twin_conv + "/") or p.startswith(twin_bn + "/")]:
        del tree[path]
  left = sorted(p for p in list(params) + list(stats) if p != plain_path(p))
  if left:
    raise ValueError(f"RCIL merge: second-branch leaves without a pair: {left[:5]}")
  variables["params"] = _unflat(params)
  if "batch_stats" in variables:
    variables["batch_stats"] = _unflat(stats)
  return variables
