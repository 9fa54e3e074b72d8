"""RECALL-style replay: unlabelled images of the old classes, labelled by the previous model.

RECALL (Maracani et al., ICCV 2021) replaces the old classes' training data,
which an incremental step may not keep, with images retrieved from the web
for each old class (its replay variant; the GAN variant is not built). The
user supplies one folder per old class, named as the dataset names the
class: `replay.dir/<class name>/*.jpg` (or .jpeg / .png), as a web crawl
gives them, without masks. At every incremental step those images are mixed
into the batches (`replay.ratio_old : replay.ratio_new` of each batch, 4 : 4
in the RECALL code) with labels from a model:

* `labeller="learned"` (default): the images of the classes step s learned
  are labelled once, by step s's final model, and kept in the workdir
  (`replay_labels/task_<s>/`). The RECALL code labels each class with a
  helper decoder trained when the class is learned, so its labels do not
  change in later steps either.
* `labeller="previous"`: the previous model labels every replay image again
  at every step, inside the jitted train step (the teacher it already runs).
  Its errors then compound over a long sequence (docs/results_shapes.md).

and the rule:

* `label="class"` (default): a pixel is the folder's class where the model
  scores that class above background, else background; the RECALL code's
  helper decoders output exactly {background, the class}.
* `label="argmax"`: the model's argmax over every class it knows (the RECALL
  code's path without helper decoders).

`mix_labels` (on in the RECALL code) also fills the background pixels of the
new images with the previous model's argmax over the old classes, so old
objects in new images are not taught as background. The code also relabels
void pixels; here they stay ignored, because after augmentation void and the
crop's padding carry the same value.

The RECALL code puts whole batches of replay and of new images one after the
other (its interleave ratio 4 : 4 at batch size 4); here every batch has the
same share of each, so BatchNorm sees both in every batch (docs/methods.md).

For `shapes`, `python -m incseg_jax.tools.shapes_replay --out=DIR` writes such
a folder from the procedural generator (objects of one class on fresh
backgrounds, never a training image).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_MODES = ("class", "argmax")


@dataclasses.dataclass
class ReplaySet:
  """Encoded replay images held in host memory.

  Attributes:
    images: object array of encoded image bytes.
    class_ids: (N,) int64 original class id of the folder each image came from.
    paths: the file of each image (for messages).
    labels: object array of PNG labels per image (None where not made yet),
      with `labeller="learned"`.
  """
  images: np.ndarray
  class_ids: np.ndarray
  paths: list[str]
  labels: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.images)

  def select(self, class_to_channel: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(indices, channel of each) of the images whose class is a key of `class_to_channel`."""
    idx = np.flatnonzero(np.isin(self.class_ids, list(class_to_channel)))
    return idx, np.asarray([class_to_channel[int(c)] for c in self.class_ids[idx]], np.int32)


