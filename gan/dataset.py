"""Training data: the export stage's TFRecords (NVIDIA dataset_tool layout) as a tf.data pipeline.

`<dir>/<name>-rNN.tfrecords` holds one level of detail per file; training reads the top
level (highest NN). Each record is a tf.train.Example with `shape` (int64 [C, H, W]) and
`data` (raw uint8 CHW bytes), parsed the way NVIDIA's training/dataset.py does. Images
come out NHWC float32 in [-1, 1] (the layout gan/ uses everywhere).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

LEVEL_FILE = re.compile(r"^(?P<name>.+)-r(?P<level>\d\d)\.tfrecords$")
SHUFFLE_BUFFER_BYTES = 1 << 30     # NVIDIA shuffles ~4 GB of images; 1 GB is plenty for faces


@dataclass(frozen=True)
class DatasetInfo:
    path: Path              # the top-level .tfrecords file
    resolution: int
    channels: int
    num_images: int


def level_files(tfrecord_dir: str | Path) -> dict[int, Path]:
    """{level (log2 resolution): file} for every `<name>-rNN.tfrecords` in the folder."""
    files = {}
    for path in Path(tfrecord_dir).iterdir():
        m = LEVEL_FILE.match(path.name)
        if m:
            level = int(m.group("level"))
            if level in files:
                raise ValueError(f"{tfrecord_dir}: two datasets at level {level}: "
                                 f"{files[level].name}, {path.name}")
            files[level] = path
    if not files:
        raise FileNotFoundError(f"{tfrecord_dir}: no <name>-rNN.tfrecords files")
    return files


def parse_record(serialized: tf.Tensor) -> tf.Tensor:
    """One serialized tf.train.Example -> uint8 CHW image (NVIDIA's parse_tfrecord_tf)."""
    features = tf.io.parse_single_example(serialized, features={
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "data": tf.io.FixedLenFeature([], tf.string),
    })
    data = tf.io.decode_raw(features["data"], tf.uint8)
    return tf.reshape(data, features["shape"])


def to_training_range(images_chw: tf.Tensor) -> tf.Tensor:
    """uint8 [..., C, H, W] -> float32 [..., H, W, C] in [-1, 1]."""
    rank = images_chw.shape.rank
    perm = list(range(rank - 3)) + [rank - 2, rank - 1, rank - 3]
    return tf.cast(tf.transpose(images_chw, perm), tf.float32) / 127.5 - 1.0


def to_uint8(images_hwc) -> tf.Tensor:
    """float [-1, 1] NHWC -> uint8 NHWC (what sample grids and exports store)."""
    return tf.cast(tf.clip_by_value(tf.round((images_hwc + 1.0) * 127.5), 0, 255), tf.uint8)


def dataset_info(tfrecord_dir: str | Path) -> DatasetInfo:
    files = level_files(tfrecord_dir)
    top = files[max(files)]
    first = next(iter(tf.data.TFRecordDataset(str(top)).take(1)), None)
    if first is None:
        raise ValueError(f"{top}: no records")
    channels, height, width = (int(s) for s in parse_record(first).shape)
    if height != width or height != 2 ** max(files):
        raise ValueError(f"{top}: image shape {channels}x{height}x{width} does not match "
                         f"level r{max(files):02d}")
    # Every level holds the same records: count them in the smallest file (cheap).
    num_images = int(tf.data.TFRecordDataset(str(files[min(files)])).reduce(0, lambda n, _: n + 1))
    return DatasetInfo(path=top, resolution=height, channels=channels, num_images=num_images)


def make_dataset(tfrecord_dir: str | Path, batch: int, mirror: bool, seed: int = 0,
                 repeat: bool = True, shuffle: bool = True) -> tf.data.Dataset:
    """Batches of NHWC float32 reals in [-1, 1]: shuffled, repeated, randomly mirrored.

    Deterministic for a seed: the shuffle is seeded and the mirror decision of batch i is
    drawn with a stateless RNG keyed on (seed, i).
    """
    info = dataset_info(tfrecord_dir)
    ds = tf.data.TFRecordDataset(str(info.path), buffer_size=8 << 20)
    ds = ds.map(parse_record, num_parallel_calls=tf.data.AUTOTUNE)
    image_bytes = info.channels * info.resolution ** 2
    if info.num_images * image_bytes <= SHUFFLE_BUFFER_BYTES:
        ds = ds.cache()        # small datasets (the usual case here) stay decoded in memory
    if shuffle:
        buffer = max(1, min(info.num_images, SHUFFLE_BUFFER_BYTES // image_bytes))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch, drop_remainder=repeat)

    def finish(index, images):
        images = to_training_range(images)
        if mirror:
            flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed=tf.stack(
                [tf.cast(seed, tf.int64), index])) < 0.5
            images = tf.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
        return images

    ds = ds.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
