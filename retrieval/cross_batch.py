"""Cross-batch memory: the item embeddings of the last few batches, reused as extra negatives.

Wang et al., "Cross-Batch Negative Sampling for Training Two-Tower Recommenders", SIGIR 2021 (CBNS). In-batch
negatives give each row batch_size - 1 negatives for the price of the batch's own item embeddings; CBNS adds the
item embeddings of the previous `num_batches` batches, kept in a FIFO memory, at the price of one matrix product:

    candidates = [ current batch's items | memory: the last num_batches batches' items ]      (memory: no gradient)
    logits     = q [batch, dim] @ candidates^T   -> subtract log Q -> mask accidental hits and empty slots -> loss

The memory embeddings were computed by an older item tower (up to num_batches steps old); the paper finds them
close enough once the tower has warmed up ("embedding stability") and keeps the memory small. They are constants:
`read` wraps them in tf.stop_gradient, and the memory is written from the current batch's embeddings under
tf.stop_gradient, so no gradient reaches the memory or, through it, the towers of earlier steps.

Q of a memory item. `write` stores the expected count each item had when it was written (e.g.
`frequency.StreamingFrequencyEstimator.expected_count`, per step). Every column of [in-batch | memory] then
carries a per-step expected count, while the item's expected count among all the candidates is the sum over
the batches they come from, ~ (1 + number of filled batches) * per-step count for a stationary stream. The factor is
the same for every column, so a softmax is unchanged by it; a loss that needs absolute counts (NCE) multiplies
by it. A caller may also look Q up again at read time (`estimator.expected_count(memory.ids)`), fresher than the
stored one.

Layout. `num_batches` slots of `batch_size` rows; a write fills the oldest slot (FIFO eviction by whole batches)
and a batch smaller than batch_size (the last one of an epoch) leaves the rest of its slot empty. `read` returns
the memory flattened to [memory_size] rows, memory_size = num_batches * batch_size, oldest batch first, with a
`valid` mask: False for empty rows (never written, or the unused tail of a short batch). Empty rows hold id -1,
embedding 0 and expected count 1 (finite logits after the log-Q correction); mask them with `masked_positions`.

State and checkpoints. Non-trainable tf.Variables: a tf.train.Checkpoint or Keras model that tracks the memory
saves it, and a restored run continues with the same negatives as an uninterrupted one would; a trainer that
leaves it out of the checkpoint starts with an empty memory after a restore (all rows invalid), which is also safe.

Distribution. The memory is global, like TFRS's cross-replica in-batch negatives: in a replica context `write`
all-gathers the replicas' batches (`frequency.global_batch`, replicas in order) and the variables keep one
identical copy per replica (`frequency.replicated_state`), so every replica reads the same memory_size negatives.
batch_size is then the global batch size.
"""

from typing import NamedTuple, Optional

import tensorflow as tf

from retrieval.frequency import global_batch, replicated_state
from retrieval.losses import accidental_hits


class MemoryContents(NamedTuple):
    """The memory as extra candidates, oldest batch first. memory_size = num_batches * batch_size."""

    embeddings: tf.Tensor  # [memory_size, dim] float32, under tf.stop_gradient; 0 in empty rows
    ids: tf.Tensor  # [memory_size] int64; -1 in empty rows
    expected_count: tf.Tensor  # [memory_size] float32, Q as written; 1 in empty rows
    valid: tf.Tensor  # [memory_size] bool; False in empty rows


