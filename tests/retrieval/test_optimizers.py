"""LazyAdam, the trainer's default optimizer, against a NumPy reference of lazy Adam."""

import numpy as np
import pytest
import tensorflow as tf

from retrieval.optimizers import Adagrad, LazyAdam, sum_duplicate_rows

LEARNING_RATE, BETA_1, BETA_2, EPSILON = 0.1, 0.9, 0.999, 1e-7


def _numpy_lazy_adam(table, steps):
    """Lazy Adam by hand: repeated indices of a step add up; only the rows a step touches change (weights and
    both moments); bias correction uses the global step count, as tf.keras Adam does."""
    table = table.astype(np.float64).copy()
    m, v = np.zeros_like(table), np.zeros_like(table)
    for step, (indices, values) in enumerate(steps, start=1):
        rows = np.unique(indices)
        gradient = np.zeros_like(table)
        np.add.at(gradient, indices, values)
        m[rows] = BETA_1 * m[rows] + (1 - BETA_1) * gradient[rows]
        v[rows] = BETA_2 * v[rows] + (1 - BETA_2) * gradient[rows] ** 2
        alpha = LEARNING_RATE * np.sqrt(1 - BETA_2**step) / (1 - BETA_1**step)
        table[rows] -= alpha * m[rows] / (np.sqrt(v[rows]) + EPSILON)
    return table, m, v


def test_lazy_adam_equals_numpy_reference_with_repeated_and_missing_rows():
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(8, 3)).astype(np.float32)
    # Row 0 repeated within a step, rows 6 and 7 never touched, row 3 touched only once and then left alone.
    steps = [
        (np.array([0, 0, 2]), rng.normal(size=(3, 3))),
        (np.array([1, 3]), rng.normal(size=(2, 3))),
        (np.array([0, 5, 5, 5]), rng.normal(size=(4, 3))),
        (np.array([2]), rng.normal(size=(1, 3))),
        (np.array([0, 1, 4]), rng.normal(size=(3, 3))),
    ]
    table = tf.Variable(initial)
    optimizer = LazyAdam(LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON)
    for indices, values in steps:
        gradient = tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(indices), tf.constant([8, 3]))
        optimizer.apply_gradients([(gradient, table)])
    expected, m, v = _numpy_lazy_adam(initial, steps)
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table.numpy()[6:], initial[6:])  # never touched: exactly as initialised
    moments = optimizer.variables[1:]  # iterations first, then m and v of the one variable
    np.testing.assert_allclose(moments[0].numpy(), m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(moments[1].numpy(), v, rtol=1e-4, atol=1e-9)  # float32 squares


def test_dense_gradients_follow_keras_adam_exactly():
    initial = np.arange(6, dtype=np.float32).reshape(2, 3)
    lazy, stock = tf.Variable(initial), tf.Variable(initial)
    lazy_adam, adam = LazyAdam(LEARNING_RATE), tf.keras.optimizers.Adam(LEARNING_RATE)
    for gradient in ([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], [[0.3, 0.3, 0.3], [-1.0, 0.0, 2.0]]):
        lazy_adam.apply_gradients([(tf.constant(gradient), lazy)])
        adam.apply_gradients([(tf.constant(gradient), stock)])
    np.testing.assert_array_equal(lazy.numpy(), stock.numpy())


def test_sum_duplicate_rows_equals_keras_deduplication_bit_for_bit():
    rng = np.random.default_rng(1)
    indices = tf.constant(rng.integers(0, 50, size=300), tf.int64)  # many repeats, first appearances scattered
    values = tf.constant(rng.normal(size=(300, 4)), tf.float32)
    gradient = tf.IndexedSlices(values, indices, tf.constant([50, 4], tf.int64))
    ours = sum_duplicate_rows(gradient)
    (keras,) = tf.keras.optimizers.Adam()._deduplicate_sparse_grad([gradient])
    np.testing.assert_array_equal(ours.indices.numpy(), keras.indices.numpy())
    np.testing.assert_array_equal(ours.values.numpy(), keras.values.numpy())
    # By hand on three rows: index 7 twice sums its rows, order of first appearance kept.
    small = sum_duplicate_rows(tf.IndexedSlices(tf.constant([[1.0], [2.0], [4.0]]), tf.constant([7, 3, 7])))
    np.testing.assert_array_equal(small.indices.numpy(), [7, 3])
    np.testing.assert_array_equal(small.values.numpy(), [[5.0], [2.0]])


def test_adagrad_equals_keras_adagrad_bit_for_bit_on_sparse_and_dense_gradients():
    rng = np.random.default_rng(2)
    initial = rng.normal(size=(20, 4)).astype(np.float32)
    ours_table, keras_table = tf.Variable(initial), tf.Variable(initial)
    ours, keras = Adagrad(0.1), tf.keras.optimizers.Adagrad(0.1)
    for _ in range(4):
        indices = tf.constant(rng.integers(0, 20, size=15), tf.int64)  # repeats and untouched rows
        values = tf.constant(rng.normal(size=(15, 4)), tf.float32)
        sparse = tf.IndexedSlices(values, indices, tf.constant([20, 4], tf.int64))
        ours.apply_gradients([(sparse, ours_table)])
        keras.apply_gradients([(sparse, keras_table)])
        dense = tf.constant(rng.normal(size=(20, 4)), tf.float32)
        ours.apply_gradients([(dense, ours_table)])
        keras.apply_gradients([(dense, keras_table)])
    np.testing.assert_array_equal(ours_table.numpy(), keras_table.numpy())
    np.testing.assert_array_equal(ours.variables[1].numpy(), keras.variables[1].numpy())  # the accumulator


def test_momentless_variables_keep_one_slot_and_follow_adam_without_a_first_moment():
    rng = np.random.default_rng(3)
    initial = rng.normal(size=(8, 3)).astype(np.float32)
    history_table = tf.Variable(initial, name="history_encoder/embeddings")
    item_table = tf.Variable(initial, name="item_tower/embedding/embeddings")
    optimizer = LazyAdam(LEARNING_RATE, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPSILON,
                         momentless_variables=["history_encoder/embeddings"])
    steps = [(np.array([0, 0, 2]), rng.normal(size=(3, 3))), (np.array([1, 3]), rng.normal(size=(2, 3))),
             (np.array([0, 5]), rng.normal(size=(2, 3)))]
    table, v = initial.astype(np.float64).copy(), np.zeros((8, 3))
    for step, (indices, values) in enumerate(steps, start=1):
        gradient = tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(indices), tf.constant([8, 3]))
        optimizer.apply_gradients([(gradient, history_table), (gradient, item_table)])
        rows, summed = np.unique(indices), np.zeros((8, 3))
        np.add.at(summed, indices, values)
        v[rows] = BETA_2 * v[rows] + (1 - BETA_2) * summed[rows] ** 2
        table[rows] -= LEARNING_RATE * np.sqrt(1 - BETA_2**step) * summed[rows] / (np.sqrt(v[rows]) + EPSILON)
    np.testing.assert_allclose(history_table.numpy(), table, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(history_table.numpy()[[4, 6, 7]], initial[[4, 6, 7]])  # never touched
    expected, _, _ = _numpy_lazy_adam(initial, steps)  # the other table: lazy Adam as before
    np.testing.assert_allclose(item_table.numpy(), expected, rtol=1e-5, atol=1e-6)
    # iterations, then v of the history table and m, v of the item table: no first moment for the history table
    assert len(optimizer.variables) == 1 + 1 + 2
    with pytest.raises(ValueError, match="momentless_variables"):
        LazyAdam(momentless_variables=["x"], amsgrad=True)
