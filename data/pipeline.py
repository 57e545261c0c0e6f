"""tf.data pipelines over prepared interaction files."""

from typing import List, Optional

import tensorflow as tf

from data import records


def training_dataset(
    files: List[str],
    batch_size: int,
    shuffle_buffer: int = 100_000,
    seed: Optional[int] = None,
    repeat: bool = False,
    num_true: int = 1,
) -> tf.data.Dataset:
    """Shuffled batches {user_id: [batch], item_id: [batch] or [batch, num_true], timestamp} read from shards.

    With num_true > 1 each row holds num_true interactions of one user (grouped from the shuffled stream with
    group_by_window), for losses with several positives per row; a user's leftover interactions that do not
    fill a row wait for the next pass.
    Files are listed in a fixed order and read interleaved, so tf.distribute can shard the dataset by file.
    The last partial batch is dropped so every step has the same shape (and every replica a full share).
    """
    dataset = tf.data.Dataset.from_tensor_slices(files)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if num_true > 1:
        dataset = _rows_of_one_user(dataset, num_true)
        dataset = dataset.batch(batch_size, drop_remainder=True)
    else:
        dataset = dataset.batch(batch_size, drop_remainder=True)
        dataset = dataset.map(records.parse_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _rows_of_one_user(serialized: tf.data.Dataset, num_true: int) -> tf.data.Dataset:
    """Serialized records -> rows {user_id: [], item_id: [num_true], timestamp: [num_true]} of one user each."""
    parsed = serialized.map(
        lambda record: tf.io.parse_single_example(record, records.FEATURE_SPEC), num_parallel_calls=tf.data.AUTOTUNE
    )
    grouped = parsed.group_by_window(
        key_func=lambda row: row["user_id"],
        reduce_func=lambda user_id, window: window.batch(num_true, drop_remainder=True),
        window_size=num_true,
    )
    return grouped.map(
        lambda rows: {"user_id": rows["user_id"][0], "item_id": rows["item_id"], "timestamp": rows["timestamp"]}
    )
