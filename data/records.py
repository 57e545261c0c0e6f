"""Interaction records on disk: TFRecord files of tf.train.Example, one interaction each.

Features of one record:
  user_id   int64  dense user id in [0, num_users)
  item_id   int64  dense item id in [0, num_items), ranked by frequency (0 = most frequent)
  timestamp int64  seconds (or any increasing order key)
  weight    float  optional: written for logs with a weight column; parsed as 1.0 where absent
  negative_ids int64 list  optional: written (maybe empty) for logs with a negative column: the item ids shown
            with the interaction and not chosen. Parsed as a dense [batch, max_negatives] tensor padded with -1,
            max_negatives read from the corpus's metadata.json (`max_negatives`); corpora without it (or with
            max_negatives 0) parse to no negative_ids at all.
Files are sharded as <split>-00000-of-00004.tfrecord so that tf.distribute can shard by file.
"""

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

FEATURE_SPEC = {
    "user_id": tf.io.FixedLenFeature([], tf.int64),
    "item_id": tf.io.FixedLenFeature([], tf.int64),
    "timestamp": tf.io.FixedLenFeature([], tf.int64),
    # Every corpus parses to the same structure: 1.0 where the log had no weight column (the built-in corpus).
    "weight": tf.io.FixedLenFeature([], tf.float32, default_value=1.0),
}
NEGATIVES = "negative_ids"
PAD = -1  # pads each row's negative_ids to max_negatives


def shard_paths(directory: str, split: str, num_shards: int) -> List[str]:
    return [os.path.join(directory, f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord") for index in range(num_shards)]


def max_negatives(paths: List[str]) -> Optional[int]:
    """The negative_ids width of the corpus holding `paths` (its metadata.json's max_negatives), or None when
    its records hold no negatives (no such key, 0, or files outside a prepared corpus)."""
    if not paths:
        return None
    try:
        with open(os.path.join(os.path.dirname(paths[0]), "metadata.json")) as file:
            width = json.load(file).get("max_negatives")
    except (OSError, ValueError):
        return None
    return int(width) if width else None


def _serializer(with_weight: bool, with_negatives: bool = False):
    """(user_id, item_id, timestamp, weight, negative ids) -> a serialized tf.train.Example, refilling one
    message: about 1 us per record where building a message per record costs about 20 us (a million records:
    1 s instead of 20)."""
    example = tf.train.Example()
    feature = example.features.feature
    values = [feature[name].int64_list.value for name in ("user_id", "item_id", "timestamp")]
    if with_weight:
        values.append(feature["weight"].float_list.value)
    for value in values:
        value.append(0)
    user_id, item_id, timestamp = values[:3]
    weight = values[3] if with_weight else None
    negatives = feature[NEGATIVES].int64_list.value if with_negatives else None

    def serialize(user, item, time, weight_value=None, negative_ids=None):
        user_id[0], item_id[0], timestamp[0] = user, item, time
        if weight is not None:
            weight[0] = weight_value
        if negatives is not None:
            del negatives[:]
            negatives.extend(negative_ids)
        return example.SerializeToString()

    return serialize


def write_interactions(
    directory: str,
    split: str,
    columns: Dict[str, np.ndarray],
    num_shards: int,
    negatives: Optional[Tuple[np.ndarray, np.ndarray]] = None,
) -> List[str]:
    """Writes parallel arrays user_id / item_id / timestamp (and optional weight) [n] round-robin into num_shards
    TFRecord files. negatives: optional (ids [m], lengths [n]), each row's negative_ids in turn (sum(lengths) ==
    m), written as a list for every row (empty for rows of none)."""
    paths = shard_paths(directory, split, num_shards)
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    try:
        num_rows = len(columns["user_id"])
        with_weight = columns.get("weight") is not None
        serialize = _serializer(with_weight, negatives is not None)
        weights = columns["weight"].tolist() if with_weight else [None] * num_rows
        ids = negatives[0].tolist() if negatives is not None else []
        ends = np.cumsum(negatives[1]).tolist() if negatives is not None else [0] * num_rows
        rows = zip(columns["user_id"].tolist(), columns["item_id"].tolist(), columns["timestamp"].tolist(), weights)
        start = 0
        for index, (row, end) in enumerate(zip(rows, ends)):
            # Sliced here, row by row: a list per row made up front would leave the garbage collector a million.
            writers[index % num_shards].write(serialize(*row, ids[start:end]))
            start = end
    finally:
        for writer in writers:
            writer.close()
    return paths


def feature_spec(width: Optional[int] = None) -> Dict[str, object]:
    """FEATURE_SPEC, with negative_ids as a variable-length feature when width (max_negatives) is given."""
    return FEATURE_SPEC if not width else {**FEATURE_SPEC, NEGATIVES: tf.io.VarLenFeature(tf.int64)}


def _padded(parsed, width: Optional[int]):
    """parsed features with negative_ids (sparse, [..., k]) as dense [..., width] int64, PAD-padded."""
    if not width:
        return parsed
    sparse = parsed[NEGATIVES]
    shape = tf.concat([sparse.dense_shape[:-1], tf.constant([width], tf.int64)], axis=0)
    dense = tf.sparse.to_dense(tf.SparseTensor(sparse.indices, sparse.values, shape), default_value=PAD)
    leading = [None] * (sparse.shape.rank - 1)
    return {**parsed, NEGATIVES: tf.ensure_shape(dense, leading + [width])}


def parse_batch(serialized, width: Optional[int] = None):
    """[batch] serialized tf.train.Example -> {feature: [batch]} (int64; weight float32), and negative_ids
    [batch, width] (PAD-padded) when width (the corpus's max_negatives) is given."""
    return _padded(tf.io.parse_example(serialized, feature_spec(width)), width)


def parse_single(serialized, width: Optional[int] = None):
    """One serialized tf.train.Example -> {feature: []}, and negative_ids [width] when width is given."""
    return _padded(tf.io.parse_single_example(serialized, feature_spec(width)), width)


def read_all(paths: List[str], width: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Every record of the files, as NumPy arrays (for evaluation sets, which are small), and negative_ids
    [n, max_negatives] when the corpus has them (width: that width; None: read from its metadata.json)."""
    width = max_negatives(paths) if width is None else width
    dataset = tf.data.TFRecordDataset(paths).batch(65536).map(lambda batch: parse_batch(batch, width))
    parts = list(dataset.as_numpy_iterator())
    if not parts:
        empty = {name: np.zeros([0], spec.dtype.as_numpy_dtype) for name, spec in FEATURE_SPEC.items()}
        return {**empty, NEGATIVES: np.zeros([0, width], np.int64)} if width else empty
    return {name: np.concatenate([part[name] for part in parts]) for name in feature_spec(width)}