class CrossBatchMemory(tf.Module):
    """A FIFO of the item embeddings, ids and expected counts of the last `num_batches` (global) batches.

    Usage, each training step, after the loss has read the memory (`read`, then `write` the current batch):
        memory = cross_batch.CrossBatchMemory(num_batches=4, batch_size=global_batch_size, dim=64)
        contents = memory.read()                                        # extra negatives, no gradient
        ... logits against contents.embeddings, masked by masked_positions(true_ids, contents.ids, contents.valid)
        memory.write(item_embeddings, item_ids, expected_count)          # this batch's items: [local batch, ...]

    Embeddings are stored in float32 whatever the tower's compute dtype. Create it under the strategy's scope.
    """

    def __init__(self, num_batches: int, batch_size: int, dim: int, name: Optional[str] = None):
        """num_batches: batches kept; batch_size: rows per batch (the global batch size); dim: embedding size."""
        super().__init__(name=name)
        for argument, value in (("num_batches", num_batches), ("batch_size", batch_size), ("dim", dim)):
            if value < 1:
                raise ValueError(f"CrossBatchMemory: {argument} must be at least 1, got {value}.")
        self.num_batches, self.batch_size, self.dim = int(num_batches), int(batch_size), int(dim)
        slots = [self.num_batches, self.batch_size]
        with self.name_scope:
            self.embeddings = replicated_state(tf.zeros(slots + [self.dim], tf.float32), "embeddings")
            self.ids = replicated_state(tf.fill(slots, tf.constant(-1, tf.int64)), "ids")
            self.expected_count = replicated_state(tf.ones(slots, tf.float32), "expected_count")
            self.filled = replicated_state(tf.zeros([self.num_batches], tf.int64), "filled")  # rows written per slot
            self.next_slot = replicated_state(tf.constant(0, tf.int64), "next_slot")  # the oldest: written next

    @property
    def memory_size(self) -> int:
        """Rows `read` returns: num_batches * batch_size."""
        return self.num_batches * self.batch_size

    def read(self) -> MemoryContents:
        """The memory as extra negatives, oldest batch first (see MemoryContents for shapes)."""
        order = tf.math.floormod(self.next_slot + tf.range(self.num_batches, dtype=tf.int64), self.num_batches)
        # order: [num_batches] slots from the oldest (next to be overwritten) to the newest
        embeddings = tf.reshape(tf.gather(self.embeddings, order), [self.memory_size, self.dim])  # [M, dim]
        ids = tf.reshape(tf.gather(self.ids, order), [self.memory_size])  # [M]
        expected_count = tf.reshape(tf.gather(self.expected_count, order), [self.memory_size])  # [M]
        rows = tf.range(self.batch_size, dtype=tf.int64)  # [batch_size]
        valid = rows[tf.newaxis, :] < tf.gather(self.filled, order)[:, tf.newaxis]  # [num_batches, batch_size]
        return MemoryContents(
            tf.stop_gradient(embeddings), ids, expected_count, tf.reshape(valid, [self.memory_size])
        )

    def write(self, embeddings, ids, expected_count):
        """Enqueues one batch in place of the oldest.

        Args:
          embeddings: [n, dim] this replica's item embeddings (any float dtype; stored as float32, no gradient).
          ids: [n] their item ids.
          expected_count: [n] their Q (expected count per step, e.g. from a StreamingFrequencyEstimator).
          In a replica context with several replicas, each argument is all-gathered into the global batch, whose
          size must be at most batch_size.
        Returns nothing (so it can be a tf.function of its own); eagerly and in tf.function, later reads see the
        update (tf.function orders stateful ops on one variable as written).
        """
        embeddings = tf.cast(global_batch(tf.stop_gradient(embeddings)), tf.float32)  # [n, dim] global batch
        ids = tf.reshape(tf.cast(global_batch(ids), tf.int64), [-1])  # [n]
        expected_count = tf.reshape(tf.cast(global_batch(expected_count), tf.float32), [-1])  # [n]
        embeddings.shape.assert_is_compatible_with([None, self.dim])
        num_rows = tf.shape(ids, out_type=tf.int64)[0]  # [] n
        tf.debugging.assert_less_equal(
            num_rows,
            tf.constant(self.batch_size, tf.int64),
            message=f"CrossBatchMemory.write: a batch larger than the memory's batch_size ({self.batch_size}); "
            "pass the global batch size",
        )
        tf.debugging.assert_equal(
            tf.shape(embeddings, out_type=tf.int64)[0],
            num_rows,
            message="CrossBatchMemory.write: embeddings and ids have different numbers of rows",
        )
        tf.debugging.assert_equal(
            tf.shape(expected_count, out_type=tf.int64)[0],
            num_rows,
            message="CrossBatchMemory.write: expected_count and ids have different numbers of rows",
        )
        padding = self.batch_size - num_rows  # [] empty rows at the end of the slot
        slot = tf.reshape(self.next_slot, [1])  # [1]
        self.embeddings.scatter_update(
            tf.IndexedSlices(tf.pad(embeddings, [[0, padding], [0, 0]])[tf.newaxis], slot)  # [1, batch_size, dim]
        )
        self.ids.scatter_update(
            tf.IndexedSlices(tf.pad(ids, [[0, padding]], constant_values=-1)[tf.newaxis], slot)  # [1, batch_size]
        )
        self.expected_count.scatter_update(
            tf.IndexedSlices(tf.pad(expected_count, [[0, padding]], constant_values=1.0)[tf.newaxis], slot)
        )  # [1, batch_size]
        self.filled.scatter_update(tf.IndexedSlices(tf.reshape(num_rows, [1]), slot))  # [1] rows written
        self.next_slot.assign(tf.math.floormod(slot[0] + 1, self.num_batches))  # [] the new oldest slot


def masked_positions(true_ids, memory_ids, valid):
    """(row, memory column) of every memory candidate a row must not score: [num_masked, 2] int64, each once.

    Accidental hits (a valid memory id equal to one of the row's true ids, found by `losses.accidental_hits`),
    then every row's empty columns. Columns index the memory ([0, memory_size)); offset them by the columns that
    precede the memory in the candidate matrix, as `losses.candidate_logits` offsets its own by num_true.

    Args:
      true_ids: [batch, num_true] (or [batch]) this replica's true item ids.
      memory_ids: [memory_size] the memory's ids (`MemoryContents.ids`).
      valid: [memory_size] bool (`MemoryContents.valid`).
    Returns:
      [num_hits + batch * num_empty, 2] int64: the hits (in `losses.accidental_hits` order), then the empty
      columns row by row. Until the memory has been filled that is batch * num_empty positions, e.g. 10^7 for a
      batch of 1024 and an empty memory of 10^4 rows; a caller may instead drop the empty columns
      (tf.boolean_mask(..., valid)), at the price of a dynamic candidate count.
    """
    true_ids = tf.convert_to_tensor(true_ids)
    if true_ids.shape.rank == 1:
        true_ids = true_ids[:, tf.newaxis]
    true_ids = tf.cast(true_ids, tf.int64)  # [batch, num_true]
    memory_ids = tf.cast(memory_ids, tf.int64)  # [M]
    hits = accidental_hits(true_ids, memory_ids)  # [num_hits, 2] (row, column)
    hits = tf.boolean_mask(hits, tf.gather(valid, hits[:, 1]))  # [num_valid_hits, 2]: empty rows are masked below
    rows = tf.range(tf.shape(true_ids, out_type=tf.int64)[0])  # [batch]
    empty_columns = tf.where(tf.logical_not(valid))[:, 0]  # [num_empty] int64
    empty = tf.stack(tf.meshgrid(rows, empty_columns, indexing="ij"), axis=-1)  # [batch, num_empty, 2]
    return tf.concat([hits, tf.reshape(empty, [-1, 2])], axis=0)  # [num_masked, 2]
