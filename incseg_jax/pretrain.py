"""Pretrains a `resnet_small` backbone on `shapes_pretrain` and writes it as a torchvision-layout weight file.

  python -m incseg_jax.pretrain --out=FILE.npz [--steps=N --seed=S --width=16 --blocks=1,1,1,1 \
      --batch_size=B --lr=LR --output_stride=8]

This is the `shapes` benchmark's ImageNet step: the backbone the segmentation runs start from
(`config.pretrained=FILE`, or `config.pretrained="shapes_builtin"`, which builds the default file once
into the data dir; `models/pretrained.py`) learns shape and colour features on a separate procedural
classification set (`data/shapes_pretrain.py`), a broader vocabulary than the benchmark's 20 classes.

Network: `resnet_small(width, blocks)`, global average pooling of stage 4, and two linear heads: which
shapes and which colours the image shows, each trained with sigmoid binary cross-entropy (multi-label,
summed over the classes so that each head's gradient has the scale of one softmax cross-entropy).

Choices (from short exploratory runs on the 2-core machine while this was written; their scripts were
not kept, so read them as reasons, not as figures to reproduce; `--output_stride` and `--lr` rerun the
two comparisons that the command can express):

* Output stride 8, not ImageNet's 32: the benchmark runs the backbone at OS8 (configs/shapes.py), and at
  OS32 (a 2x2 stage-4 map for 64 px images) the shapes were learned markedly worse in the same budget.
  The weights do not depend on the output stride; the sidecar records it.
* SGD with Nesterov momentum 0.9, lr 0.1, 5% linear warm-up then cosine decay, weight decay 1e-4 on the
  kernels: the benchmark's own optimizer; it did better than AdamW, and lr 0.1 better than 0.05.
* A pool of `train_images` images, reshuffled every epoch, each image turned by one of the square's
  eight symmetries: with a 4x smaller pool and flips only, the network memorised the shape labels.

The defaults (`python -m incseg_jax.pretrain --out=FILE`, or the first shapes run with
`config.pretrained=shapes_builtin`) built in 140-160 s on that machine: held-out colour mAP 0.999 (chance
0.10), shape mAP 0.287 (chance 0.11; the slow part, still improving at the end); the sidecar records
the figures of every build. Inputs are normalised
like the benchmark's (`config.input.mean/std`), so the backbone meets the same input statistics after
import.

Everything is a function of `seed` (initialisation, order, symmetries); the pretraining set itself is
fixed, as ImageNet is. The written file holds the backbone only (`conv1.weight`, `bn1.*`,
`layer1.0.conv1.weight`, ..., OIHW kernels), with a sidecar `FILE.json` that records what made it;
`pretrained.validate` compares the sidecar with the run's config.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from incseg_jax import config_lib
from incseg_jax import files
from incseg_jax.data import shapes_pretrain
from incseg_jax.models import pretrained
from incseg_jax.models import resnet
from incseg_jax.models import resnet_names
from incseg_jax.models import variables as model_variables
from incseg_jax.models import weight_files

SOURCE = pretrained.PRETRAIN_SOURCE
BACKBONE = "resnet_small"
LAYOUT = "torchvision"
# The benchmark's input normalisation (ImageNet's), read from the one place it is defined.
MEAN = tuple(config_lib.base_config().input.mean)
STD = tuple(config_lib.base_config().input.std)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a pretraining run does; the defaults build `config.pretrained="shapes_builtin"`.

  Attributes:
    width: `model.small_width`.
    blocks: `model.small_blocks`.
    output_stride: of the backbone while pretraining (8: as the benchmark uses it, see the module doc).
    seed: initialisation, sample order and symmetries.
    steps: SGD steps.
    batch_size: images per step.
    lr: peak learning rate (after `warmup` of the steps, cosine decay to 0).
    warmup: fraction of the steps with a linear warm-up.
    momentum: Nesterov momentum.
    weight_decay: L2 on conv and dense kernels (not BatchNorm, not biases).
    train_images: size of the training pool (examples 0.. of the "train" split).
    heldout_images: examples 0.. of the "heldout" split the final metric is computed on.
    log_every: steps between progress lines.
  """

  width: int = 16
  blocks: tuple[int, ...] = (1, 1, 1, 1)
  output_stride: int = 8
  seed: int = 0
  steps: int = 3000
  batch_size: int = 32
  lr: float = 0.1
  warmup: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 1e-4
  train_images: int = 16384
  heldout_images: int = 1024
  log_every: int = 250


