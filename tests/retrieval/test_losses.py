"""Losses against TensorFlow's own: tf.nn.sampled_softmax_loss, tf.nn.nce_loss, TFRS Retrieval, given the same
sampled candidates; the reference numbers of LOSSES.md; stability at extreme logits."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from retrieval import losses, samplers
from retrieval.retrieval_loss import LossConfig, RetrievalLoss
from retrieval.towers import Tower

NUM_ITEMS, DIM, BATCH, NUM_SAMPLED = 50, 6, 8, 12


def _problem(num_true, seed=0):
    """Weights [items, dim], queries [batch, dim], true ids [batch, num_true] (accidental hits guaranteed)."""
    rng = np.random.default_rng(seed)
    weights = tf.Variable(rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32))
    queries = tf.Variable(rng.normal(size=(BATCH, DIM)).astype(np.float32))
    true_ids = np.stack([rng.choice(NUM_ITEMS // 5, size=num_true, replace=False) for _ in range(BATCH)])
    candidates = samplers.log_uniform(true_ids, NUM_SAMPLED, NUM_ITEMS, unique=True, seed=seed)
    return weights, queries, tf.constant(true_ids, tf.int64), candidates


def _tf_sampled_values(candidates, subtract_log_q):
    """tf.nn's losses always subtract log Q; expected counts of 1 turn the correction off (log 1 = 0)."""
    if subtract_log_q:
        return candidates.ids, candidates.true_expected_count, candidates.sampled_expected_count
    return (
        candidates.ids,
        tf.ones_like(candidates.true_expected_count),
        tf.ones_like(candidates.sampled_expected_count),
    )


def _loss_and_gradients(loss_fn, weights, queries):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(loss_fn())
    gradient_weights, gradient_queries = tape.gradient(loss, [weights, queries])
    return loss.numpy(), tf.convert_to_tensor(gradient_weights).numpy(), gradient_queries.numpy()


@pytest.mark.parametrize(
    "ours_fn, reference_fn",
    [(losses.sampled_softmax, tf.nn.sampled_softmax_loss), (losses.nce, tf.nn.nce_loss)],
    ids=["sampled_softmax", "nce"],
)
@pytest.mark.parametrize("num_true", [1, 3])
@pytest.mark.parametrize("subtract_log_q", [True, False])
@pytest.mark.parametrize("remove_accidental_hits", [True, False])
def test_equals_tf_nn_given_the_same_candidates(ours_fn, reference_fn, num_true, subtract_log_q, remove_accidental_hits):
    weights, queries, true_ids, candidates = _problem(num_true)
    hits = np.isin(candidates.ids.numpy(), true_ids.numpy()).any()
    assert hits, "the problem must contain accidental hits for the switch to matter"

    ours = _loss_and_gradients(
        lambda: ours_fn(
            queries,
            true_ids,
            lambda ids: tf.gather(weights, ids),
            candidates,
            subtract_log_q=subtract_log_q,
            remove_accidental_hits=remove_accidental_hits,
        ),
        weights,
        queries,
    )
    reference = _loss_and_gradients(
        lambda: reference_fn(
            weights,
            tf.zeros([NUM_ITEMS]),
            true_ids,
            queries,
            NUM_SAMPLED,
            NUM_ITEMS,
            num_true=num_true,
            sampled_values=_tf_sampled_values(candidates, subtract_log_q),
            remove_accidental_hits=remove_accidental_hits,
        ),
        weights,
        queries,
    )
    for ours_part, reference_part in zip(ours, reference):
        np.testing.assert_allclose(ours_part, reference_part, rtol=1e-5, atol=1e-5)


def test_switches_change_the_loss():
    """Each switch must matter on a problem where it applies (guards against a switch wired to nothing)."""
    weights, queries, true_ids, candidates = _problem(1)
    tower = lambda ids: tf.gather(weights, ids)  # noqa: E731
    base = losses.sampled_softmax(queries, true_ids, tower, candidates).numpy()
    for changed in (
        dict(subtract_log_q=False),
        dict(remove_accidental_hits=False),
        dict(label_smoothing=0.1),
        dict(temperature=0.5),
    ):
        other = losses.sampled_softmax(queries, true_ids, tower, candidates, **changed).numpy()
        assert not np.allclose(base, other), f"{changed} made no difference"


