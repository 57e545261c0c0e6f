"""The loss layer's negatives beyond the sampler: streaming Q, cross-batch memory, hard negatives and logged
negatives, each against a NumPy reference of the same softmax."""

import numpy as np
import pytest
import tensorflow as tf

from retrieval import frequency, samplers
from retrieval.retrieval_loss import MIN_EXPECTED_COUNT, LossConfig, RetrievalLoss

NUM_ITEMS, DIM, BATCH = 40, 4, 6


def _tables(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32), rng.normal(size=(BATCH, DIM)).astype(np.float32)


def _softmax_loss(logits, valid):
    """Softmax cross entropy of column 0 over the valid columns of each row (NumPy, float64)."""
    logits = np.where(valid, logits.astype(np.float64), -np.inf)
    top = logits.max(axis=1, keepdims=True)
    return -(logits[:, 0] - (top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))))


def _in_batch_reference(items, queries, positives, log_q):
    """[batch, 1 + batch] logits and valid mask of the in-batch softmax (own column and duplicates masked)."""
    scores = queries @ items[positives].T  # [batch, batch]
    corrected = scores - log_q[positives][np.newaxis, :]
    true = np.diag(scores)[:, None] - log_q[positives][:, None]
    hits = positives[np.newaxis, :] == positives[:, np.newaxis]  # own column and accidental hits
    return np.concatenate([true, corrected], axis=1), np.concatenate([np.ones((BATCH, 1), bool), ~hits], axis=1)


def test_streaming_frequency_gives_in_batch_q_and_updates_only_in_training():
    items, queries = _tables()
    layer = RetrievalLoss(LossConfig(loss="in_batch", frequency_estimation="streaming", frequency_learning_rate=0.5),
                          NUM_ITEMS)
    tower = lambda ids: tf.gather(items, ids)  # noqa: E731
    stream = [np.array([1, 2, 3, 1, 5, 6]), np.array([1, 7, 8, 9, 10, 2]), np.array([1, 2, 11, 12, 13, 14])]
    reference = frequency.StreamingFrequencyEstimator(NUM_ITEMS, 0.5)
    for step, positives in enumerate(stream):
        loss, _ = layer.loss_and_diagnostics(queries, positives, tower, training=True, step=tf.constant(step))
        reference.update(positives, tf.constant(step))
        log_q = np.log(np.maximum(reference.expected_count(np.arange(NUM_ITEMS)).numpy(), MIN_EXPECTED_COUNT))  # floored as the layer does
        np.testing.assert_allclose(loss.numpy(), _softmax_loss(*_in_batch_reference(items, queries, positives, log_q)),
                                   rtol=1e-5)
    frozen = layer.frequency.gap.numpy().copy()
    layer(queries, stream[0], tower)  # not a training call: the estimate stays
    np.testing.assert_array_equal(layer.frequency.gap.numpy(), frozen)


def test_cross_batch_memory_adds_the_previous_batches_positives_as_negatives():
    items, queries = _tables(1)
    counts = np.arange(NUM_ITEMS, 0, -1).astype(np.float64)
    layer = RetrievalLoss(LossConfig(loss="in_batch", cross_batch_batches=2), NUM_ITEMS, counts,
                          global_batch_size=BATCH, embedding_dim=DIM)
    tower = lambda ids: tf.gather(items, ids)  # noqa: E731
    log_q = np.log(counts / counts.sum() * BATCH)
    first, second = np.array([0, 1, 2, 3, 4, 5]), np.array([3, 9, 10, 11, 12, 13])
    empty_memory, _ = layer.loss_and_diagnostics(queries, first, tower, training=True)
    np.testing.assert_allclose(empty_memory.numpy(), _softmax_loss(*_in_batch_reference(items, queries, first, log_q)),
                               rtol=1e-5)
    loss, _ = layer.loss_and_diagnostics(queries, second, tower, training=True)
    logits, valid = _in_batch_reference(items, queries, second, log_q)
    memory = queries @ items[first].T - log_q[first][np.newaxis, :]  # [batch, 6]: the first batch's positives
    memory_valid = first[np.newaxis, :] != second[:, np.newaxis]  # item 3 is row 0's positive: an accidental hit
    expected = _softmax_loss(np.concatenate([logits, memory], 1), np.concatenate([valid, memory_valid], 1))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_hard_negatives_keep_each_rows_highest_negatives():
    items, queries = _tables(2)
    positives = np.arange(BATCH)
    candidates = samplers.log_uniform(positives, 20, NUM_ITEMS, seed=3)
    layer = RetrievalLoss(LossConfig(num_sampled=20, num_hard_negatives=5), NUM_ITEMS)
    layer.sample = lambda ids: candidates
    loss = layer(queries, positives, lambda ids: tf.gather(items, ids)).numpy()
    sampled = candidates.ids.numpy()
    negatives = queries @ items[sampled].T - np.log(candidates.sampled_expected_count.numpy())[np.newaxis, :]
    negatives[sampled[np.newaxis, :] == positives[:, np.newaxis]] = -np.inf  # accidental hits
    hardest = -np.sort(-negatives, axis=1)[:, :5]
    true = np.einsum("bd,bd->b", queries, items[positives]) - np.log(candidates.true_expected_count.numpy()[:, 0])
    logits = np.concatenate([true[:, None], hardest], axis=1)
    np.testing.assert_allclose(loss, _softmax_loss(logits, np.isfinite(logits)), rtol=1e-5)