class PretrainNet(nn.Module):
  """`resnet_small` backbone + global average pooling + linear shape and colour heads."""

  width: int = 16
  blocks: tuple[int, ...] = (1, 1, 1, 1)
  output_stride: int = 8

  @nn.compact
  def __call__(self, x, train: bool):
    """Returns `(shape_logits (B, len(SHAPES)), colour_logits (B, len(COLOURS)))`."""
    features = resnet.resnet_small(self.width, self.blocks, output_stride=self.output_stride,
                                   name="backbone")(x, train)["encoder"]
    pooled = features.mean(axis=(1, 2))
    shape_logits = nn.Dense(len(shapes_pretrain.SHAPES), name="shape_head")(pooled)
    colour_logits = nn.Dense(len(shapes_pretrain.COLOUR_NAMES), name="colour_head")(pooled)
    return shape_logits, colour_logits


def normalise(images: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) images -> float32, as the benchmark's input pipeline normalises them."""
  x = images.astype(np.float32) / 255.0
  return (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


def init_variables(settings: Settings) -> dict[str, Any]:
  """Fresh variables of `PretrainNet` from `settings.seed`."""
  model = PretrainNet(settings.width, tuple(settings.blocks), settings.output_stride)
  x = jnp.zeros((1, shapes_pretrain.IMAGE_SIZE, shapes_pretrain.IMAGE_SIZE, 3), jnp.float32)
  return model_variables.jit_init(lambda key: model.init(key, x, train=False))(jax.random.key(settings.seed))


def make_optimizer(settings: Settings) -> optax.GradientTransformation:
  """SGD, Nesterov momentum, weight decay on kernels, warm-up + cosine decay (see the module doc)."""
  warmup = int(settings.warmup * settings.steps)
  if warmup:
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.lr, warmup, settings.steps)
  else:  # A few steps only (tests): optax warns about a zero-length warm-up.
    schedule = optax.cosine_decay_schedule(settings.lr, settings.steps)
  kernels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == "kernel", params)
  return optax.chain(optax.add_decayed_weights(settings.weight_decay, mask=kernels),
                     optax.sgd(schedule, momentum=settings.momentum, nesterov=True))