def test_in_batch_softmax_equals_tfrs_retrieval():
    rng = np.random.default_rng(2)
    weights = tf.constant(rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32))
    queries = tf.constant(rng.normal(size=(BATCH, DIM)).astype(np.float32))
    true_ids = tf.constant([3, 7, 3, 1, 9, 7, 2, 0], tf.int64)  # duplicates: accidental hits in the batch
    probability = tf.constant(rng.uniform(0.01, 0.1, size=NUM_ITEMS).astype(np.float32))
    item_embeddings = tf.gather(weights, true_ids)
    cross_entropy = tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction="none")
    for remove_accidental_hits in (True, False):
        for use_probability in (True, False):
            candidates = samplers.in_batch(true_ids, probability if use_probability else None)
            ours = losses.sampled_softmax(
                queries,
                true_ids,
                lambda ids: tf.gather(weights, ids),
                candidates,
                subtract_log_q=use_probability,
                remove_accidental_hits=remove_accidental_hits,
            )
            task = tfrs.tasks.Retrieval(loss=cross_entropy, remove_accidental_hits=remove_accidental_hits)
            # TFRS subtracts log(candidate_sampling_probability); ours subtracts log of the expected count
            # batch * p, a constant shift per row that softmax ignores.
            reference = task(
                queries,
                item_embeddings,
                candidate_sampling_probability=tf.gather(probability, true_ids) if use_probability else None,
                candidate_ids=true_ids if remove_accidental_hits else None,
            )
            np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)


def test_full_softmax_equals_sparse_cross_entropy_and_mixed_counts_both_sources():
    rng = np.random.default_rng(3)
    items = tf.constant(rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32))
    queries = tf.constant(rng.normal(size=(BATCH, DIM)).astype(np.float32))
    true_ids = tf.constant(rng.integers(0, NUM_ITEMS, size=BATCH), tf.int64)
    reference = tf.nn.sparse_softmax_cross_entropy_with_logits(true_ids, tf.matmul(queries, items, transpose_b=True))
    np.testing.assert_allclose(losses.full_softmax(queries, true_ids, items).numpy(), reference.numpy(), rtol=1e-5)

    in_batch = samplers.in_batch(true_ids)
    corpus = samplers.log_uniform(true_ids, NUM_SAMPLED, NUM_ITEMS, seed=4)
    mixed = samplers.mixed(in_batch, corpus)
    assert mixed.ids.shape == (BATCH + NUM_SAMPLED,) and mixed.own_positive.shape == (BATCH, BATCH + NUM_SAMPLED)
    np.testing.assert_allclose(
        mixed.true_expected_count, in_batch.true_expected_count + corpus.true_expected_count, rtol=1e-6
    )


def test_label_smoothing_reference_values():
    labels = tf.constant([[1.0, 0.0, 0.0]])
    smoothed = losses.smooth_labels(labels, tf.constant([[True, True, True]]), 0.1).numpy()
    np.testing.assert_allclose(smoothed, [[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]], rtol=1e-6)
    np.testing.assert_allclose(smoothed, [[0.9333, 0.0333, 0.0333]], atol=5e-5)  # LOSSES.md's rounded figures
    # A masked candidate takes no smoothing mass: V counts valid candidates only.
    masked = losses.smooth_labels(labels, tf.constant([[True, False, True]]), 0.1).numpy()
    np.testing.assert_allclose(masked, [[0.95, 0.0, 0.05]], rtol=1e-6)


def test_focal_gamma_zero_is_cross_entropy_and_gamma_down_weights_easy_candidates():
    logits = tf.constant([[2.0, -1.0, 0.5, 3.0]])
    candidates = losses.CandidateLogits(logits, num_true=1)
    labels = tf.constant([[1.0, 0.0, 0.0, 0.0]])
    reference = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), axis=1)
    np.testing.assert_allclose(losses.sigmoid_cross_entropy(candidates, focal_gamma=0.0), reference, rtol=1e-6)
    focal = losses.sigmoid_cross_entropy(candidates, focal_gamma=2.0).numpy()
    assert focal[0] < reference.numpy()[0]
    p = tf.sigmoid(logits).numpy()[0]
    by_hand = -(1 - p[0]) ** 2 * np.log(p[0]) - sum(p[i] ** 2 * np.log(1 - p[i]) for i in (1, 2, 3))
    np.testing.assert_allclose(focal[0], by_hand, rtol=1e-5)
    weighted = losses.sigmoid_cross_entropy(candidates, positive_weight=3.0).numpy()
    reference_weighted = tf.reduce_sum(
        tf.nn.weighted_cross_entropy_with_logits(labels, logits, pos_weight=3.0), axis=1
    )
    np.testing.assert_allclose(weighted, reference_weighted, rtol=1e-6)


