"""tf.data input pipelines for one task step.

A split is read once into host memory *encoded* (PNG/JPEG bytes plus the stored
per-image class list), so task filtering never decodes a mask. Training order
and augmentation are pure functions of (seed, task step, sample position):
sample position p of task step k is example `perm(seed, k, p // n)[p % n]`,
augmented with a stateless key derived from (seed, k, p). Resuming at train
step s is therefore just starting at position s * batch_size, and a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


@dataclasses.dataclass
class EncodedSplit:
  """A dataset split held encoded in host memory.

  Attributes:
    images: object array of encoded image bytes.
    labels: object array of encoded mask bytes.
    classes: per example, the stored array of foreground class ids present.
    pixel_counts: (N, num_classes) int64 pixel count per class id, or None.
    ids: example ids.
    sizes: (N, 2) int (height, width) per example, or None (fixed-size data).
  """
  images: np.ndarray
  labels: np.ndarray
  classes: list[np.ndarray]
  pixel_counts: np.ndarray | None
  ids: list[str]
  sizes: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.images)


def load_split(builder, split: str) -> EncodedSplit:
  """Reads a split without decoding images or masks."""
  if split not in builder.info.splits:
    raise ValueError(f"split {split!r} not in dataset {builder.info.name} "
                     f"(has: {', '.join(builder.info.splits)})")
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()})
  keys = [k for k in ("image", "label", "classes", "pixel_counts", "size", "id") if k in ds.element_spec]
  ds = ds.map(lambda ex: {k: ex[k] for k in keys})
  # Batched reads (one example at a time costs ~2 ms each in eager mode);
  # the variable-length class lists are padded with -1 and stripped below.
  pads = {k: tf.constant(-1 if k == "classes" else 0, ds.element_spec[k].dtype) if ds.element_spec[k].dtype.is_integer
          else tf.constant("", tf.string) for k in keys}
  images, labels, classes, counts, sizes, ids = [], [], [], [], [], []
  for ex in tfds.as_numpy(ds.padded_batch(1024, padding_values=pads)):
    images.extend(ex["image"])
    labels.extend(ex["label"])
    classes.extend(np.asarray(c[c >= 0], np.int64) for c in ex["classes"])
    if "pixel_counts" in ex:
      counts.extend(ex["pixel_counts"])
    if "size" in ex:
      sizes.extend(ex["size"])
    ids.extend(i.decode() for i in ex["id"])
  if not images:
    raise ValueError(f"split {split!r} of dataset {builder.info.name} is empty")
  # Sort by id so that order never depends on the file layout of the build.
  order = np.argsort(np.asarray(ids), kind="stable")
  return EncodedSplit(images=np.asarray(images, dtype=object)[order], labels=np.asarray(labels, dtype=object)[order],
                      classes=[classes[i] for i in order],
                      pixel_counts=np.stack(counts)[order] if counts else None, ids=[ids[i] for i in order],
                      sizes=np.stack(sizes)[order] if sizes else None)


def sample_sequence(indices: np.ndarray, *, seed: int, task_index: int, start: int, stop: int,
                    stream: int = 0) -> np.ndarray:
  """Example indices for sample positions [start, stop) of a task step.

  Epoch e visits `indices` in the order of a permutation seeded by
  (seed, task_index, e) (and `stream` when nonzero: another sequence over
  the same step, e.g. the replay images'); nothing depends on how many
  positions were drawn before, which is what makes resuming exact.
  """
  n = len(indices)
  if n == 0:
    raise ValueError(f"task step {task_index} has no training images")
  out = np.empty(stop - start, np.int64)
  pos = start
  while pos < stop:
    epoch, offset = divmod(pos, n)
    key = [seed, task_index, epoch] + ([stream] if stream else [])
    perm = np.random.default_rng(key).permutation(indices)
    take = min(n - offset, stop - pos)
    out[pos - start:pos - start + take] = perm[offset:offset + take]
    pos += take
  return out


def _decode(image_bytes, label_bytes):
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  label = tf.io.decode_png(label_bytes, channels=1)
  return image, label


def _normalise(image, mean, std):
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def augment(image, label, key, *, crop_size: int, scale_min: float, scale_max: float, flip: bool,
            ignore_label: int, saliency=None):
  """Random scale, pad, crop and flip of an image and its mask, together.

  The image is resized bilinearly and the mask with nearest neighbour so no
  label value is invented; padding uses 0 for the (un-normalised) image and the
  ignore label for the mask, so padded pixels never count in the loss. An
  optional saliency map follows the mask's geometry exactly (nearest
  neighbour), padded with 0 (not salient); it draws no random numbers, so the
  image and mask are the same with or without it.

  Args:
    image: (H, W, 3) uint8.
    label: (H, W, 1) uint8 (already remapped).
    key: a stateless-random seed tensor of shape (2,), int32/int64.
    crop_size: output side.
    scale_min: smallest random scale factor.
    scale_max: largest random scale factor.
    flip: random horizontal flip.
    ignore_label: fill value for padded mask pixels.
    saliency: optional (H, W, 1) uint8 saliency map of the image.

  Returns:
    (image float32 (crop, crop, 3) in [0, 255], label uint8 (crop, crop)),
    plus the saliency map uint8 (crop, crop) when one is given.
  """
  keys = tf.random.experimental.stateless_split(key, 4)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.random.stateless_uniform([], keys[0], scale_min, scale_max)
  size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
  image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
  label = tf.image.resize(label, size, method="nearest")
  h, w = size[0], size[1]
  ph, pw = tf.maximum(crop_size - h, 0), tf.maximum(crop_size - w, 0)
  image = tf.pad(image, [[0, ph], [0, pw], [0, 0]])
  label = tf.pad(label, [[0, ph], [0, pw], [0, 0]], constant_values=ignore_label)
  h, w = h + ph, w + pw
  oy = tf.random.stateless_uniform([], keys[1], 0, h - crop_size + 1, dtype=tf.int32)
  ox = tf.random.stateless_uniform([], keys[2], 0, w - crop_size + 1, dtype=tf.int32)
  image = image[oy:oy + crop_size, ox:ox + crop_size]
  label = label[oy:oy + crop_size, ox:ox + crop_size]
  if flip:
    do_flip = tf.random.stateless_uniform([], keys[3]) < 0.5
    image = tf.cond(do_flip, lambda: tf.reverse(image, [1]), lambda: image)
    label = tf.cond(do_flip, lambda: tf.reverse(label, [1]), lambda: label)
  image = tf.ensure_shape(image, [crop_size, crop_size, 3])
  label = tf.ensure_shape(label, [crop_size, crop_size, 1])
  if saliency is None:
    return image, label[..., 0]
  # The mask's geometry, step for step: same size, padding offsets, crop and flip.
  saliency = tf.pad(tf.image.resize(saliency, size, method="nearest"), [[0, ph], [0, pw], [0, 0]])
  saliency = saliency[oy:oy + crop_size, ox:ox + crop_size]
  if flip:
    saliency = tf.cond(do_flip, lambda: tf.reverse(saliency, [1]), lambda: saliency)
  return image, label[..., 0], tf.ensure_shape(saliency, [crop_size, crop_size, 1])[..., 0]


def train_batches(split: EncodedSplit, indices: np.ndarray, lut: np.ndarray, input_cfg, *, seed: int,
                  task_index: int, start_step: int, num_steps: int, ignore_label: int,
                  threads: int | None = None, replay: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                  num_replay: int = 0, memory: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                  num_memory: int = 0, saliency: np.ndarray | None = None) -> Iterator[dict]:
  """Yields this host's training batches for train steps [start_step, num_steps).

  Args:
    split: the encoded training split.
    indices: example indices of this task step (after filtering).
    lut: (256,) uint8 label lookup table of the step (original -> target).
    input_cfg: `config.input`.
    seed: experiment seed.
    task_index: task step (folds into order and augmentation).
    start_step: first train step to produce (resume point).
    num_steps: total train steps of the task step.
    ignore_label: void label.
    threads: parallel decode/augment calls (None: tf.data autotunes); the
      batches are the same for any value.
    replay: optional (encoded images, indices into them, channel of each
      index[, encoded PNG labels aligned with the images]) of replay images
      (`incseg_jax.replay`); they fill the last `num_replay / hosts` slots of
      every host's part of each batch, in their own order (a second stream of
      the same seed and step). Without labels they carry label 0 on their
      pixels (the train step labels them).
    num_replay: replay images per global batch (0 without replay).
    memory: optional (training-split indices, label-table id of each, label
      tables (T, 256) uint8) of an exemplar memory (`incseg_jax.memory`):
      labelled images filling the same slots as replay images would, each
      labelled by its own table (the one it was stored with). Not with `replay`.
    num_memory: memory images per global batch.
    saliency: optional object array of PNG saliency maps aligned with
      `split` (`incseg_jax.saliency`); each is augmented with its image.
      Memory and replay slots get an all-zero map: SSUL carves its unknown
      class out of the step's own images only.

  Yields:
    {"image": float32 (B_local, S, S, 3) normalised, "label": int32 (B_local, S, S)}, plus with replay
    "replay_class": int32 (B_local,), the channel a replay image stands for, 0 for the step's own images,
    and with `saliency` "saliency": uint8 (B_local, S, S), nonzero = salient, 0 on padding.
  """
  gbs = input_cfg.batch_size
  nproc = jax.process_count()
  lbs = gbs // nproc
  if replay is not None and memory is not None:
    raise ValueError("replay images and an exemplar memory cannot share a batch's extra slots")
  n_rep = num_replay if replay is not None else num_memory if memory is not None else 0
  if n_rep % nproc or n_rep >= gbs:
    raise ValueError(f"{n_rep} replay images per batch of {gbs} do not split over {nproc} host(s) with room for "
                     "the step's own images")
  rep_local = n_rep // nproc
  new_local, n_new = lbs - rep_local, gbs - n_rep
  positions = np.arange(start_step * gbs, num_steps * gbs, dtype=np.int64)
  t, slot = np.divmod(positions, gbs)
  host, j = np.divmod(slot, lbs)
  # Keep only this host's slots of every global batch.
  keep = host == jax.process_index()
  positions, t, host, j = positions[keep], t[keep], host[keep], j[keep]
  is_rep = j >= new_local
  # Without replay the k-th new image is sample position k (the order every run had before replay existed).
  new_pos = t * n_new + host * new_local + j
  src = is_rep.astype(np.int32)
  idx = np.zeros(len(positions), np.int64)
  # Per sample, what its extra slot needs: a replay image's channel, or a memory image's label-table row
  # (a row of `luts`); 0 for the step's own images.
  slot_value = np.zeros(len(positions), np.int32)
  own = ~is_rep
  if own.any():
    seq = sample_sequence(indices, seed=seed, task_index=task_index, start=start_step * n_new,
                          stop=num_steps * n_new)
    idx[own] = seq[new_pos[own] - start_step * n_new]
  replay_images = replay_labels = None
  luts = np.asarray(lut, np.uint8)[None]  # table 0: the step's own; memory entries bring theirs
  if n_rep:
    extra_indices, extra_values = (replay[1], replay[2]) if replay is not None else (memory[0], memory[1])
    rep_pos = t * n_rep + host * rep_local + (j - new_local)
    order = sample_sequence(np.arange(len(extra_indices)), seed=seed, task_index=task_index,
                            start=start_step * n_rep, stop=num_steps * n_rep, stream=1)
    pick = order[rep_pos[is_rep] - start_step * n_rep]
    idx[is_rep] = extra_indices[pick]
    if replay is not None:
      replay_images = replay[0]
      replay_labels = replay[3] if len(replay) > 3 else None
      slot_value[is_rep] = extra_values[pick]
    else:  # memory: its label table, after the step's own (id 0)
      src[is_rep] = 2
      slot_value[is_rep] = 1 + np.asarray(extra_values)[pick]
      luts = np.concatenate([luts, np.asarray(memory[2], np.uint8)])
  images, labels = split.images, split.labels
  luts_t = tf.constant(luts, tf.uint8)

  def fetch(s, i):
    if s == 1:
      pair = replay_images[i], (replay_labels[i] if replay_labels is not None else b"")
    else:
      pair = images[i], labels[i]
    if saliency is None:
      return pair
    return pair + ((saliency[i] if s == 0 else b""),)

  def load(s, i, pos, value):
    fetched = tf.numpy_function(fetch, [s, i], (tf.string,) * (2 if saliency is None else 3), stateful=False)
    image_b, label_b = fetched[:2]
    image = tf.io.decode_image(image_b, channels=3, expand_animations=False)
    # A replay image has no mask: label 0 on its pixels, labelled in the train step. A memory image is
    # labelled by the table it was stored with (its row in `luts`, carried in `value`), the step's own by row 0.
    table = tf.where(s == 2, value, 0)
    if replay_labels is None:
      label = tf.cond(s == 1, lambda: tf.zeros_like(image[..., :1]),
                      lambda: tf.gather(luts_t[table], tf.cast(tf.io.decode_png(label_b, channels=1), tf.int32)))
    else:  # labelled replay images carry channel ids already
      label = tf.cond(s == 1, lambda: tf.io.decode_png(label_b, channels=1),
                      lambda: tf.gather(luts_t[table], tf.cast(tf.io.decode_png(label_b, channels=1), tf.int32)))
    key = tf.stack([tf.constant(seed * 1000 + task_index, tf.int64), pos])
    kwargs = dict(crop_size=input_cfg.crop_size, scale_min=input_cfg.scale_min, scale_max=input_cfg.scale_max,
                  flip=input_cfg.flip, ignore_label=ignore_label)
    if saliency is None:
      image, label = augment(image, label, key, **kwargs)
    else:  # the step's own images only; a memory or replay image's map is all 0
      sal = tf.cond(s == 0, lambda: tf.io.decode_png(fetched[2], channels=1), lambda: tf.zeros_like(image[..., :1]))
      image, label, sal = augment(image, label, key, saliency=sal, **kwargs)
    out = {"image": _normalise(image, input_cfg.mean, input_cfg.std), "label": tf.cast(label, tf.int32)}
    if replay is not None:
      out["replay_class"] = value
    if saliency is not None:
      out["saliency"] = sal
    return out

  ds = tf.data.Dataset.from_tensor_slices((src, idx, positions, slot_value))
  if threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    ds = ds.with_options(options)
  ds = ds.map(load, num_parallel_calls=threads or tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(lbs, drop_remainder=True).prefetch(2)
  return iter(tfds.as_numpy(ds))


def eval_shapes(split: EncodedSplit, bucket: int = 0) -> np.ndarray:
  """The padded (H, W) each example of a split is evaluated at.

  Args:
    split: the evaluation split.
    bucket: 0 pads every image to the split's largest height and width (one
      compiled shape); > 0 rounds each image's size up to a multiple of
      `bucket` (a few shapes, less padding for datasets with very different
      sizes).

  Returns:
    (N, 2) int array.
  """
  if split.sizes is None:  # fixed-size dataset: the first image's size
    first, _ = _decode(split.images[0], split.labels[0])
    return np.tile(np.asarray(first.shape[:2], np.int64), (len(split), 1))
  sizes = np.asarray(split.sizes, np.int64)
  if bucket <= 0:
    return np.tile(sizes.max(axis=0), (len(split), 1))
  return -(-sizes // bucket) * bucket


def eval_batches(split: EncodedSplit, lut: np.ndarray, input_cfg, *, batch_size: int, ignore_label: int,
                 bucket: int = 0) -> Iterator[dict]:
  """Yields this host's evaluation batches over the whole split at original resolution.

  Images are never resized: each is padded (bottom/right) with the ignore
  label to its group's fixed shape (see `eval_shapes`), and each group's last
  batch is filled with all-ignore images, so the jitted eval step sees one
  shape per group and padded pixels never count in the metrics.

  Args:
    split: the encoded evaluation split.
    lut: (256,) uint8 eval lookup table of the step.
    input_cfg: `config.input` (normalisation).
    batch_size: global eval batch size.
    ignore_label: void label.
    bucket: see `eval_shapes`.

  Yields:
    {"image": float32 (B_local, H, W, 3), "label": int32 (B_local, H, W),
     "valid": bool (B_local, H, W), True on each image's own pixels; only for
     variable-size datasets (those that store sizes), where padding occurs}.
  """
  shapes = eval_shapes(split, bucket)
  for shape in sorted({tuple(int(d) for d in s) for s in shapes}):
    members = np.flatnonzero((shapes == np.asarray(shape)).all(axis=1))
    # Fixed-size data (no stored sizes) is never padded: no mask needed.
    yield from _padded_batches(split, members, lut, input_cfg, batch_size=batch_size, ignore_label=ignore_label,
                               pad_to=shape, with_valid=split.sizes is not None)


def _padded_batches(split: EncodedSplit, members: np.ndarray, lut: np.ndarray, input_cfg, *, batch_size: int,
                    ignore_label: int, pad_to: tuple[int, int], with_valid: bool) -> Iterator[dict]:
  """Batches of the examples `members`, each padded to `pad_to` (+ a real-pixel mask if `with_valid`)."""
  n = len(members)
  lbs = batch_size // jax.process_count()
  ph, pw = pad_to
  total = -(-n // batch_size) * batch_size
  positions = np.arange(total)
  positions = positions[(positions % batch_size) // lbs == jax.process_index()]
  images, labels = split.images, split.labels
  lut_t = tf.constant(lut, tf.uint8)
  blank_img = tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)).numpy()
  blank_lbl = tf.io.encode_png(tf.fill([1, 1, 1], tf.constant(ignore_label, tf.uint8))).numpy()

  def fetch(p):
    return (images[members[p]], labels[members[p]]) if p < n else (blank_img, blank_lbl)

  def load(p):
    image_b, label_b = tf.numpy_function(fetch, [p], (tf.string, tf.string), stateful=False)
    image, label = _decode(image_b, label_b)
    label = tf.gather(lut_t, tf.cast(label, tf.int32))
    tf.debugging.assert_equal(tf.shape(image)[:2], tf.shape(label)[:2],
                              message="eval image and mask differ in size")
    tf.debugging.assert_less_equal(tf.shape(image)[:2], tf.constant([ph, pw]),
                                   message=f"eval image larger than the padded size {pad_to}")
    image = _normalise(image, input_cfg.mean, input_cfg.std)
    image = tf.image.pad_to_bounding_box(image, 0, 0, ph, pw)
    height, width = tf.shape(label)[0], tf.shape(label)[1]
    label = tf.pad(label, [[0, ph - height], [0, pw - width], [0, 0]], constant_values=ignore_label)
    out = {"image": tf.ensure_shape(image, [ph, pw, 3]),
           "label": tf.cast(tf.ensure_shape(label, [ph, pw, 1])[..., 0], tf.int32)}
    if with_valid:  # True on the image's own pixels; blank filler slots have none
      real = tf.fill([height, width], p < n)
      out["valid"] = tf.ensure_shape(tf.pad(real, [[0, ph - height], [0, pw - width]]), [ph, pw])
    return out

  ds = tf.data.Dataset.from_tensor_slices(positions).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                                          deterministic=True)
  yield from tfds.as_numpy(ds.batch(lbs, drop_remainder=True).prefetch(2))