def loss_fn(params, batch_stats, images, shape_targets, colour_targets, *, model: PretrainNet):
  """Sum of the two heads' sigmoid BCE (summed over classes, averaged over images), in train mode.

  Returns:
    `(loss, (new batch_stats, shape loss, colour loss))`.
  """
  (shape_logits, colour_logits), updates = model.apply(
    {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"])
  shape_loss = optax.sigmoid_binary_cross_entropy(shape_logits, shape_targets).sum(axis=-1).mean()
  colour_loss = optax.sigmoid_binary_cross_entropy(colour_logits, colour_targets).sum(axis=-1).mean()
  return shape_loss + colour_loss, (updates["batch_stats"], shape_loss, colour_loss)


def make_train_step(settings: Settings, tx: optax.GradientTransformation) -> Callable:
  """One jitted step `(variables, opt_state, batch) -> (variables, opt_state, (loss, shape, colour))`."""
  model = PretrainNet(settings.width, tuple(settings.blocks), settings.output_stride)

  @jax.jit
  def step(variables, opt_state, images, shape_targets, colour_targets):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (batch_stats, shape_loss, colour_loss)), grads = grad_fn(
      variables["params"], variables["batch_stats"], images, shape_targets, colour_targets, model=model)
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    return {"params": params, "batch_stats": batch_stats}, opt_state, (loss, shape_loss, colour_loss)

  return step


def batch_indices(settings: Settings, step: int) -> tuple[np.ndarray, np.ndarray]:
  """Pool indices of training step `step` and their symmetries (0..7): a function of (seed, step).

  Each epoch is a fresh permutation of the pool; a batch never spans two epochs (the pool's last
  `train_images % batch_size` images of an epoch are skipped, a different few each epoch).
  """
  per_epoch = settings.train_images // settings.batch_size
  epoch, position = divmod(step, per_epoch)
  order = np.random.default_rng([settings.seed, epoch]).permutation(settings.train_images)
  indices = order[position * settings.batch_size:(position + 1) * settings.batch_size]
  symmetries = np.random.default_rng([settings.seed, epoch, position]).integers(0, 8, settings.batch_size)
  return indices, symmetries


def make_batch(pool: dict[str, np.ndarray], indices: np.ndarray, symmetries: np.ndarray):
  """Normalised images and the two targets of `indices`, each image turned by one of the square's 8 symmetries.

  Quarter turns and mirror images keep every label: the vocabulary names shapes, not orientations (a
  square's 45-degree turn, the diamond, is not among them). That multiplies the pool by eight and keeps
  the backbone from memorising it.
  """
  images = [pool["image"][i] if k < 4 else pool["image"][i][:, ::-1] for i, k in zip(indices, symmetries)]
  images = np.stack([np.rot90(image, k % 4) for image, k in zip(images, symmetries)])
  return normalise(images), pool["shapes"][indices], pool["colours"][indices]


def train(settings: Settings, pool: dict[str, np.ndarray] | None = None,
          log: Callable[[str], None] | None = print) -> tuple[dict[str, Any], list[tuple[float, float, float]]]:
  """Trains `PretrainNet` for `settings.steps` steps.

  Args:
    settings: see `Settings`.
    pool: training arrays (`shapes_pretrain.generate_arrays` output); None generates
      `settings.train_images` of them.
    log: progress lines go here every `settings.log_every` steps; None for silence.

  Returns:
    `(variables, losses)`: the final variables (host NumPy arrays) and each step's (total, shape,
    colour) loss.
  """
  check_settings(settings)
  if pool is None:
    pool = shapes_pretrain.generate_arrays("train", 0, settings.train_images)
  if len(pool["image"]) != settings.train_images:
    raise ValueError(f"the pool holds {len(pool['image'])} images, settings.train_images={settings.train_images}")
  variables = init_variables(settings)
  tx = make_optimizer(settings)
  opt_state = tx.init(variables["params"])
  step_fn = make_train_step(settings, tx)
  losses, start = [], time.time()
  for step in range(settings.steps):
    variables, opt_state, metrics = step_fn(variables, opt_state, *make_batch(pool, *batch_indices(settings, step)))
    losses.append(metrics)
    if log and ((step + 1) % settings.log_every == 0 or step + 1 == settings.steps):
      recent = np.asarray(jax.device_get(losses[-settings.log_every:]), np.float64).mean(axis=0)
      log(f"pretrain step {step + 1}/{settings.steps}: loss {recent[0]:.4f} (shapes {recent[1]:.4f}, "
          f"colours {recent[2]:.4f}), {time.time() - start:.0f} s")
  losses = [tuple(float(v) for v in m) for m in jax.device_get(losses)]
  return jax.device_get(variables), losses


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Per-class average precision of (N, C) scores against 0/1 targets; NaN for a class with no positive.

  AP = mean over the positives of the precision at their rank (scores sorted in decreasing order; ties
  broken by index, as a stable sort does).
  """
  ap = np.full(scores.shape[1], np.nan)
  for c in range(scores.shape[1]):
    t = targets[np.argsort(-scores[:, c], kind="stable"), c] > 0.5
    if t.any():
      precision = np.cumsum(t) / np.arange(1, len(t) + 1)
      ap[c] = precision[t].mean()
  return ap


def evaluate(variables: dict[str, Any], settings: Settings, heldout: dict[str, np.ndarray] | None = None,
             batch_size: int = 256) -> dict[str, float]:
  """The heads' held-out metrics (eval-mode BatchNorm).

  Returns:
    `map` (mean of the two heads' mAP: the figure reported and recorded), `shape_map`, `colour_map`,
    `shape_chance`, `colour_chance` (the mAP of uninformative scores: each head's mean label frequency),
    and `shape_exact`, `colour_exact` (fraction of images whose predicted set, sigmoid > 0.5, is exactly
    right).
  """
  if heldout is None:
    heldout = shapes_pretrain.generate_arrays("heldout", 0, settings.heldout_images)
  model = PretrainNet(settings.width, tuple(settings.blocks), settings.output_stride)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  outputs = [apply(variables, normalise(heldout["image"][i:i + batch_size]))
             for i in range(0, len(heldout["image"]), batch_size)]
  out = {}
  for k, name in enumerate(("shape", "colour")):
    scores = np.concatenate([np.asarray(o[k], np.float64) for o in outputs])
    targets = heldout[f"{name}s"].astype(np.float64)
    out[f"{name}_map"] = float(np.nanmean(average_precision(scores, targets)))
    out[f"{name}_chance"] = float(targets.mean())
    out[f"{name}_exact"] = float(np.mean(np.all((scores > 0) == (targets > 0.5), axis=1)))
  out["map"] = (out["shape_map"] + out["colour_map"]) / 2
  return out


def write(variables: dict[str, Any], path: str, record: dict[str, Any]) -> None:
  """Writes the backbone of `variables` to `path` (torchvision layout) and `record` to its sidecar.

  Both are written to temporary names and renamed, the sidecar first, so a reader that finds the weight
  file also finds its record, and a killed build leaves no weight file behind.
  """
  path = os.fspath(path)
  ext = weight_files.output_extension(path)
  backbone = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
  state_dict = resnet_names.export_backbone(backbone, layout=LAYOUT)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}{ext}"  # save_state_dict picks the format from the extension
  try:
    weight_files.save_state_dict(state_dict, tmp)
    files.write_json_atomic(pretrained.sidecar_path(path), record)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def check_settings(settings: Settings) -> None:
  """Raises ValueError naming the first field of `settings` that describes no run."""
  if len(settings.blocks) != 4 or min(settings.blocks) < 1 or settings.width < 1:
    raise ValueError(f"width={settings.width}, blocks={tuple(settings.blocks)}: need a positive width and "
                     "four positive block counts")
  if settings.output_stride not in resnet.OUTPUT_STRIDES:
    raise ValueError(f"output_stride={settings.output_stride}: expected one of {resnet.OUTPUT_STRIDES}")
  for name in ("steps", "batch_size", "train_images", "heldout_images", "log_every"):
    if getattr(settings, name) < 1:
      raise ValueError(f"{name}={getattr(settings, name)} must be positive")
  if settings.train_images < settings.batch_size:
    raise ValueError(f"train_images={settings.train_images} is smaller than batch_size={settings.batch_size}")


def build(path: str, settings: Settings = Settings(), log: Callable[[str], None] | None = print) -> dict[str, Any]:
  """Pretrains with `settings`, evaluates on the held-out split and writes `path` + its sidecar.

  Returns:
    The sidecar record (also written to `pretrained.sidecar_path(path)`).

  Raises:
    ValueError: an output extension `weight_files.save_state_dict` cannot write, or settings that
      describe no network.
  """
  weight_files.output_extension(os.fspath(path))  # Fail before training, not after.
  check_settings(settings)
  start = time.time()
  variables, losses = train(settings, log=log)
  metrics = evaluate(variables, settings)
  seconds = time.time() - start
  if log:
    log(f"pretrain held-out ({settings.heldout_images} images): mAP {metrics['map']:.3f} (shapes "
        f"{metrics['shape_map']:.3f}, chance {metrics['shape_chance']:.3f}; colours {metrics['colour_map']:.3f}, "
        f"chance {metrics['colour_chance']:.3f}); exact label sets: shapes {metrics['shape_exact']:.3f}, "
        f"colours {metrics['colour_exact']:.3f}; {seconds:.0f} s")
  record = {
    "source": SOURCE, "pretrain_set": shapes_pretrain.NAME, "pretrain_set_version": shapes_pretrain.VERSION,
    "backbone": BACKBONE, "width": settings.width, "blocks": list(settings.blocks), "layout": LAYOUT,
    "activation": "relu", "output_stride": settings.output_stride, "seed": settings.seed,
    "steps": settings.steps, "batch_size": settings.batch_size, "lr": settings.lr,
    "weight_decay": settings.weight_decay, "train_images": settings.train_images,
    "heldout_images": settings.heldout_images, "heldout": metrics, "final_loss": losses[-1][0],
    "seconds": round(seconds, 1),
  }
  write(variables, path, record)
  return record


def parse_blocks(text: str) -> tuple[int, ...]:
  """'1,1,1,1' (or '1-1-1-1') -> (1, 1, 1, 1).

  Raises:
    ValueError: not four positive integers.
  """
  try:
    blocks = tuple(int(b) for b in text.replace("-", ",").split(","))
  except ValueError:
    blocks = ()
  if len(blocks) != 4 or min(blocks) < 1:
    raise ValueError(f"--blocks={text!r}: expected four positive integers, e.g. --blocks=1,1,1,1")
  return blocks


def main(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from incseg_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup_command(argv)
  f = flags.FLAGS
  with runtime.clear_errors():
    settings = Settings(width=f.width, blocks=parse_blocks(f.blocks), seed=f.seed, steps=f.steps,
                        batch_size=f.batch_size, lr=f.lr, output_stride=f.output_stride)
    build(f.out, settings)
    print(f"wrote {f.out} and {pretrained.sidecar_path(f.out)}", flush=True)


def _define_flags() -> None:
  """Flags of the command only: importing this module (the built-in cache does) defines none."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  d = Settings()
  flags.DEFINE_string("out", None, "Weight file to write (.npz or .safetensors); FILE.json gets the record.")
  flags.DEFINE_integer("steps", d.steps, "SGD steps.")
  flags.DEFINE_integer("seed", d.seed, "Initialisation, sample order and symmetries.")
  flags.DEFINE_integer("width", d.width, "model.small_width of the backbone.")
  flags.DEFINE_string("blocks", ",".join(map(str, d.blocks)), "model.small_blocks, e.g. 1,1,1,1.")
  flags.DEFINE_integer("batch_size", d.batch_size, "Images per step.")
  flags.DEFINE_float("lr", d.lr, "Peak learning rate.")
  flags.DEFINE_integer("output_stride", d.output_stride, "Output stride of the backbone while pretraining.")
  flags.mark_flags_as_required(["out"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