def read_folder(root: str, class_names: dict[int, str], per_class: int = 0) -> ReplaySet:
  """Reads (encoded) and checks the replay images of the given classes.

  Every image is decoded once here, so a damaged file is named before
  training rather than failing a batch hours in.

  Args:
    root: `config.replay.dir`.
    class_names: original class id -> its name, the folder to read.
    per_class: read at most this many images per class (the first in name
      order); 0 reads all.

  Returns:
    The replay set, images of each class in file-name order.

  Raises:
    ValueError: the directory, a class folder or its images are missing, or
      an image cannot be decoded; the message names the path.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (keeps the pure functions import-light)

  if not os.path.isdir(root):
    raise ValueError(f"config.replay.dir={root!r}: not a directory (expected one folder of images per old class, "
                     f"e.g. {os.path.join(root, next(iter(class_names.values()), 'CLASS'), '0001.jpg')})")
  missing = [name for name in class_names.values() if not os.path.isdir(os.path.join(root, name))]
  if missing:
    raise ValueError(f"config.replay.dir={root!r}: no folder for old class(es) {missing} (expected "
                     f"{os.path.join(root, missing[0])}/*.jpg; folder names are the dataset's class names)")
  images, class_ids, paths = [], [], []
  for cid, name in class_names.items():
    folder = os.path.join(root, name)
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not names:
      raise ValueError(f"replay folder {folder} holds no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
    if per_class:
      names = names[:per_class]
    for f in names:
      path = os.path.join(folder, f)
      with open(path, "rb") as fh:
        data = fh.read()
      try:
        shape = tf.io.decode_image(data, channels=3, expand_animations=False).shape
      except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise ValueError(f"replay image {path} cannot be decoded ({str(e).splitlines()[0][:120]}); replace or "
                         "remove it") from None
      if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"replay image {path} is empty ({shape[0]}x{shape[1]})")
      images.append(data)
      class_ids.append(cid)
      paths.append(path)
  return ReplaySet(images=np.asarray(images, dtype=object), class_ids=np.asarray(class_ids, np.int64), paths=paths,
                   labels=np.full(len(images), None, dtype=object))


def batch_composition(batch_size: int, ratio_old: int, ratio_new: int) -> int:
  """Replay images in each global batch of `batch_size` at the ratio old : new.

  Raises:
    ValueError: the ratio does not split the batch into whole images.
  """
  if ratio_old < 0 or ratio_new <= 0:
    raise ValueError(f"config.replay.ratio_old={ratio_old}, ratio_new={ratio_new}: expected ratio_old >= 0 and "
                     "ratio_new > 0 (replay : new images in each batch)")
  n, rem = divmod(batch_size * ratio_old, ratio_old + ratio_new)
  if rem:
    raise ValueError(f"config.replay.ratio_old : ratio_new = {ratio_old} : {ratio_new} does not split "
                     f"config.input.batch_size={batch_size} into whole images; choose a batch size that is a "
                     f"multiple of {(ratio_old + ratio_new) // np.gcd(ratio_old, ratio_old + ratio_new)}")
  return n


def label_replay(teacher_logits: jax.Array, labels: jax.Array, replay_class: jax.Array, *, mode: str,
                 ignore_label: int) -> jax.Array:
  """Labels of the replay images of a batch, from the previous model's logits.

  Args:
    teacher_logits: (B, H, W, C_old) the previous model's logits.
    labels: (B, H, W) the batch's labels; replay images carry 0 on their own
      pixels and `ignore_label` on the crop's padding.
    replay_class: (B,) int, the channel of the class a replay image was
      retrieved for; 0 for the step's own images (left unchanged).
    mode: "class" or "argmax" (see the module docstring).
    ignore_label: the void label (kept).

  Returns:
    (B, H, W) int32 labels.
  """
  if mode not in LABEL_MODES:
    raise ValueError(f"replay label mode {mode!r}: expected one of {LABEL_MODES}")
  logits = teacher_logits.astype(jnp.float32)
  rc = replay_class.astype(jnp.int32)[:, None, None]
  if mode == "class":
    score = jnp.take_along_axis(logits, jnp.broadcast_to(rc[..., None], logits.shape[:3] + (1,)), axis=-1)[..., 0]
    new = jnp.where(score > logits[..., 0], rc, 0)
  else:
    new = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  is_replay = (rc > 0) & (labels != ignore_label)
  return jnp.where(is_replay, new, labels).astype(jnp.int32)


def mix_background(teacher_logits: jax.Array, labels: jax.Array, replay_class: jax.Array) -> jax.Array:
  """The new images' background pixels labelled with the previous model's argmax (RECALL's mix_labels).

  Args:
    teacher_logits: (B, H, W, C_old).
    labels: (B, H, W) int labels.
    replay_class: (B,) int, > 0 on replay images (left unchanged).

  Returns:
    (B, H, W) int32 labels.
  """
  old = jnp.argmax(teacher_logits, axis=-1).astype(jnp.int32)
  own = (replay_class <= 0)[:, None, None]
  return jnp.where(own & (labels == 0), old, labels).astype(jnp.int32)


def relabel(teacher_logits: jax.Array, labels: jax.Array, replay_class: jax.Array, *, mode: str, mix_labels: bool,
            ignore_label: int) -> jax.Array:
  """Both label rules of a replay batch (see `label_replay`, `mix_background`)."""
  out = label_replay(teacher_logits, labels, replay_class, mode=mode, ignore_label=ignore_label)
  if mix_labels:
    out = mix_background(teacher_logits, out, replay_class)
  return out


LABELLERS = ("learned", "previous")
LABELS_DIR = "replay_labels"


def label_images(forward, images: np.ndarray, channels: np.ndarray, *, mode: str, input_cfg,
                 bucket: int = 32, chunk: int = 64) -> list[bytes]:
  """PNG-encoded labels of replay images, from one model's eval-mode logits (`label_replay`'s rule).

  Args:
    forward: `(images (B, H, W, 3) normalised, valid (B, H, W) bool) -> logits (B, H, W, C)`.
    images: encoded replay images.
    channels: the channel each image stands for.
    mode: "class" or "argmax".
    input_cfg: `config.input` (normalisation).
    bucket: images are padded to a multiple of this (few compiled shapes); the
      padding is masked out of the model's image pooling and cut off again.
    chunk: images per forward call (images of one padded shape).

  Returns:
    One PNG (uint8 channel ids, at the image's own size) per image, in order.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  mean, std = np.asarray(input_cfg.mean, np.float32), np.asarray(input_cfg.std, np.float32)
  decoded = [tf.io.decode_image(data, channels=3, expand_animations=False).numpy() for data in images]
  padded = [(-(-im.shape[0] // bucket) * bucket, -(-im.shape[1] // bucket) * bucket) for im in decoded]
  out: list[bytes | None] = [None] * len(decoded)
  for shape in sorted(set(padded)):
    members = [i for i, p in enumerate(padded) if p == shape]
    for start in range(0, len(members), chunk):
      part = members[start:start + chunk]
      x = np.zeros((len(part),) + shape + (3,), np.float32)
      valid = np.zeros((len(part),) + shape, bool)
      for j, i in enumerate(part):
        h, w = decoded[i].shape[:2]
        x[j, :h, :w] = (decoded[i].astype(np.float32) / 255.0 - mean) / std
        valid[j, :h, :w] = True
      labels = np.asarray(label_replay(forward(x, valid), jnp.zeros(valid.shape, jnp.int32),
                                       jnp.asarray(np.asarray(channels)[part], jnp.int32), mode=mode,
                                       ignore_label=255))
      for j, i in enumerate(part):
        h, w = decoded[i].shape[:2]
        out[i] = tf.io.encode_png(labels[j, :h, :w].astype(np.uint8)[..., None]).numpy()
  return out


def labels_dir(workdir: str, task_index: int) -> str:
  """Where the labels made by task step `task_index`'s model (for the classes it learned) are kept."""
  return os.path.join(workdir, LABELS_DIR, f"task_{task_index:02d}")


def save_labels(directory: str, names: Sequence[str], labels: Sequence[bytes]) -> None:
  """Writes one PNG per image (`names`: file names) and, last, a `done` marker (a partial write is redone)."""
  os.makedirs(directory, exist_ok=True)
  for name, data in zip(names, labels):
    with open(os.path.join(directory, name), "wb") as f:
      f.write(data)
  with open(os.path.join(directory, "done"), "w") as f:
    f.write(f"{len(labels)}\n")


def load_labels(directory: str, names: Sequence[str]) -> list[bytes] | None:
  """The labels `save_labels` wrote for `names`, or None when they are not (all) there."""
  if not os.path.exists(os.path.join(directory, "done")):
    return None
  out = []
  for name in names:
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      return None
    with open(path, "rb") as f:
      out.append(f.read())
  return out


def label_file(path: str) -> str:
  """The label file name of a replay image: `<class folder>__<stem>.png` (unique across folders)."""
  folder, name = os.path.split(path)
  return f"{os.path.basename(folder)}__{os.path.splitext(name)[0]}.png"


def old_class_names(old_classes: Sequence[int], names: Sequence[str]) -> dict[int, str]:
  """Original class id -> name of the classes a replay folder must hold."""
  return {int(c): names[c] for c in old_classes}
