"""tf.data pipelines over prepared interaction files.

Two ways to the same batches {user_id: [batch], item_id: [batch] or [batch, num_true], timestamp: ...}, two
explicit calls (`training_dataset` picks one by size):
- in memory (`read_in_memory` once, then `in_memory_batches`; the default when the split fits): the split is
  read once into tensors and each epoch is one seeded permutation (`tf.random.experimental.stateless_shuffle`) cut
  into batches, gathered column by column, GATHER_BATCHES batches at a time.
  A perfect shuffle for about 0.16 ms of CPU per batch of 1,024, where record-by-record shuffling and parsing
  of TFRecords costs about 14 ms: on a 2-core machine that is CPU the training step does not get. The batch
  at step s is a function of (seed, s) alone, so a restarted run resumes at the exact data position.
- streaming (`streaming_batches`; splits larger than `max_in_memory_bytes`, and num_true > 1): TFRecord
  shards read interleaved, a shuffle buffer, batched parsing. Deterministic for a given seed too; resuming skips
  consumed batches.

Logged negatives: a corpus prepared with --negative_column gives every batch `negative_ids` [batch,
max_negatives] int64 (-1 padded; [batch, num_true * max_negatives] when num_true > 1, the row's interactions'
lists side by side), in memory and streaming alike; other corpora's batches have no such key.

Context columns: a corpus prepared with context columns (data.context) gives every batch each of them under its
name, in memory and streaming alike: [batch] int64 (categorical, -1 for none), [batch, max_values] int64 (-1
padded; multi-valued) or [batch] float32 (numeric, standardised); a row of num_true interactions takes its
earliest interaction's, like its history and time.

Query inputs (`QueryInputs`, optional): each batch also gets what the query tower reads beyond user_id, computed
here from the columns the batch already holds: `history` [batch, history_length] (the user's items strictly
before the row's timestamp, looked up in the training log sorted by data.history.history_log) and the time
features `hour_of_day`, `day_of_week` [batch]. A row of num_true interactions takes the history and time of its
earliest one, so no history holds a target of its row. Rows of `excluded_users` (cold users) are dropped.
Records that carry their history (`data.prepare --history_length`: QueryInputs.written_history) are always
streamed, never read whole, and their history is cut to history_length.

Sharding for tf.distribute: with num_shards > 1 each input pipeline takes its contiguous slice of every
global batch (in memory), or every num_shards-th file (streaming), so the shards together see what a single
pipeline would.
"""

import dataclasses
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from data import history, records