def test_pairwise_hinge_by_hand():
    logits = tf.constant([[2.0, 1.5, 0.0, 3.0]])
    masked = tf.constant([[0, 3]], tf.int64)  # the last negative is an accidental hit
    hinge = losses.pairwise_hinge(losses.CandidateLogits(logits, 1, masked), margin=1.0).numpy()
    np.testing.assert_allclose(hinge, [(max(0, 1 + 1.5 - 2) + max(0, 1 + 0 - 2)) / 2], rtol=1e-6)


@pytest.mark.parametrize("loss_name", ["sampled_softmax", "nce", "pairwise_hinge"])
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits_give_finite_loss_and_gradients(loss_name, scale):
    weights = tf.Variable(np.full((NUM_ITEMS, DIM), scale / DIM, np.float32))
    queries = tf.Variable(np.ones((BATCH, DIM), np.float32))
    true_ids = tf.constant(np.arange(BATCH)[:, None], tf.int64)
    candidates = samplers.log_uniform(true_ids, NUM_SAMPLED, NUM_ITEMS, seed=5)
    config = LossConfig(
        loss=loss_name, num_sampled=NUM_SAMPLED, focal_gamma=2.0 if loss_name == "nce" else 0.0, label_smoothing=0.1
    )
    loss_layer = RetrievalLoss(config, NUM_ITEMS)
    loss_layer.sample = lambda ids: candidates
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_layer(queries, true_ids, lambda ids: tf.gather(weights, ids)))
    gradients = tape.gradient(loss, [weights, queries])
    assert np.isfinite(loss.numpy())
    assert all(np.all(np.isfinite(tf.convert_to_tensor(gradient).numpy())) for gradient in gradients)


