"""Tests for the procedural `shapes` TFDS dataset (incseg_jax.data.shapes)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from incseg_jax.data import shapes

SPLITS = ("train", "val")


def _load(builder) -> dict[str, dict[str, dict]]:
    """Returns {split: {id: example}} with all features as numpy values."""
    out = {}
    for split in SPLITS:
        ds = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
        out[split] = {ex["id"].decode(): ex for ex in ds}
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The `tiny` config built once per module: (builder, data_dir, examples)."""
    data_dir = tmp_path_factory.mktemp("tfds_a")
    builder = shapes.build(data_dir=str(data_dir), config="tiny")
    return builder, data_dir, _load(builder)


def test_render_example_is_deterministic():
    """Same seed gives identical arrays; a different seed gives other arrays."""
    a = shapes.render_example(np.random.default_rng(7), 64)
    b = shapes.render_example(np.random.default_rng(7), 64)
    c = shapes.render_example(np.random.default_rng(8), 64)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_render_example_respects_image_size_and_force_class():
    """Image size is a parameter and a forced class is always visible."""
    image, mask = shapes.render_example(np.random.default_rng(0), 48, force_class=18)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 48) and mask.dtype == np.uint8
    assert (mask == 18).any()


def test_two_builds_are_byte_identical(tiny, tmp_path):
    """Building twice into different dirs gives identical files and examples."""
    _, dir_a, examples_a = tiny
    builder_b = shapes.build(data_dir=str(tmp_path), config="tiny")
    examples_b = _load(builder_b)
    for split in SPLITS:
        assert examples_a[split].keys() == examples_b[split].keys()
        for key, ex in examples_a[split].items():
            for feature in ("image", "label", "classes", "pixel_counts"):
                np.testing.assert_array_equal(ex[feature], examples_b[split][key][feature])
    records_a = sorted(pathlib.Path(dir_a).rglob("*.tfrecord*"))
    records_b = sorted(pathlib.Path(tmp_path).rglob("*.tfrecord*"))
    assert [p.name for p in records_a] == [p.name for p in records_b]
    assert records_a, "no record files were written"
    for pa, pb in zip(records_a, records_b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_second_build_reuses_prepared_files(tiny):
    """`build` is idempotent: it does not rewrite an existing dataset."""
    _, data_dir, _ = tiny
    records = sorted(pathlib.Path(data_dir).rglob("*.tfrecord*"))
    before = [p.stat().st_mtime_ns for p in records]
    builder = shapes.build(data_dir=str(data_dir), config="tiny")
    assert [p.stat().st_mtime_ns for p in records] == before
    assert builder.info.splits["train"].num_examples == 160


def test_classes_and_pixel_counts_match_mask(tiny):
    """`classes` / `pixel_counts` agree exactly with the decoded mask."""
    for split, examples in tiny[2].items():
        for key, ex in examples.items():
            mask = ex["label"][..., 0]
            counts = np.bincount(mask.ravel(), minlength=256)
            np.testing.assert_array_equal(ex["pixel_counts"], counts[:21], err_msg=key)
            present = np.flatnonzero(counts[1:21]) + 1
            np.testing.assert_array_equal(ex["classes"], present, err_msg=key)
            assert ex["classes"].dtype == np.int32 and ex["pixel_counts"].dtype == np.int64
            assert key.startswith(f"{split}_")


def test_shapes_dtypes_and_label_values(tiny):
    """Images are (64,64,3) uint8; labels only use {0..20, 255}."""
    allowed = set(range(21)) | {255}
    for split in SPLITS:
        examples = tiny[2][split]
        assert examples, f"split {split} is empty"
        for ex in examples.values():
            assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
            assert ex["label"].shape == (64, 64, 1) and ex["label"].dtype == np.uint8
            assert set(np.unique(ex["label"]).tolist()) <= allowed
    assert len(tiny[2]["train"]) == 160 and len(tiny[2]["val"]) == 64


def test_void_borders_present_but_thin(tiny):
    """Objects carry a thin void border: 255 exists but covers few pixels."""
    masks = np.stack([ex["label"] for ex in tiny[2]["train"].values()])
    void = (masks == 255).mean()
    assert 0.005 < void < 0.15
    # Every image has at least one object, hence some void pixels.
    assert ((masks == 255).reshape(len(masks), -1).any(axis=1)).all()


def test_every_class_in_both_splits(tiny):
    """Even `tiny` contains each of the 20 classes in train and in val."""
    for split in SPLITS:
        seen = set()
        for ex in tiny[2][split].values():
            seen.update(ex["classes"].tolist())
        assert seen == set(range(1, 21)), f"{split} misses {set(range(1, 21)) - seen}"


def test_class_table_and_confusable_pairs():
    """Classes are unique (shape, colour); listed pairs are truly confusable."""
    combos = {(c.shape, c.colour) for c in shapes.CLASSES}
    assert len(shapes.CLASSES) == 20 and len(combos) == 20
    assert len({c.shape for c in shapes.CLASSES}) >= 6
    similar_shapes = [{"square", "diamond"}, {"circle", "ring"}, {"circle", "ellipse"}]
    for old, new in shapes.CONFUSABLE_PAIRS:
        a, b = shapes.CLASSES[old - 1], shapes.CLASSES[new - 1]
        dist = np.linalg.norm(np.subtract(shapes.COLOURS[a.colour], shapes.COLOURS[b.colour]))
        same_shape_close_colour = a.shape == b.shape and dist < 100
        same_colour_similar_shape = a.colour == b.colour and {a.shape, b.shape} in similar_shapes
        assert same_shape_close_colour or same_colour_similar_shape, (a.name, b.name)
        assert a.scene == b.scene, "pairs should co-occur to be confused"
    # Each class new in 15-5 has an old confusable partner.
    assert {new for _, new in shapes.CONFUSABLE_PAIRS} == set(range(16, 21))
    assert all(old <= 15 for old, _ in shapes.CONFUSABLE_PAIRS)


def test_scenes_mix_old_and_new_classes(tiny):
    """New classes co-occur with old ones in 15-x and 10-10 scenarios."""
    train = [set(ex["classes"].tolist()) for ex in tiny[2]["train"].values()]
    mix_15 = sum(bool(c & set(range(1, 16))) and bool(c & set(range(16, 21))) for c in train)
    mix_10 = sum(bool(c & set(range(1, 11))) and bool(c & set(range(11, 21))) for c in train)
    assert mix_15 >= 10 and mix_10 >= 20
    for scene in range(shapes.NUM_SCENES):
        ids = [i for i, c in enumerate(shapes.CLASSES, 1) if c.scene == scene]
        assert min(ids) <= 10 and max(ids) >= 16, f"scene {scene} does not mix ids"


def test_class_frequencies_are_unequal(tiny):
    """Frequency order differs from id order, both in design and in the data."""
    expected = shapes.expected_class_frequencies()[1:]
    assert np.isclose(expected.sum(), 1.0)
    assert expected.max() / expected.min() > 3
    totals = sum(ex["pixel_counts"] for ex in tiny[2]["train"].values())[1:]
    order = np.argsort(-totals, kind="stable") + 1
    assert not np.array_equal(order, np.arange(1, 21))
    assert totals.max() / totals.min() > 2


def test_metadata(tiny):
    """Class names and palette are exposed as constants and in DatasetInfo."""
    builder = tiny[0]
    assert shapes.NUM_CLASSES == 21 and shapes.IGNORE_LABEL == 255
    assert len(shapes.CLASS_NAMES) == 21 and shapes.CLASS_NAMES[0] == "background"
    assert shapes.CLASS_NAMES[1] == "red_circle"
    assert shapes.PALETTE.shape == (21, 3) and shapes.PALETTE.dtype == np.uint8
    assert len(set(map(tuple, shapes.PALETTE.tolist()))) >= 10
    meta = builder.info.metadata
    assert list(meta["class_names"]) == list(shapes.CLASS_NAMES)
    assert np.array_equal(np.asarray(meta["palette"], np.uint8), shapes.PALETTE)
    assert builder.info.supervised_keys == ("image", "label")
    assert builder.info.name == "shapes" and str(builder.info.version) == "1.0.0"
    assert set(builder.info.splits.keys()) == {"train", "val"}
