"""Interaction records on disk: TFRecord files of tf.train.Example, one interaction each.

Features of one record:
  user_id   int64  dense user id in [0, num_users)
  item_id   int64  dense item id in [0, num_items), ranked by frequency (0 = most frequent)
  timestamp int64  seconds (or any increasing order key)
  weight    float  optional (logs with a weight column); FEATURE_SPEC leaves it out, parse WEIGHT_SPEC to read it
Files are sharded as <split>-00000-of-00004.tfrecord so that tf.distribute can shard by file.
"""

import os
from typing import Dict, List

import numpy as np
import tensorflow as tf

FEATURE_SPEC = {
    "user_id": tf.io.FixedLenFeature([], tf.int64),
    "item_id": tf.io.FixedLenFeature([], tf.int64),
    "timestamp": tf.io.FixedLenFeature([], tf.int64),
}


WEIGHT_SPEC = {"weight": tf.io.FixedLenFeature([], tf.float32, default_value=1.0)}


def shard_paths(directory: str, split: str, num_shards: int) -> List[str]:
    return [os.path.join(directory, f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord") for index in range(num_shards)]


def _example(user_id: int, item_id: int, timestamp: int, weight=None) -> bytes:
    feature = tf.train.Feature
    int64s = tf.train.Int64List
    features = {
        "user_id": feature(int64_list=int64s(value=[user_id])),
        "item_id": feature(int64_list=int64s(value=[item_id])),
        "timestamp": feature(int64_list=int64s(value=[timestamp])),
    }
    if weight is not None:
        features["weight"] = feature(float_list=tf.train.FloatList(value=[weight]))
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_interactions(directory: str, split: str, columns: Dict[str, np.ndarray], num_shards: int) -> List[str]:
    """Writes parallel arrays user_id / item_id / timestamp (and optional weight) [n] round-robin into num_shards
    TFRecord files."""
    paths = shard_paths(directory, split, num_shards)
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    try:
        num_rows = len(columns["user_id"])
        weights = columns["weight"].tolist() if columns.get("weight") is not None else [None] * num_rows
        rows = zip(columns["user_id"].tolist(), columns["item_id"].tolist(), columns["timestamp"].tolist(), weights)
        for index, (user_id, item_id, timestamp, weight) in enumerate(rows):
            writers[index % num_shards].write(_example(user_id, item_id, timestamp, weight))
    finally:
        for writer in writers:
            writer.close()
    return paths


def parse_batch(serialized):
    """[batch] serialized tf.train.Example -> {feature: [batch] int64}."""
    return tf.io.parse_example(serialized, FEATURE_SPEC)


def read_all(paths: List[str]) -> Dict[str, np.ndarray]:
    """Every record of the files, as NumPy arrays (for evaluation sets, which are small)."""
    dataset = tf.data.TFRecordDataset(paths).batch(65536).map(parse_batch)
    parts = list(dataset.as_numpy_iterator())
    if not parts:
        return {name: np.zeros([0], np.int64) for name in FEATURE_SPEC}
    return {name: np.concatenate([part[name] for part in parts]) for name in FEATURE_SPEC}