@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_logged_negatives_join_their_row_uncorrected_and_weighted(weight):
    items, queries = _tables(3)
    positives = np.arange(BATCH)
    candidates = samplers.uniform(positives, 10, NUM_ITEMS, seed=4)
    layer = RetrievalLoss(LossConfig(sampler="uniform", num_sampled=10, logged_negative_weight=weight), NUM_ITEMS)
    layer.sample = lambda ids: candidates
    logged = np.full((BATCH, 3), -1)
    logged[0, :2] = [30, 31]
    logged[1, :3] = [32, 1, 33]  # 1 is the row's own positive: masked
    loss, _ = layer.loss_and_diagnostics(queries, positives, lambda ids: tf.gather(items, ids),
                                         logged_negatives=tf.constant(logged))
    sampled = candidates.ids.numpy()
    log_q_true = np.log(candidates.true_expected_count.numpy()[:, 0])
    true = np.einsum("bd,bd->b", queries, items[positives]) - log_q_true
    sampled_logits = queries @ items[sampled].T - np.log(candidates.sampled_expected_count.numpy())[np.newaxis, :]
    sampled_valid = sampled[np.newaxis, :] != positives[:, np.newaxis]
    logged_logits = np.einsum("bd,bnd->bn", queries, items[np.maximum(logged, 0)]) + np.log(weight)
    logged_valid = (logged >= 0) & (logged != positives[:, None])
    logits = np.concatenate([true[:, None], sampled_logits, logged_logits], axis=1)
    valid = np.concatenate([np.ones((BATCH, 1), bool), sampled_valid, logged_valid], axis=1)
    np.testing.assert_allclose(loss.numpy(), _softmax_loss(logits, valid), rtol=1e-5)


def test_bad_settings_name_the_flag():
    for config, message in [
        (LossConfig(frequency_estimation="guess"), "frequency_estimation='guess'"),
        (LossConfig(num_hard_negatives=-1), "num_hard_negatives=-1"),
        (LossConfig(loss="full_softmax", cross_batch_batches=2), "cross_batch_batches"),
        (LossConfig(frequency_learning_rate=0.0), "frequency_learning_rate=0.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            config.validate(NUM_ITEMS)
    with pytest.raises(ValueError, match="global batch size"):
        RetrievalLoss(LossConfig(cross_batch_batches=1, num_sampled=5), NUM_ITEMS)


def test_in_batch_q_of_an_item_never_counted_is_floored_not_zero():
    """Counts made before an item appeared give it probability 0: its log Q must stay finite (it was -inf)."""
    items, queries = _tables(4)
    counts = np.arange(NUM_ITEMS, 0, -1).astype(np.float64)
    counts[7] = 0.0
    layer = RetrievalLoss(LossConfig(loss="in_batch"), NUM_ITEMS, counts, global_batch_size=BATCH, embedding_dim=DIM)
    loss = layer(queries, np.array([7, 1, 2, 3, 4, 5]), lambda ids: tf.gather(items, ids)).numpy()
    assert np.all(np.isfinite(loss)), loss


def test_streaming_q_with_a_corpus_sampler_alone_is_refused():
    with pytest.raises(ValueError, match="frequency_estimation=streaming gives Q to in-batch"):
        LossConfig(frequency_estimation="streaming").validate(NUM_ITEMS)
    LossConfig(frequency_estimation="streaming", cross_batch_batches=2, num_sampled=5).validate(NUM_ITEMS)
    LossConfig(frequency_estimation="streaming", sampler="mixed", num_sampled=5).validate(NUM_ITEMS)