# Hidden columns of in-memory rows: where each row's history lies in the sorted log (QueryInputs.batch_function).
HISTORY_POSITIONS = ("_history_end", "_history_available")
# Splits whose TFRecord files are at most this large are read into memory (about 40 bytes per interaction on
# disk, 24 in memory): 1 GiB is some 25 million interactions.
MAX_IN_MEMORY_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class QueryInputs:
    """The query features a batch gets beyond user_id, and the users whose rows are left out.

    history_log: the training log sorted for lookups (data.history.history_log), or None for no history (or
      a written one).
    history_length: L, the history's width.
    time_features: add hour_of_day and day_of_week of the row's timestamp (Unix seconds, UTC).
    excluded_users: [k] user ids whose rows never reach training (cold users), or None.
    """

    history_log: Optional[history.HistoryLog] = None
    history_length: int = history.DEFAULT_HISTORY_LENGTH
    time_features: bool = False
    excluded_users: Optional[np.ndarray] = None
    # The records carry their history (data.records; at least history_length items): cut to history_length.
    written_history: bool = False

    def batch_function(self):
        """A function batch -> batch with history [b, L] int64 and/or hour_of_day, day_of_week [b] int64
        added, for tf.data map (its lookup tables are captured as constants). A batch that carries its rows'
        HISTORY_POSITIONS (in memory: `with_history_positions`) skips the binary searches."""
        lookup = None if self.history_log is None else history_lookup(self.history_log, self.history_length)
        time_features, written_history, history_length = self.time_features, self.written_history, self.history_length

        def add(batch):
            batch = dict(batch)
            time = batch["timestamp"]
            if time.shape.rank == 2:  # num_true interactions per row: the earliest one's moment
                time = tf.reduce_min(time, axis=1)
            if lookup is not None:
                positions = tuple(batch.pop(name, None) for name in HISTORY_POSITIONS)
                batch["history"] = lookup(batch["user_id"], time, *positions)
            elif written_history:  # the most recent history_length of the records' own (wider) histories
                batch["history"] = batch["history"][:, :history_length]
            elif "history" in batch:  # written, but this model reads none
                del batch["history"]
            if time_features:
                batch.update(time_feature_columns(time))
            return batch

        return add

    def with_history_positions(self, columns: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The in-memory columns plus HISTORY_POSITIONS of every row (where its history lies in the sorted log),
        computed once here instead of by two binary searches in every batch."""
        if self.history_log is None:
            return columns
        end, available = history.history_positions(self.history_log, columns["user_id"], columns["timestamp"])
        return {**columns, HISTORY_POSITIONS[0]: end, HISTORY_POSITIONS[1]: available}

    def keep_rows(self, columns: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The in-memory columns {name: [n]} without the excluded users' rows."""
        if self.excluded_users is None or not len(self.excluded_users):
            return columns
        keep = ~np.isin(columns["user_id"], self.excluded_users)
        return {name: values[keep] for name, values in columns.items()}


def history_lookup(log: history.HistoryLog, history_length: int):
    """TensorFlow twin of data.history.histories_from_log: (user_id [b], timestamp [b]) int64 -> [b, L] int64,
    the user's log items strictly before the timestamp, most recent first, history.PAD after the earliest.

    Two binary searches per row over the sorted keys and one [b, L] gather: some 0.1 ms for a batch of 1,024
    over a million-row log.
    """
    keys, items = tf.constant(log.keys, tf.int64), tf.constant(log.items, tf.int64)
    times, time_slots = tf.constant(log.times, tf.int64), tf.constant(log.time_slots, tf.int64)
    offsets = tf.range(history_length, dtype=tf.int64)[tf.newaxis, :]  # [1, L]
    empty = not len(log.keys)

    def lookup(user_id, timestamp, end=None, available=None):
        """end, available: the rows' positions in the sorted log when known (history.history_positions)."""
        user_id, timestamp = tf.cast(user_id, tf.int64), tf.cast(timestamp, tf.int64)
        if empty or not history_length:
            return tf.fill([tf.shape(user_id)[0], history_length], tf.constant(history.PAD, tf.int64))
        if end is None:
            first_key = user_id * time_slots
            rank = tf.searchsorted(times, timestamp, side="left", out_type=tf.int64)
            end = tf.searchsorted(keys, first_key + rank, side="left", out_type=tf.int64)  # [b]
            available = end - tf.searchsorted(keys, first_key, side="left", out_type=tf.int64)
        positions = end[:, tf.newaxis] - 1 - offsets  # [b, L], newest first
        valid = offsets < available[:, tf.newaxis]
        return tf.where(valid, tf.gather(items, tf.maximum(positions, 0)), tf.constant(history.PAD, tf.int64))

    return lookup


def time_feature_columns(timestamp) -> Dict[str, tf.Tensor]:
    """{hour_of_day, day_of_week: [b] int64} of Unix seconds [b] (UTC; as data.history.hour_of_day /
    day_of_week, Monday = 0)."""
    timestamp = tf.cast(timestamp, tf.int64)
    return {
        "hour_of_day": tf.math.floormod(tf.math.floordiv(timestamp, history.SECONDS_PER_HOUR), 24),
        "day_of_week": tf.math.floormod(
            tf.math.floordiv(timestamp, history.SECONDS_PER_DAY) + history.EPOCH_WEEKDAY, 7
        ),
    }


def training_dataset(
    files: List[str],
    batch_size: int,
    shuffle_buffer: int = 100_000,
    seed: Optional[int] = None,
    repeat: bool = False,
    num_true: int = 1,
    start_step: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    max_in_memory_bytes: int = MAX_IN_MEMORY_BYTES,
    columns: Optional[Dict[str, np.ndarray]] = None,
    query_inputs: Optional[QueryInputs] = None,
) -> tf.data.Dataset:
    """Shuffled training batches, from step `start_step` on.

    Args:
      files: the split's TFRecord shards (data.records), in a fixed order.
      batch_size: the global batch size: rows per step over all shards.
      shuffle_buffer: records in the shuffle buffer (streaming only; in memory the shuffle is perfect).
      seed: makes the order reproducible (None: a fresh order every run).
      repeat: endless batches; otherwise one pass.
      num_true: interactions per row; > 1 groups num_true interactions of one user per row (streaming).
      start_step: global batches to leave out at the start (a resumed run's step).
      num_shards, shard_index: this input pipeline's share, for tf.distribute.
      columns: the split as read by `read_in_memory` (None: read here). Pass it when the dataset is built inside
        a tf.function, as ParameterServerStrategy does on its workers, where files cannot be read eagerly.
      query_inputs: history and time features to add, users to leave out (None: neither).
    Returns:
      Batches {name: [batch_size // num_shards] int64} ({item_id, timestamp}: [.., num_true] when num_true > 1),
      with query_inputs' history [.., L] and time features.
      The last partial batch of a pass is dropped so every step has the same shape.
    """
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    if columns is None:
        columns = read_in_memory(files, num_true, max_in_memory_bytes)
    if columns is not None:
        return in_memory_batches(
            columns, batch_size, seed, repeat, start_step, num_shards, shard_index, query_inputs=query_inputs
        )
    return streaming_batches(
        files, batch_size, seed, repeat, num_true, start_step, num_shards, shard_index, shuffle_buffer, query_inputs
    )


def read_in_memory(
    files: List[str], num_true: int = 1, max_in_memory_bytes: int = MAX_IN_MEMORY_BYTES
) -> Optional[Dict[str, np.ndarray]]:
    """The split's columns {name: [n]} in canonical_order when training_dataset batches it in memory; None when it
    streams (fits_in_memory)."""
    if fits_in_memory(files, num_true, max_in_memory_bytes):
        return canonical_order(records.read_all(files))
    return None


def fits_in_memory(files: List[str], num_true: int = 1, max_in_memory_bytes: int = MAX_IN_MEMORY_BYTES) -> bool:
    """True when training_dataset batches the split in memory; False when it streams: a split above
    max_in_memory_bytes, num_true > 1, or records that carry their history (prepared to be streamed)."""
    on_disk = sum(os.path.getsize(path) for path in files)
    return num_true == 1 and on_disk <= max_in_memory_bytes and records.written_history_length(files) is None


def canonical_order(columns: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The rows {name: [n, ...]} by (user_id, timestamp, item_id), equal keys as read: a seed's batches then depend
    on the split's rows, not on the order a writer put them in its shards (data.prepare's two runners write the
    same rows in different orders). Some 0.2 s for a million rows."""
    order = canonical_rows(columns)
    return {name: values[order] for name, values in columns.items()}


def canonical_rows(columns: Dict[str, np.ndarray]) -> np.ndarray:
    """[n] int64: the rows of canonical_order, as positions in the columns (canonical row i is row order[i])."""
    return np.lexsort((columns["item_id"], columns["timestamp"], columns["user_id"])).astype(np.int64, copy=False)


def shard_size(batch_size: int, num_shards: int) -> int:
    """Rows of each input pipeline's share of a global batch; ValueError unless they divide evenly."""
    if batch_size % num_shards:
        raise ValueError(f"batch_size={batch_size} must divide evenly over {num_shards} input pipelines")
    return batch_size // num_shards


# Batches of row indices gathered in one call of the in-memory pipeline's map.
GATHER_BATCHES = 64


def in_memory_batches(
    columns: Dict[str, np.ndarray],
    batch_size: int,
    seed: int,
    repeat: bool = True,
    start_step: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    query_inputs: Optional[QueryInputs] = None,
) -> tf.data.Dataset:
    """Batches of parallel columns {name: [n]}: epoch e is the permutation seeded by (seed, e), cut into
    floor(n / batch_size) global batches; this shard yields columns [shard_index * b, (shard_index + 1) * b) of
    each, b = batch_size // num_shards. query_inputs: rows left out first, features added to each batch."""
    query_inputs = query_inputs or QueryInputs()
    columns = query_inputs.with_history_positions(query_inputs.keep_rows(columns))
    num_rows = len(next(iter(columns.values())))
    steps_per_epoch = num_rows // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {num_rows} rows of the split")
    tensors = {name: tf.constant(values) for name, values in columns.items()}
    rows_per_shard = shard_size(batch_size, num_shards)
    shard_start = shard_index * rows_per_shard

    def epoch_rows(epoch):
        permutation = tf.random.experimental.stateless_shuffle(
            tf.range(num_rows, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        rows = tf.reshape(permutation[: steps_per_epoch * batch_size], [steps_per_epoch, batch_size])
        return tf.data.Dataset.from_tensor_slices(rows[:, shard_start : shard_start + rows_per_shard])

    first_epoch = start_step // steps_per_epoch
    epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max if repeat else first_epoch + 1)
    indices = epochs.flat_map(epoch_rows).skip(start_step - first_epoch * steps_per_epoch)  # [rows_per_shard]
    add_query_inputs = query_inputs.batch_function()

    def gather_batches(rows):  # rows [k, rows_per_shard] -> {name: [k, rows_per_shard, ...]}
        flat_rows = tf.reshape(rows, [-1])  # [k * rows_per_shard]
        columns = add_query_inputs({name: tf.gather(tensor, flat_rows) for name, tensor in tensors.items()})
        return {name: tf.reshape(values, [-1, rows_per_shard, *values.shape[1:]]) for name, values in columns.items()}

    # Batches are gathered GATHER_BATCHES at a time and split again: tf.data's cost per map call, not the gather,
    # was most of a batch's CPU (0.24 -> 0.16 ms per batch of 1,024), and what is gathered stays a few batches.
    batches = indices.batch(GATHER_BATCHES).map(gather_batches, num_parallel_calls=1).unbatch()
    # A fixed buffer and no autotuning: with tf.data's autotuner on, a quarter of the trainer's fits ran at one
    # fixed slower pace (5.14 ms per step where the others took 3.0-3.3: 18 of 66 fits; none of 66 without it).
    options = tf.data.Options()
    options.autotune.enabled = False
    return batches.prefetch(GATHER_BATCHES).with_options(options)


def streaming_batches(
    files: List[str],
    batch_size: int,
    seed: int,
    repeat: bool = True,
    num_true: int = 1,
    start_step: int = 0,
    num_shards: int = 1,
    shard_index: int = 0,
    shuffle_buffer: int = 100_000,
    query_inputs: Optional[QueryInputs] = None,
) -> tf.data.Dataset:
    """TFRecord shards -> shuffled, parsed batches of batch_size // num_shards rows (this shard's share of the
    global batch), from global step start_step on.

    With num_true > 1 each row holds num_true interactions of one user (grouped from the shuffled stream with
    group_by_window); a user's leftover interactions that do not fill a row wait for the next pass. query_inputs:
    the excluded users' records are dropped before batching, the features added to each batch.
    """
    query_inputs = query_inputs or QueryInputs()
    excluded = query_inputs.excluded_users
    keep = None
    if excluded is not None and len(excluded):
        excluded_users = tf.constant(np.sort(excluded), tf.int64)

        def keep(row):
            user = row["user_id"]
            position = tf.searchsorted(excluded_users, user[tf.newaxis], out_type=tf.int64)[0]
            found = tf.gather(excluded_users, tf.minimum(position, tf.size(excluded_users, tf.int64) - 1))
            return tf.logical_not(tf.equal(found, user))

    batch_size = shard_size(batch_size, num_shards)
    width = records.max_negatives(files)  # of the corpus: the same for every shard
    context = records.context_columns(files)
    written = records.written_history_length(files)
    if num_shards > 1:
        if len(files) < num_shards:
            raise ValueError(f"{len(files)} files cannot be sharded over {num_shards} input pipelines by file")
        files = files[shard_index::num_shards]
    dataset = tf.data.Dataset.from_tensor_slices(files)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if num_true > 1:
        dataset = _rows_of_one_user(dataset, num_true, keep, width, context, written)
        dataset = dataset.batch(batch_size, drop_remainder=True)
    elif keep is not None:  # records parsed one by one, to drop rows before batching
        dataset = dataset.map(lambda record: records.parse_single(record, width, context, written))
        dataset = dataset.filter(keep).batch(batch_size, drop_remainder=True)
    else:
        dataset = dataset.batch(batch_size, drop_remainder=True)
        dataset = dataset.map(lambda batch: records.parse_batch(batch, width, context, written),
                              num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(query_inputs.batch_function(), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # The same seed gives the same order, so skipping what a previous run consumed resumes where it stopped.
    return dataset.skip(start_step).prefetch(tf.data.AUTOTUNE)


def _rows_of_one_user(serialized: tf.data.Dataset, num_true: int, keep=None, width=None,
                      context=(), history_length=None) -> tf.data.Dataset:
    """Serialized records -> rows {user_id: [], item_id, timestamp, weight: [num_true]} of one user each,
    negative_ids [num_true * width] when width (max_negatives) is given, and the earliest interaction's value of
    each context column and of its written history (history_length: the records carry one); keep: an optional
    predicate on a parsed record."""
    parsed = serialized.map(lambda record: records.parse_single(record, width, context, history_length),
                            num_parallel_calls=tf.data.AUTOTUNE)
    if keep is not None:
        parsed = parsed.filter(keep)
    grouped = parsed.group_by_window(
        key_func=lambda row: row["user_id"],
        reduce_func=lambda user_id, window: window.batch(num_true, drop_remainder=True),
        window_size=num_true,
    )

    def row(rows):
        values = {name: rows[name] for name in ("item_id", "timestamp", "weight")}
        if width:
            values[records.NEGATIVES] = tf.reshape(rows[records.NEGATIVES], [num_true * width])
        earliest = tf.argmin(rows["timestamp"])
        values.update({column.name: tf.gather(rows[column.name], earliest) for column in context})
        if history_length is not None:  # the earliest interaction's: it holds no target of the row
            values[records.HISTORY] = tf.gather(rows[records.HISTORY], earliest)
        return {"user_id": rows["user_id"][0], **values}

    return grouped.map(row)
