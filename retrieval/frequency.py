"""Streaming item frequency estimation: Q for in-batch negatives without a corpus count table.

Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys 2019,
section 4, Algorithm 2. Two hashed arrays over `num_buckets` buckets, h(y) = y mod num_buckets:

    A[h]  the last step at which an item of bucket h was seen
    B[h]  an exponential moving average (learning rate alpha) of the gap, in steps, between two occurrences

and at every step t, for every occurrence of an item y in the step's batch, in order:

    B[h(y)] <- (1 - alpha) * B[h(y)] + alpha * (t - A[h(y)])
    A[h(y)] <- t

What 1 / B estimates. The average of the gaps over a long run of N occurrences is (steps elapsed) / N, so
1 / B estimates the item's expected number of occurrences per step (per `update` call), not a probability:

    expected_count(y) = 1 / B[h(y)]  ~  batch_size * p(y)        (C / B with the bias correction below)

with p(y) the probability that one example's item is y and batch_size the number of ids passed to each
`update` (the global batch). That is the expected count Q that the log-Q correction of in-batch negatives
needs (`samplers.in_batch` uses batch_size * item_probability[id], the same quantity): a loss subtracts
log(expected_count(y)) as it is, with no batch-size factor. For an item seen at most about once a step it is also
the probability that the item appears in a step's batch (what the paper calls the sampling probability);
frequent items have counts above 1. `probability(ids, batch_size)` divides by batch_size to give p(y).

Duplicates within a batch are counted, not dropped: an item seen m times at step t is m occurrences, with the
gaps t - A, 0, ..., 0 (the later ones are 0 steps after the first). So B tracks 1 / (occurrences per step);
deduplicating would instead estimate the probability of appearing at least once, 1 - (1 - p)^batch_size, which
is not the expected count of the in-batch candidates (the in-batch softmax keeps duplicate columns). Unlike
Algorithm 2's loop, the m observations of a step enter the moving average without an order, each as their mean
(t - A) / m: in the loop the one nonzero gap comes first and is weighted alpha (1 - alpha)^(m - 1), less than the
zeros after it, which overestimates a frequent item's count by the factor (1 - (1 - alpha)^m) /
(m alpha (1 - alpha)^(m - 1)): by 48% (measured) for an item seen 68 times a step at alpha = 0.01, 3% at 0.001.
For m = 1 both are the paper's rule. The m updates have a closed form, applied to all buckets of a step at once
(a scatter of [unique buckets], O(batch) per step):

    B[h] <- (1 - alpha)^m * B[h] + (1 - (1 - alpha)^m) * (t - A[h]) / m

Ids of one bucket (hash collisions) are the same item to the estimator, as in the paper: a bucket estimates the
summed count of its ids.

Two choices where the paper is silent (it leaves A and B's start values open; zeros are implied):
- Bias correction. Starting B at 0 biases every estimate upwards until an item has been seen ~1 / alpha times
  (at alpha = 0.001, batch 512 over a Zipfian 1000 items, the 100th item is 15x too frequent after 100 steps and
  2x after 1000). We keep a third array C[h], the total weight the moving average has given observations,
  C <- (1 - alpha)^m * C + (1 - (1 - alpha)^m), and estimate expected_count = C / B (Adam's correction of
  a zero-started moving average). C -> 1, so in the long run this is the paper's 1 / B.
- The first gap. An item first seen at step t has no previous occurrence; its first gap is the number of steps
  since the estimator's first update, t - t0 + 1 (for a memoryless stream, distributed as a gap is), so an
  item seen m times in the very first step gets expected_count m. An item new mid-stream (a new upload) is
  underestimated by this until its later gaps outweigh the first (~1 / alpha occurrences).
A bucket never seen has expected_count 0 (C = B = 0): update with a batch before reading its Q, as the paper
does, so every id of the batch has been seen.

Noise: the moving average covers ~2 / alpha occurrences, so the relative error of an estimate is about
sqrt(alpha / 2) (7% at alpha = 0.01, 2% at alpha = 0.001); a smaller alpha is steadier and slower to follow
a change in popularity.

Hash: y mod num_buckets. The project's ids are dense and ranked by frequency (id 0 = most frequent), so with
num_buckets >= num_items there is no collision at all (a multiplicative hash would collide by the birthday
bound), and with fewer buckets a frequent id shares its bucket only with ids num_buckets apart, far rarer ones.

Distribution: every replica must hold the same estimates. `update` all-gathers the ids of all replicas when
called in a replica context (as `samplers.in_batch` does), so each replica computes the update for the same global
batch, and the variables are ON_WRITE with aggregation ONLY_FIRST_REPLICA: the first replica's scatter is written to
every copy (a broadcast of the [unique buckets] update, not of the arrays), which keeps the copies identical by
construction; reads are local (no communication), and a checkpoint saves one copy. (ON_READ variables cannot be
scattered; SUM / MEAN would all-reduce identical updates for nothing, and NONE forbids replica-context writes.)
"""

