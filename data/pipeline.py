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
) -> tf.data.Dataset:
    """Shuffled batches {user_id, item_id, timestamp: [batch] int64} read from TFRecord shards.

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
    dataset = dataset.batch(batch_size, drop_remainder=True)
    dataset = dataset.map(records.parse_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
