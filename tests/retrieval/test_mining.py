"""Hard-negative mining: hand-worked rows, a NumPy top-k reference, ties, num_true > 1, gradients, TFRS."""

import numpy as np
import pytest
import tensorflow as tf

from retrieval import losses, samplers
from retrieval.losses import MASKED_LOGIT, CandidateLogits
from retrieval.mining import hard_negative_columns, hard_negatives

M = MASKED_LOGIT


def numpy_hard_negatives(logits, valid, num_true, k):
    """Reference: per row, the valid negatives by decreasing logit (stable: lower column first on ties), then the
    masked ones by column; the first k. -> (mined logits, mined valid, kept columns)."""
    negatives, negative_valid = logits[:, num_true:], valid[:, num_true:]
    k = min(k, negatives.shape[1])
    ranking = np.where(negative_valid, negatives, -np.inf)
    columns = np.stack([np.lexsort((np.arange(len(row)), -row))[:k] for row in ranking])
    kept = np.take_along_axis(negatives, columns, axis=1)
    kept_valid = np.take_along_axis(negative_valid, columns, axis=1)
    return (
        np.concatenate([logits[:, :num_true], kept], axis=1),
        np.concatenate([valid[:, :num_true], kept_valid], axis=1),
        columns,
    )


def test_hand_worked_rows():
    logits = tf.constant(
        [
            [5.0, 1.0, 3.0, 2.0, 4.0],  # keeps negatives 4 (column 3) and 3 (column 1)
            [0.0, -1.0, M, 7.0, 2.0],  # the masked column is skipped: 7 and 2
            [1.0, M, M, 0.5, M],  # one valid negative: 0.5, then the first masked column (0), still masked
        ]
    )
    candidates = CandidateLogits(logits, 1, tf.constant([[1, 2], [2, 1], [2, 2], [2, 4]], tf.int64), tf.constant(3))
    mined = hard_negatives(candidates, k=2)
    np.testing.assert_array_equal(hard_negative_columns(candidates, 2).numpy(), [[3, 1], [2, 3], [2, 0]])
    np.testing.assert_array_equal(mined.logits.numpy(), [[5, 4, 3], [0, 7, 2], [1, 0.5, M]])
    np.testing.assert_array_equal(mined.masked_positions.numpy(), [[2, 2]])
    np.testing.assert_array_equal(mined.valid().numpy(), [[True] * 3, [True] * 3, [True, True, False]])
    assert mined.num_true == 1 and mined.num_accidental_hits.numpy() == 3  # hits among all the sampled ones


def test_masked_candidates_rank_last_whatever_their_value():
    """A masked column is listed in masked_positions even if its logit is not MASKED_LOGIT (here: the largest)."""
    candidates = CandidateLogits(tf.constant([[0.0, 9.0, 1.0, 2.0]]), 1, tf.constant([[0, 1]], tf.int64))
    mined = hard_negatives(candidates, k=2)
    np.testing.assert_array_equal(mined.logits.numpy(), [[0.0, 2.0, 1.0]])
    assert mined.masked_positions.shape == (0, 2)


def test_ties_keep_the_lower_column():
    candidates = CandidateLogits(tf.constant([[0.0, 2.0, 5.0, 5.0, 5.0, 1.0]]), 1)
    np.testing.assert_array_equal(hard_negative_columns(candidates, 2).numpy(), [[1, 2]])
    mined = hard_negatives(candidates, k=4)
    np.testing.assert_array_equal(hard_negative_columns(candidates, 4).numpy(), [[1, 2, 3, 0]])
    np.testing.assert_array_equal(mined.logits.numpy(), [[0, 5, 5, 5, 2]])
    assert mined.masked_positions is None


@pytest.mark.parametrize("num_true, k", [(1, 3), (2, 5), (3, 1), (2, 100)])
def test_equals_numpy_top_k_with_masks_and_ties(num_true, k):
    rng = np.random.default_rng(num_true * 100 + k)
    batch, num_sampled = 6, 12
    logits = rng.integers(-3, 4, size=(batch, num_true + num_sampled)).astype(np.float32)  # many ties
    valid = np.ones_like(logits, bool)
    valid[:, num_true:] = rng.random((batch, num_sampled)) < 0.6
    valid[0, num_true:] = False  # a row with no valid negative at all
    logits[~valid] = M
    candidates = CandidateLogits(tf.constant(logits), num_true, tf.where(tf.logical_not(tf.constant(valid))))
    mined = hard_negatives(candidates, k)
    expected_logits, expected_valid, expected_columns = numpy_hard_negatives(logits, valid, num_true, k)
    np.testing.assert_array_equal(hard_negative_columns(candidates, k).numpy(), expected_columns)
    np.testing.assert_array_equal(mined.logits.numpy(), expected_logits)
    np.testing.assert_array_equal(mined.valid().numpy(), expected_valid)
    np.testing.assert_array_equal(mined.masked_positions.numpy(), np.argwhere(~expected_valid))
    np.testing.assert_allclose(mined.labels().numpy()[:, :num_true], 1.0 / num_true)
    assert mined.logits.shape == (batch, num_true + min(k, num_sampled))