@pytest.mark.parametrize("scale,columns", [(1.0, 7), (1e4, 7), (5.0, 1000)])
def test_logsumexp_rows_equals_tf_reduce_logsumexp_in_value_and_gradient(scale, columns):
    """The softmax head's logsumexp (read from a softmax; its own gradient, no tile) against TensorFlow's, with a
    fully masked row; 1,000 columns is a sampled-softmax row."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, columns)).astype(np.float32) * scale
    logits[1] = losses.MASKED_LOGIT  # every candidate of the row masked
    logits[2, :3] = losses.MASKED_LOGIT
    upstream = tf.constant(rng.normal(size=4).astype(np.float32))
    values, gradients = [], []
    for function in (losses.logsumexp_rows, lambda x: tf.reduce_logsumexp(x, axis=1)):
        variable = tf.Variable(logits)
        with tf.GradientTape() as tape:
            value = function(variable)
        values.append(value.numpy())
        gradients.append(tape.gradient(value, variable, output_gradients=upstream).numpy())
    np.testing.assert_allclose(values[0], values[1], rtol=1e-6)
    np.testing.assert_allclose(gradients[0], gradients[1], rtol=1e-5, atol=1e-7)
    assert np.all(gradients[0][2, :3] == 0.0)


def test_softmax_head_over_blocks_equals_the_head_over_their_concatenation():
    """Blocks [true | sampled | extra] give the loss and gradients of the one concatenated matrix."""
    rng = np.random.default_rng(4)
    blocks = [tf.Variable(rng.normal(size=(5, width)).astype(np.float32)) for width in (2, 9, 3)]
    results = []
    for make in (lambda: losses.CandidateLogits(tuple(blocks), num_true=2),
                 lambda: losses.CandidateLogits(tf.concat(blocks, axis=1), num_true=2)):
        with tf.GradientTape() as tape:
            loss = losses.softmax_cross_entropy(make())
        results.append((loss.numpy(), [gradient.numpy() for gradient in tape.gradient(loss, blocks)]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    for ours, concatenated in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(ours, concatenated, rtol=1e-5, atol=1e-7)


def test_mixed_precision_towers_give_float32_loss():
    weights = tf.Variable(np.random.default_rng(6).normal(size=(NUM_ITEMS, DIM)).astype(np.float16))
    queries = tf.constant(np.ones((BATCH, DIM), np.float16))
    true_ids = tf.constant(np.arange(BATCH), tf.int64)
    candidates = samplers.log_uniform(true_ids, NUM_SAMPLED, NUM_ITEMS, seed=6)
    loss = losses.sampled_softmax(queries, true_ids, lambda ids: tf.gather(weights, ids), candidates)
    assert loss.dtype == tf.float32 and np.all(np.isfinite(loss.numpy()))


def test_only_touched_rows_get_gradients():
    tower = Tower(10_000, DIM)
    queries = tf.constant(np.ones((BATCH, DIM), np.float32))
    true_ids = tf.constant(np.arange(BATCH), tf.int64)
    candidates = samplers.log_uniform(true_ids, NUM_SAMPLED, 10_000, seed=7)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.sampled_softmax(queries, true_ids, tower, candidates))
    (gradient,) = tape.gradient(loss, tower.trainable_variables)
    assert isinstance(gradient, tf.IndexedSlices)
    touched = set(gradient.indices.numpy().tolist())
    assert touched == set(range(BATCH)) | set(candidates.ids.numpy().tolist())


@pytest.mark.parametrize("num_sampled", [199, 999])
def test_random_model_starts_at_log_candidate_count(num_sampled):
    """LOSSES.md: a model that guesses at random starts at ln(num_true + num_sampled)."""
    num_items = 100_000
    tf.keras.utils.set_random_seed(8)
    query_tower, item_tower = Tower(1000, 64, name="query"), Tower(num_items, 64, name="item")
    config = LossConfig(num_sampled=num_sampled, subtract_log_q=False, seed=8)
    loss_layer = RetrievalLoss(config, num_items)
    user_ids = tf.constant(np.arange(512), tf.int64)
    true_ids = tf.constant(np.random.default_rng(8).integers(0, num_items, size=512), tf.int64)
    initial = float(tf.reduce_mean(loss_layer(query_tower(user_ids), true_ids, item_tower)))
    expected = config.expected_initial_loss()
    assert expected == pytest.approx(math.log(1 + num_sampled))
    assert abs(initial - expected) <= 0.05 * expected, (initial, expected)


def test_invalid_configurations_name_the_setting():
    with pytest.raises(ValueError, match="num_sampled"):
        LossConfig(num_sampled=100).validate(num_items=100)
    with pytest.raises(ValueError, match="label_smoothing"):
        LossConfig(label_smoothing=1.0).validate(num_items=1000)
    with pytest.raises(ValueError, match="loss"):
        LossConfig(loss="foo").validate(num_items=1000)
    with pytest.raises(ValueError, match="focal_gamma"):
        LossConfig(focal_gamma=2.0).validate(num_items=1000)
    LossConfig(num_sampled=100, unique=False).validate(num_items=100)  # with replacement it is allowed


def test_nce_log_partition_equals_tf_nn_biases():
    weights, queries, true_ids, candidates = _problem(1, seed=11)
    log_partition = math.log(NUM_ITEMS)
    ours = losses.nce(
        queries, true_ids, lambda ids: tf.gather(weights, ids), candidates, log_partition=log_partition
    )
    reference = tf.nn.nce_loss(
        weights,
        tf.fill([NUM_ITEMS], -log_partition),
        true_ids,
        queries,
        NUM_SAMPLED,
        NUM_ITEMS,
        sampled_values=(candidates.ids, candidates.true_expected_count, candidates.sampled_expected_count),
    )
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5)
    layer = RetrievalLoss(LossConfig(loss="nce", num_sampled=NUM_SAMPLED, remove_accidental_hits=False), NUM_ITEMS)
    layer.sample = lambda ids: candidates
    np.testing.assert_allclose(layer(queries, true_ids, lambda ids: tf.gather(weights, ids)).numpy(), ours.numpy(), rtol=1e-5)


def test_full_softmax_dense_and_sparse_label_paths_agree():
    rng = np.random.default_rng(12)
    items = tf.constant(rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32))
    queries = tf.constant(rng.normal(size=(BATCH, DIM)).astype(np.float32))
    true_ids = tf.constant(rng.integers(0, NUM_ITEMS, size=(BATCH, 1)), tf.int64)
    sparse = losses.full_softmax(queries, true_ids, items)
    dense_smoothed_by_zero = losses.full_softmax(queries, true_ids, items, label_smoothing=1e-12)
    np.testing.assert_allclose(sparse.numpy(), dense_smoothed_by_zero.numpy(), rtol=1e-5)
    smoothed = losses.full_softmax(queries, true_ids, items, label_smoothing=0.1).numpy()
    logits = (queries @ tf.transpose(items)).numpy()
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    labels = np.full(logits.shape, 0.1 / NUM_ITEMS)
    labels[np.arange(BATCH), true_ids.numpy()[:, 0]] += 0.9
    np.testing.assert_allclose(smoothed, -(labels * log_softmax).sum(1), rtol=1e-5)


def test_accidental_hits_are_every_position_of_the_dense_comparison_with_duplicates():
    rng = np.random.default_rng(11)
    true_ids = rng.integers(0, 30, size=(40, 3))
    true_ids[0] = [7, 7, 2]  # one id twice in a row: its hits are listed once
    sampled_ids = rng.integers(0, 30, size=25)  # with replacement: duplicate sampled ids
    sampled_ids[:3] = [7, 7, 2]
    hits = losses.accidental_hits(tf.constant(true_ids, tf.int64), tf.constant(sampled_ids, tf.int64)).numpy()
    dense = (true_ids[:, :, None] == sampled_ids[None, None, :]).any(axis=1)
    assert sorted(map(tuple, hits)) == sorted(zip(*np.nonzero(dense)))
    assert {(0, 0), (0, 1), (0, 2)} <= set(map(tuple, hits))
    # tf.nn.compute_accidental_hits keeps one position per sampled id and misses a duplicate: why we differ.
    rows, columns, _ = tf.nn.compute_accidental_hits(tf.constant(true_ids, tf.int64), sampled_ids, num_true=3)
    assert len(rows) < len(hits)


def _scatter_mask(logits, positions):
    """The mask with TensorFlow's own gradient (zeros written at the positions): the reference for `_mask`."""
    return tf.tensor_scatter_nd_update(logits, positions, tf.fill(tf.shape(positions)[:1], losses.MASKED_LOGIT))


