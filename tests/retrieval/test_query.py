"""The query tower: history pooling with a padding mask, the shared item table, context, and old checkpoints."""

import numpy as np
import pytest
import tensorflow as tf

from retrieval.query import HISTORY_ENCODERS, HISTORY_TABLE, PAD, TRAINED_POSITIONS, HistoryEncoder, QueryTower
from retrieval.towers import Tower

NUM_USERS, NUM_ITEMS, DIM = 10, 30, 8


def _history_tower(encoder="mean", query_features=("history",), item_tower=None, **kwargs):
    item_tower = item_tower or Tower(NUM_ITEMS, DIM, name="item_tower")
    item_tower(tf.constant([0], tf.int64))
    history = HistoryEncoder(item_tower.embedding, DIM, encoder, max_length=6)
    tower = QueryTower(NUM_USERS, DIM, query_features=query_features, history=history, **kwargs)
    return tower, item_tower


def test_weighted_mean_weighs_each_position_by_its_learned_weight():
    tower, item_tower = _history_tower("weighted_mean")
    history = tf.constant([[3, 7, PAD], [5, PAD, PAD]], tf.int64)
    np.testing.assert_allclose(tower.history_encoder(history).numpy(), _mean_of(item_tower, [[3, 7], [5]]), rtol=1e-6)
    logits = np.zeros([6], np.float32)
    logits[0] = np.log(3.0)
    tower.history_encoder.position_logits.assign(logits)
    table = item_tower.embedding.embeddings.numpy()
    np.testing.assert_allclose(tower.history_encoder(history).numpy()[0], (3 * table[3] + table[7]) / 4, rtol=1e-5)


def _mean_of(item_tower, rows):
    table = item_tower.embedding.embeddings.numpy()
    return np.stack([table[row].mean(axis=0) for row in rows])