def test_keeping_every_negative_leaves_the_softmax_loss_unchanged():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(4, 2 + 9)).astype(np.float32))
    candidates = CandidateLogits(logits, 2, tf.constant([[0, 3], [2, 10]], tf.int64))
    mined = hard_negatives(candidates, k=50)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(mined, label_smoothing=0.1).numpy(),
        losses.softmax_cross_entropy(candidates, label_smoothing=0.1).numpy(),
        rtol=1e-6,
    )


def test_gradient_is_zero_for_dropped_columns():
    logits = tf.Variable([[3.0, 1.0, 4.0, -2.0, 0.5, 2.0], [0.0, 1.0, -1.0, 6.0, 2.0, 1.5]])
    masked = tf.constant([[1, 4]], tf.int64)  # row 1's column 4 (2.0) is masked: ranks last, dropped
    with tf.GradientTape() as tape:
        masked_logits = tf.tensor_scatter_nd_update(logits, masked, [M])
        mined = hard_negatives(CandidateLogits(masked_logits, 2, masked), k=2)
        loss = tf.reduce_sum(losses.softmax_cross_entropy(mined))
    gradient = tape.gradient(loss, logits).numpy()
    # Row 0 keeps negatives 4.0 (column 2) and 2.0 (5); row 1 keeps 6.0 (3) and 1.5 (5); true columns 0, 1.
    kept = np.array([[1, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 1]], bool)
    assert np.all(gradient[~kept] == 0.0)
    expected = np.zeros_like(gradient)
    for row, columns in enumerate([[0, 1, 2, 5], [0, 1, 3, 5]]):
        values = logits.numpy()[row, columns]
        softmax = np.exp(values - values.max()) / np.exp(values - values.max()).sum()
        expected[row, columns] = softmax - np.array([0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-7)


def test_unknown_num_sampled_in_tf_function():
    mine = tf.function(
        lambda logits: hard_negatives(CandidateLogits(logits, 1), k=3).logits,
        input_signature=[tf.TensorSpec([None, None], tf.float32)],
    )
    np.testing.assert_array_equal(mine(tf.constant([[1.0, 2.0, 3.0]])).numpy(), [[1, 3, 2]])  # k capped at 2
    np.testing.assert_array_equal(mine(tf.constant([[1.0, 2.0, 3.0, 0.0, 9.0]])).numpy(), [[1, 9, 3, 2]])


def test_k_below_one_is_refused():
    with pytest.raises(ValueError, match="k must be at least 1"):
        hard_negatives(CandidateLogits(tf.zeros([2, 3]), 1), k=0)


def test_on_candidate_logits_from_in_batch_sampling():
    """The real pipeline: in-batch candidates (own positive + a duplicate id masked), mined, then the loss."""
    table = tf.constant(np.random.default_rng(2).normal(size=(10, 4)).astype(np.float32))
    true_ids = tf.constant([[1], [2], [1], [7]], tf.int64)  # rows 0 and 2 share item 1: an accidental hit each
    query = tf.constant(np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32))
    candidates = losses.candidate_logits(
        query, true_ids, lambda ids: tf.gather(table, ids), samplers.in_batch(true_ids)
    )
    mined = hard_negatives(candidates, k=3)
    assert mined.logits.shape == (4, 4)
    logits, valid = mined.logits.numpy(), mined.valid().numpy()
    assert np.all(logits[~valid] == M) and np.all(logits[valid] > M)
    # Columns hold items 1, 2, 1, 7. Rows 0 and 2 (item 1) have 2 valid negatives (own positive and hit masked), so
    # they keep one masked column; rows 1 and 3 have 3 (own positive masked).
    np.testing.assert_array_equal(valid.sum(axis=1), [3, 4, 3, 4])
    assert mined.num_accidental_hits.numpy() == 2
    assert np.all(np.isfinite(losses.softmax_cross_entropy(mined, label_smoothing=0.1).numpy()))


def test_matches_tfrs_hard_negative_mining():
    """One positive, nothing masked: the same kept logits as TFRS's layer (which leaves them unsorted)."""
    from tensorflow_recommenders.layers.loss import HardNegativeMining

    rng = np.random.default_rng(5)
    logits = tf.constant(rng.normal(size=(8, 1 + 20)).astype(np.float32))
    labels = tf.one_hot(tf.zeros([8], tf.int32), 21)
    tfrs_logits, tfrs_labels = HardNegativeMining(num_hard_negatives=5)(logits, labels)
    mined = hard_negatives(CandidateLogits(logits, 1), k=5)
    np.testing.assert_array_equal(np.sort(mined.logits.numpy(), axis=1), np.sort(tfrs_logits.numpy(), axis=1))
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(mined).numpy(),
        tf.nn.softmax_cross_entropy_with_logits(tfrs_labels, tfrs_logits).numpy(),
        rtol=1e-6,
    )