from typing import Optional

import tensorflow as tf


def global_batch(values):
    """The global batch of a per-replica tensor [n, ...]: all replicas' values in replica order along axis 0.

    In a replica context with several replicas in sync, an all-gather ([num_replicas * n, ...], replicas in
    order, as the global batch is split); elsewhere (one replica, cross-replica context, no strategy) `values`
    as it is.
    """
    values = tf.convert_to_tensor(values)
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
        return replica.all_gather(values, axis=0)  # [num_replicas * n, ...]
    return values


def replicated_state(initial_value, name):
    """A non-trainable variable whose copies a tf.distribute strategy keeps identical on every replica.

    ON_WRITE with aggregation ONLY_FIRST_REPLICA: a write in a replica context (assign, scatter_update) stores the
    first replica's value in every copy, so the replicas must compute it from the global batch (see module doc).
    Reads are local. Without a strategy it is a plain non-trainable tf.Variable.
    """
    return tf.Variable(
        initial_value,
        trainable=False,
        name=name,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class StreamingFrequencyEstimator(tf.Module):
    """Per-step expected counts of items from the stream of batches (Yi et al. 2019, Algorithm 2, see module doc).

    State (non-trainable tf.Variables, checkpointed with whatever tracks this module, e.g. a tf.train.Checkpoint
    or a Keras model attribute): last_step [num_buckets] int64 (A; -1 = never seen), gap [num_buckets] float32
    (B), weight [num_buckets] float32 (C), first_step [] int64 (t0; -1 before the first update). Create it under
    the strategy's scope. Memory: 16 bytes per bucket.

    Usage, each training step (inside tf.function or eagerly):
        estimator.update(batch_item_ids, step)            # ids [local batch]; step: the global step
        q = estimator.expected_count(candidate_ids)       # Q of in-batch candidates [global batch]
    """

    def __init__(self, num_buckets: int, learning_rate: float = 0.01, name: Optional[str] = None):
        """num_buckets: size of the hashed arrays (>= the number of items: no collisions for dense ids).

        learning_rate: alpha in (0, 1], the moving average's weight of a new gap.
        """
        super().__init__(name=name)
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be at least 1, got {num_buckets}.")
        if not 0.0 < learning_rate <= 1.0:
            raise ValueError(f"learning_rate (alpha) must lie in (0, 1], got {learning_rate}.")
        self.num_buckets = int(num_buckets)
        self.learning_rate = float(learning_rate)
        with self.name_scope:
            self.last_step = replicated_state(tf.fill([self.num_buckets], tf.constant(-1, tf.int64)), "last_step")
            self.gap = replicated_state(tf.zeros([self.num_buckets], tf.float32), "gap")
            self.weight = replicated_state(tf.zeros([self.num_buckets], tf.float32), "weight")
            self.first_step = replicated_state(tf.constant(-1, tf.int64), "first_step")

    def bucket(self, ids):
        """Hash bucket of each id: ids mod num_buckets (floor mod: in [0, num_buckets) for negative ids too)."""
        return tf.math.floormod(tf.cast(ids, tf.int64), self.num_buckets)

    def update(self, ids, step):
        """Processes one step's batch of item ids: Algorithm 2's update for all its occurrences (see module doc).

        Args:
          ids: [n] (any shape, flattened) integer item ids of this replica's batch, duplicates included. In a
            replica context with several replicas they are all-gathered first (`global_batch`), so every
            replica updates with the same global batch; outside one they must already be the global batch.
          step: scalar integer, the training step (e.g. optimizer.iterations). Steps must not decrease; a step
            passed again counts its ids seen earlier in that step as duplicates (gaps of 0 steps). Pass a tensor
            to a tf.function: a Python int retraces it at every new value.
        Returns nothing (so it can be a tf.function of its own); eagerly and in tf.function, later reads see the
        update (tf.function orders stateful ops on one variable as written).
        """
        ids = tf.reshape(tf.cast(global_batch(ids), tf.int64), [-1])  # [n] global batch
        step = tf.cast(step, tf.int64)  # []
        alpha = tf.constant(self.learning_rate, tf.float64)  # []
        first_step = tf.where(self.first_step < 0, step, self.first_step)  # [] t0
        buckets, position = tf.unique(self.bucket(ids))  # [u] buckets of the batch, [n] index into them
        occurrences = tf.math.unsorted_segment_sum(
            tf.ones_like(position, tf.float64), position, tf.size(buckets)
        )  # [u] m >= 1
        last_step = tf.gather(self.last_step, buckets)  # [u] A, -1 if never seen
        tf.debugging.assert_greater_equal(
            step,
            tf.maximum(tf.reduce_max(last_step), first_step),
            message="StreamingFrequencyEstimator.update: a step before an earlier update's; steps must not decrease",
        )
        gap = tf.cast(tf.where(last_step < 0, step - first_step + 1, step - last_step), tf.float32)  # [u] t - A
        # m observations of (t - A) / m in closed form; the coefficients in float64, rounded once to float32.
        decay = tf.pow(1.0 - alpha, occurrences)  # [u] (1 - alpha)^m
        new_weight = tf.cast(1.0 - decay, tf.float32)  # [u] weight of the m new observations
        gap_weight = tf.cast((1.0 - decay) / occurrences, tf.float32)  # [u] (1 - (1 - alpha)^m) / m
        decay = tf.cast(decay, tf.float32)  # [u]
        gap_estimate = decay * tf.gather(self.gap, buckets) + gap_weight * gap  # [u] B
        weight = decay * tf.gather(self.weight, buckets) + new_weight  # [u] C
        self.first_step.assign(first_step)
        self.last_step.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(buckets), step), buckets))
        self.weight.scatter_update(tf.IndexedSlices(weight, buckets))
        self.gap.scatter_update(tf.IndexedSlices(gap_estimate, buckets))

    def expected_count(self, ids):
        """Estimated expected number of occurrences of each id per step (per update's global batch): its Q.

        ids: any shape of integer ids -> the same shape, float32. C / B of the id's bucket (see module doc): for
        in-batch negatives of the global batch this is the expected count Q to subtract log Q of. 0 for a bucket
        never seen.
        """
        buckets = self.bucket(ids)  # [...]
        return tf.math.divide_no_nan(tf.gather(self.weight, buckets), tf.gather(self.gap, buckets))  # [...] C / B

    def probability(self, ids, batch_size):
        """Estimated probability that one example's item is the id: expected_count(ids) / batch_size.

        batch_size: the number of ids each update saw (the global batch size). Same shape as ids, float32;
        `samplers.in_batch`'s item_probability has this meaning (it multiplies by the batch size again).
        """
        return self.expected_count(ids) / tf.cast(batch_size, tf.float32)
