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
  <context column> optional: one feature per context column the log declared (data.context; metadata.json's
            "context_columns"), under the column's name: int64 id (categorical; -1 for none), int64 list of ids
            (multi-valued; parsed as [batch, max_values] padded with -1) or float (numeric, standardised).
  history   int64 list  optional: written by `data.prepare --history_length=N` (metadata.json's
            "history_length": N): the user's training items strictly before the row's time, most recent first, at
            most N (data.history's rules), without padding; parsed as [batch, N] padded with -1. Such a corpus
            also has latest_history-*.tfrecord: {user_id, history} of every user after all their training rows
            (the query a history model's export serves for a known user).
Files are sharded as <split>-00000-of-00004.tfrecord so that tf.distribute can shard by file.
"""

import glob
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from data import context as context_lib
from data.context import ContextColumn

FEATURE_SPEC = {
    "user_id": tf.io.FixedLenFeature([], tf.int64),
    "item_id": tf.io.FixedLenFeature([], tf.int64),
    "timestamp": tf.io.FixedLenFeature([], tf.int64),
    # Every corpus parses to the same structure: 1.0 where the log had no weight column (the built-in corpus).
    "weight": tf.io.FixedLenFeature([], tf.float32, default_value=1.0),
}
NEGATIVES = "negative_ids"
HISTORY = "history"
LATEST_HISTORY = "latest_history"  # the split name of the users' latest histories
PAD = -1  # pads each row's negative_ids to max_negatives, its history to history_length


def shard_paths(directory: str, split: str, num_shards: int) -> List[str]:
    return [os.path.join(directory, f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord") for index in range(num_shards)]


def _metadata(paths: List[str]) -> Dict:
    """The metadata.json of the corpus holding `paths`, or {} (no paths, or files outside a prepared corpus)."""
    if not paths:
        return {}
    try:
        with open(os.path.join(os.path.dirname(paths[0]), "metadata.json")) as file:
            return json.load(file)
    except (OSError, ValueError):
        return {}


def max_negatives(paths: List[str]) -> Optional[int]:
    """The negative_ids width of the corpus holding `paths` (its metadata.json's max_negatives), or None when
    its records hold no negatives (no such key, 0, or files outside a prepared corpus)."""
    width = _metadata(paths).get("max_negatives")
    return int(width) if width else None


def written_history_length(paths: List[str]) -> Optional[int]:
    """N when the records of the corpus holding `paths` carry their history (metadata.json's history_length),
    else None (the trainer then looks histories up in the training split)."""
    length = _metadata(paths).get("history_length")
    return None if length is None else int(length)


def context_columns(paths: List[str]) -> Tuple[ContextColumn, ...]:
    """The context columns the records of the corpus holding `paths` carry (their layout; no vocabulary keys)."""
    return tuple(ContextColumn.from_metadata(entry) for entry in _metadata(paths).get("context_columns", ()))


def _serializer(with_weight: bool, with_negatives: bool = False, context_kinds: Sequence[Tuple[str, str]] = (),
                with_history: bool = False):
    """(user_id, item_id, timestamp, weight, negative ids, context values) -> a serialized tf.train.Example,
    refilling one message: about 1 us per record where building a message per record costs about 20 us (a
    million records: 1 s instead of 20). context_kinds: (name, kind) of each context column, in order;
    with_history: a history list after them."""
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
    # The lists refilled per row: negative_ids, then each context column's.
    lists = [negatives] if negatives is not None else []
    lists += [getattr(feature[name], "float_list" if kind == context_lib.NUMERIC else "int64_list").value
              for name, kind in context_kinds]
    if with_history:
        lists.append(feature[HISTORY].int64_list.value)

    def serialize(user, item, time, weight_value=None, negative_ids=(), context_values=(), history=()):
        user_id[0], item_id[0], timestamp[0] = user, item, time
        if weight is not None:
            weight[0] = weight_value
        row_lists = ([negative_ids] if negatives is not None else []) + list(context_values) + [history]
        for values, row_values in zip(lists, row_lists):
            del values[:]
            values.extend(row_values)
        return example.SerializeToString()

    return serialize


def write_interactions(
    directory: str,
    split: str,
    columns: Dict[str, np.ndarray],
    num_shards: int,
    negatives: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    context: Sequence[Tuple[ContextColumn, np.ndarray]] = (),
    histories: Optional[np.ndarray] = None,
) -> List[str]:
    """Writes parallel arrays user_id / item_id / timestamp (and optional weight) [n] round-robin into num_shards
    TFRecord files. negatives: optional (ids [m], lengths [n]), each row's negative_ids in turn (sum(lengths) ==
    m), written as a list for every row (empty for rows of none). context: (column, values [n] or [n, width])
    of each context column (data.context.Built.values), a multi-valued row written without its padding.
    histories: optional [n, N] PAD-padded, each row's history, written without its padding."""
    paths = shard_paths(directory, split, num_shards)
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    try:
        num_rows = len(columns["user_id"])
        with_weight = columns.get("weight") is not None
        context_kinds = [(column.name, column.kind) for column, _ in context]
        serialize = _serializer(with_weight, negatives is not None, context_kinds, histories is not None)
        row_context = _row_context(context)
        row_history = (lambda index: ()) if histories is None else _unpadded_rows(histories)
        weights = columns["weight"].tolist() if with_weight else [None] * num_rows
        ids = negatives[0].tolist() if negatives is not None else []
        ends = np.cumsum(negatives[1]).tolist() if negatives is not None else [0] * num_rows
        rows = zip(columns["user_id"].tolist(), columns["item_id"].tolist(), columns["timestamp"].tolist(), weights)
        start = 0
        for index, (row, end) in enumerate(zip(rows, ends)):
            # Sliced here, row by row: a list per row made up front would leave the garbage collector a million.
            writers[index % num_shards].write(serialize(*row, ids[start:end], row_context(index), row_history(index)))
            start = end
    finally:
        for writer in writers:
            writer.close()
    return paths


def _unpadded_rows(padded: np.ndarray):
    """index -> row `index` of a [n, N] PAD-padded array as a list without its padding (PAD only trails)."""
    lengths = (padded != PAD).sum(axis=1).tolist()
    rows = padded.tolist()
    return lambda index: rows[index][: lengths[index]]


def write_latest_histories(directory: str, histories: np.ndarray, num_shards: int) -> List[str]:
    """latest_history-*.tfrecord: {user_id, history} of each row of histories [num_users, N] (PAD-padded)."""
    paths = shard_paths(directory, LATEST_HISTORY, num_shards)
    serialize, row_history = latest_history_serializer(), _unpadded_rows(histories)
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    try:
        for user in range(len(histories)):
            writers[user % num_shards].write(serialize(user, row_history(user)))
    finally:
        for writer in writers:
            writer.close()
    return paths


def latest_history_serializer():
    """(user_id, history list) -> a serialized {user_id, history} tf.train.Example (one message refilled)."""
    example = tf.train.Example()
    user_id = example.features.feature["user_id"].int64_list.value
    history = example.features.feature[HISTORY].int64_list.value
    user_id.append(0)

    def serialize(user, items):
        user_id[0] = user
        del history[:]
        history.extend(items)
        return example.SerializeToString()

    return serialize


def read_latest_histories(directory: str, num_users: int, history_length: int) -> np.ndarray:
    """[num_users, history_length] int64 PAD-padded from latest_history-*.tfrecord (each row cut to the first
    history_length items, the most recent); a user without a record has an empty history."""
    paths = sorted(glob.glob(os.path.join(directory, f"{LATEST_HISTORY}-*.tfrecord")))
    written = max(written_history_length(paths) or 0, 1)  # a record holds up to the written length
    spec = {"user_id": tf.io.FixedLenFeature([], tf.int64), HISTORY: tf.io.VarLenFeature(tf.int64)}
    histories = np.full([num_users, history_length], PAD, np.int64)
    for batch in tf.data.TFRecordDataset(paths).batch(4096).map(lambda rows: tf.io.parse_example(rows, spec)):
        dense = _dense(batch[HISTORY], written)[:, :history_length].numpy()
        histories[batch["user_id"].numpy()] = dense
    return histories


def _row_context(context: Sequence[Tuple[ContextColumn, np.ndarray]]):
    """index -> each context column's values of row `index` as a list (a multi-valued row without padding)."""
    lists = [values.tolist() for _, values in context]
    kinds = [column.kind for column, _ in context]

    def row(index):
        return [[value for value in values[index] if value != PAD] if kind == context_lib.MULTI else [values[index]]
                for kind, values in zip(kinds, lists)]

    return row


def feature_spec(width: Optional[int] = None, context: Sequence[ContextColumn] = (),
                 history_length: Optional[int] = None) -> Dict[str, object]:
    """FEATURE_SPEC, with negative_ids as a variable-length feature when width (max_negatives) is given, the
    context columns (multi-valued ones variable-length) and the history when history_length (written) is."""
    spec = dict(FEATURE_SPEC) if not width else {**FEATURE_SPEC, NEGATIVES: tf.io.VarLenFeature(tf.int64)}
    if history_length is not None:
        spec[HISTORY] = tf.io.VarLenFeature(tf.int64)
    for column in context:
        if column.kind == context_lib.NUMERIC:
            spec[column.name] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
        elif column.kind == context_lib.MULTI:
            spec[column.name] = tf.io.VarLenFeature(tf.int64)
        else:
            spec[column.name] = tf.io.FixedLenFeature([], tf.int64, default_value=context_lib.NONE)
    return spec


def _list_widths(width: Optional[int], context: Sequence[ContextColumn],
                 history_length: Optional[int] = None) -> Dict[str, int]:
    """{feature: its padded width} of the list features: negative_ids (when width, the corpus's max_negatives, is
    given), each multi-valued context column (its max_values) and the written history (history_length)."""
    widths = {NEGATIVES: width} if width else {}
    widths.update({column.name: column.max_values for column in context if column.kind == context_lib.MULTI})
    if history_length is not None:
        widths[HISTORY] = history_length
    return widths


def _padded(parsed, width: Optional[int], context: Sequence[ContextColumn] = (), history_length=None):
    """parsed features with the list features (sparse, [..., k]) as dense [..., _list_widths] int64, PAD-padded."""
    widths = _list_widths(width, context, history_length)
    return {**parsed, **{name: _dense(parsed[name], size) for name, size in widths.items()}}


def _dense(sparse, width: int):
    shape = tf.concat([sparse.dense_shape[:-1], tf.constant([width], tf.int64)], axis=0)
    dense = tf.sparse.to_dense(tf.SparseTensor(sparse.indices, sparse.values, shape), default_value=PAD)
    return tf.ensure_shape(dense, [None] * (sparse.shape.rank - 1) + [width])


def parse_batch(serialized, width: Optional[int] = None, context: Sequence[ContextColumn] = (),
                history_length: Optional[int] = None):
    """[batch] serialized tf.train.Example -> {feature: [batch]} (int64; weight float32), negative_ids
    [batch, width] (PAD-padded) when width (the corpus's max_negatives) is given, each context column under
    its name ([batch] int64, [batch, max_values] int64 PAD-padded, [batch] float32), and history
    [batch, history_length] (PAD-padded) when the records carry it."""
    spec = feature_spec(width, context, history_length)
    return _padded(tf.io.parse_example(serialized, spec), width, context, history_length)


def parse_single(serialized, width: Optional[int] = None, context: Sequence[ContextColumn] = (),
                 history_length: Optional[int] = None):
    """One serialized tf.train.Example -> {feature: []}, negative_ids [width] when width is given, the context,
    history [history_length] when written."""
    spec = feature_spec(width, context, history_length)
    return _padded(tf.io.parse_single_example(serialized, spec), width, context, history_length)


def read_all(paths: List[str], width: Optional[int] = None,
             context: Optional[Sequence[ContextColumn]] = None) -> Dict[str, np.ndarray]:
    """Every record of the files, as NumPy arrays (for evaluation sets, which are small), negative_ids
    [n, max_negatives] when the corpus has them (width: that width; None: read from its metadata.json), the
    context columns (None: those of its metadata.json) and the history [n, N] when the records carry it."""
    width = max_negatives(paths) if width is None else width
    context = context_columns(paths) if context is None else context
    length = written_history_length(paths)
    parts = list(read_batches(paths, width, context))
    spec = feature_spec(width, context, length)
    if not parts:
        return {name: _empty(name, spec[name], _list_widths(width, context, length)) for name in spec}
    return {name: np.concatenate([part[name] for part in parts]) for name in spec}


def read_batches(paths: List[str], width: Optional[int] = None, context: Optional[Sequence[ContextColumn]] = None,
                 batch_size: int = 65536) -> Iterator[Dict[str, np.ndarray]]:
    """The records of the files in batches of batch_size, each as read_all's columns: for a split read in parts
    (a training split too large to hold), in file order."""
    width = max_negatives(paths) if width is None else width
    context = context_columns(paths) if context is None else context
    length = written_history_length(paths)
    dataset = tf.data.TFRecordDataset(paths).batch(batch_size).map(
        lambda batch: parse_batch(batch, width, context, length))
    yield from dataset.as_numpy_iterator()


def _empty(name: str, spec, widths: Dict[str, int]) -> np.ndarray:
    """[0] (or [0, width] for a padded list) of the feature's dtype."""
    return np.zeros([0, widths[name]] if name in widths else [0], spec.dtype.as_numpy_dtype)