def test_mean_history_is_the_mean_of_the_valid_items_embeddings():
    tower, item_tower = _history_tower()
    history = tf.constant([[3, 7, 2, PAD, PAD], [5, PAD, PAD, PAD, PAD]], tf.int64)
    pooled = tower.history_encoder(history).numpy()
    table = item_tower.embedding.embeddings.numpy()
    np.testing.assert_allclose(pooled[0], table[[3, 7, 2]].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(pooled[1], table[5], rtol=1e-6)


@pytest.mark.parametrize("encoder", HISTORY_ENCODERS)
def test_padding_never_changes_the_query(encoder):
    tf.keras.utils.set_random_seed(1)
    tower, _ = _history_tower(encoder)
    short = tower({"history": tf.constant([[4, 9, 1]], tf.int64)}).numpy()
    padded = tower({"history": tf.constant([[4, 9, 1, PAD, PAD, PAD]], tf.int64)}).numpy()
    assert short.shape == (1, DIM)
    np.testing.assert_allclose(short, padded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder", HISTORY_ENCODERS)
def test_an_empty_or_missing_history_is_the_models_answer_for_none(encoder):
    tower, _ = _history_tower(encoder)
    empty = tower({"history": tf.fill([2, 4], tf.constant(PAD, tf.int64))}).numpy()
    missing = tower(tf.constant([0, 1], tf.int64)).numpy()  # a bare user-id tensor: no history
    assert np.all(np.isfinite(empty))
    np.testing.assert_allclose(empty[0], empty[1])
    np.testing.assert_allclose(empty, missing, rtol=1e-6, atol=1e-6)


def test_order_matters_to_the_learned_encoders_only():
    tf.keras.utils.set_random_seed(2)
    for encoder in HISTORY_ENCODERS:
        tower, _ = _history_tower(encoder)
        tower({"history": tf.constant([[1]], tf.int64)})
        if encoder == "weighted_mean":  # uniform weights at the start: learned ones make order matter
            tower.history_encoder.position_logits.assign(tf.range(6.0))
        forward = tower({"history": tf.constant([[1, 2, 3]], tf.int64)}).numpy()
        backward = tower({"history": tf.constant([[3, 2, 1]], tf.int64)}).numpy()
        assert np.allclose(forward, backward, atol=1e-6) == (encoder == "mean"), encoder


def test_the_shared_item_table_gets_sparse_rows_of_the_history_items_only():
    tower, item_tower = _history_tower(query_features=("user_id", "history"))
    features = {"user_id": tf.constant([1, 2], tf.int64), "history": tf.constant([[3, PAD], [4, 3]], tf.int64)}
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tower(features) * item_tower(tf.constant([6, 7], tf.int64)))
    table = item_tower.embedding.embeddings
    assert any(variable is table for variable in tower.trainable_variables), "history reads the item table"
    gradient = tape.gradient(loss, table)
    assert isinstance(gradient, tf.IndexedSlices)
    indices = gradient.indices.numpy().tolist()
    # Sparse rows of the items read, padding never; a repeated item's rows are summed by the optimizer (Keras
    # de-duplicates sparse gradients), so the encoder does not de-duplicate them itself.
    assert sorted(set(indices)) == [3, 4, 6, 7] and sorted(indices) == [3, 3, 4, 6, 7]
    dense = tf.math.unsorted_segment_sum(gradient.values, gradient.indices, NUM_ITEMS).numpy()
    assert np.count_nonzero(np.abs(dense).sum(axis=1)) == 4


@pytest.mark.parametrize("encoder,trained_positions", [("mean", None), ("weighted_mean", None), ("weighted_mean", 3)])
def test_the_table_is_trained_through_the_most_recent_items_and_reads_them_all(encoder, trained_positions):
    item_tower = Tower(NUM_ITEMS, DIM, name="item_tower")
    item_tower(tf.constant([0], tf.int64))
    options = {} if trained_positions is None else {"trained_positions": trained_positions}
    history = HistoryEncoder(item_tower.embedding, DIM, encoder, max_length=14, **options)
    trained = trained_positions or TRAINED_POSITIONS
    assert history.trained_positions == trained
    items = list(range(1, trained + 3))  # two older than the trained positions
    with tf.GradientTape() as tape:
        pooled = history(tf.constant([items + [PAD, PAD]], tf.int64))
        loss = tf.reduce_sum(pooled)
    np.testing.assert_allclose(pooled.numpy()[0], _mean_of(item_tower, [items])[0], rtol=1e-5)
    gradient = tape.gradient(loss, item_tower.embedding.embeddings)
    assert sorted(gradient.indices.numpy().tolist()) == items[:trained]
    with pytest.raises(ValueError, match="trained_positions=0"):
        HistoryEncoder(item_tower.embedding, DIM, encoder, trained_positions=0)


def test_own_history_table_when_not_shared():
    item_tower = Tower(NUM_ITEMS, DIM, name="item_tower")
    own_table = HistoryEncoder(None, DIM, num_items=NUM_ITEMS)
    tower = QueryTower(NUM_USERS, DIM, query_features=("history",), history=own_table)
    tower({"history": tf.constant([[1, 2]], tf.int64)})
    item_tower(tf.constant([0], tf.int64))
    assert not any(variable is item_tower.embedding.embeddings for variable in tower.trainable_variables)


def test_context_values_and_their_absence():
    tower = QueryTower(NUM_USERS, DIM, query_features=("user_id", "context"),
                       context_vocabularies={"hour_of_day": 24, "day_of_week": 7})
    users = tf.constant([1, 1], tf.int64)
    at_8, at_20 = (tower({"user_id": users, "hour_of_day": tf.constant([hour, hour], tf.int64),
                          "day_of_week": tf.constant([2, 2], tf.int64)}).numpy() for hour in (8, 20))
    assert not np.allclose(at_8, at_20)
    none = tower({"user_id": users}).numpy()
    unknown = tower({"user_id": users, "hour_of_day": tf.constant([PAD, PAD], tf.int64)}).numpy()
    np.testing.assert_allclose(none, unknown, rtol=1e-6)


def test_a_user_id_query_tower_restores_a_tower_checkpoint(tmp_path):
    """Runs trained before the query tower existed: their query tower was a Tower of user ids (and features)."""
    tables = {"age": np.array([[0], [1], [-1], [2]] * 2 + [[0], [1]], np.int32)}
    old = Tower(NUM_USERS, DIM, (16,), name="query_tower", feature_tables=tables)
    ids = tf.constant([0, 3, 7], tf.int64)
    expected = old(ids).numpy()
    path = tf.train.Checkpoint(tower=old).save(str(tmp_path / "ckpt"))
    new = QueryTower(NUM_USERS, DIM, (16,), query_features=("user_id", "user_features"), user_feature_tables=tables)
    new(ids)
    tf.train.Checkpoint(tower=new).restore(path).assert_consumed()
    np.testing.assert_allclose(new({"user_id": ids}).numpy(), expected, rtol=1e-6)


def test_mixed_precision_history_tower():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for encoder in HISTORY_ENCODERS:
            tower, _ = _history_tower(encoder, query_features=("history", "context"),
                                      context_vocabularies={"hour_of_day": 24})
            outputs = tower({"history": tf.constant([[1, 2, PAD]], tf.int64), "hour_of_day": tf.constant([3])})
            assert outputs.dtype == tf.float16 and np.all(np.isfinite(outputs.numpy()))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="query_features"):
        QueryTower(NUM_USERS, DIM, query_features=("user_id", "age"))
    with pytest.raises(ValueError, match="history"):
        QueryTower(NUM_USERS, DIM, query_features=("history",))
    with pytest.raises(ValueError, match="history_encoder"):
        HistoryEncoder(tf.keras.layers.Embedding(3, DIM), DIM, "lstm")


def test_history_table_names_the_own_table_of_the_query_towers_history():
    history = HistoryEncoder(None, DIM, "weighted_mean", num_items=NUM_ITEMS)
    tower = QueryTower(4, DIM, normalize=True, query_features=("history",), history=history)
    tower({"user_id": tf.constant([0]), "history": tf.constant([[1, 2, PAD]], tf.int64)})
    matching = [variable.name for variable in tower.trainable_variables if HISTORY_TABLE in variable.name]
    assert matching == [history.item_embedding.embeddings.name]