@pytest.mark.parametrize("config", [
    LossConfig(loss="sampled_softmax", num_sampled=NUM_SAMPLED),
    LossConfig(loss="sampled_softmax", num_sampled=NUM_SAMPLED, label_smoothing=0.1, num_true=2),
    LossConfig(loss="nce", num_sampled=NUM_SAMPLED, focal_gamma=2.0),
    LossConfig(loss="pairwise_hinge", num_sampled=NUM_SAMPLED),
    LossConfig(loss="sampled_softmax", num_sampled=NUM_SAMPLED, num_hard_negatives=3),
    LossConfig(loss="in_batch"),
], ids=["sampled_softmax", "label_smoothing", "nce", "pairwise_hinge", "hard_negatives", "in_batch"])
def test_every_head_gives_masked_logits_zero_gradient_so_the_mask_passes_it_through(config, monkeypatch):
    """`_mask` passes its upstream gradient through; with TensorFlow's scatter gradient instead (zeros at the masked
    positions) every head's loss and gradients are the same, bit for bit: the heads' gradient there is zero."""
    rng = np.random.default_rng(8)
    weights = tf.Variable(rng.normal(size=(NUM_ITEMS, DIM)).astype(np.float32) * 3.0)
    queries = tf.Variable(rng.normal(size=(BATCH, DIM)).astype(np.float32))
    true_ids = tf.constant(rng.integers(0, 6, size=(BATCH, config.num_true)), tf.int64)  # repeats: in-batch hits
    candidates = samplers.log_uniform(true_ids, NUM_SAMPLED, NUM_ITEMS, seed=9)
    assert np.isin(candidates.ids.numpy(), true_ids.numpy()).any()
    results = []
    for mask in (losses._mask, _scatter_mask):
        monkeypatch.setattr(losses, "_mask", mask)
        loss_layer = RetrievalLoss(config, NUM_ITEMS)
        if config.loss != "in_batch":
            loss_layer.sample = lambda ids: candidates
        results.append(_loss_and_gradients(
            lambda: loss_layer(queries, true_ids, lambda ids: tf.gather(weights, ids)), weights, queries))
    for ours, reference in zip(*results):
        np.testing.assert_array_equal(ours, reference)
