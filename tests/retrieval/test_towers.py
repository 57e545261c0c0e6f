import numpy as np
import pytest
import tensorflow as tf

from retrieval.retrieval_loss import LossConfig, RetrievalLoss
from retrieval.towers import Tower


def test_shapes_mlp_and_normalisation():
    tower = Tower(50, 8, hidden_dims=[16], normalize=True)
    outputs = tower(tf.constant([0, 3, 49]))
    assert outputs.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(outputs.numpy(), axis=1), 1.0, rtol=1e-5)
    assert tower.embed_all(batch_size=7).shape == (50, 8)
    np.testing.assert_allclose(tower.embed_all(batch_size=7)[3], outputs[1], rtol=1e-5)


def test_embedding_gradient_is_sparse():
    tower = Tower(1000, 4)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tower(tf.constant([1, 2, 2])))
    (gradient,) = tape.gradient(loss, tower.trainable_variables)
    assert isinstance(gradient, tf.IndexedSlices)
    assert sorted(gradient.indices.numpy().tolist()) == [1, 2, 2]


def test_features_are_the_mean_of_valid_values_next_to_the_id_embedding():
    table = np.array([[0, 1], [1, -1], [-1, -1]])  # item 0: values 0 and 1; item 1: value 1; item 2: none
    tower = Tower(3, 4, feature_tables={"genres": table})
    outputs = tower(tf.constant([0, 1, 2])).numpy()
    ids = tower.embedding.get_weights()[0]
    values = tower.feature_embeddings[0].get_weights()[0]
    kernel, bias = tower.projection.get_weights()
    features = np.stack([(values[0] + values[1]) / 2, values[1], np.zeros(4)])
    np.testing.assert_allclose(outputs, np.concatenate([ids, features], axis=1) @ kernel + bias, rtol=1e-5, atol=1e-6)
    assert tower.feature_tables[0].trainable is False
    with pytest.raises(ValueError, match="genres"):
        Tower(4, 4, feature_tables={"genres": table})


def test_feature_embeddings_get_gradients_through_sampled_negatives_only():
    # Item 0, every row's positive, has no feature value; every other item has value 0. So the feature
    # embedding of value 0 can only receive a gradient through the sampled negatives.
    table = np.zeros([200, 1], np.int64)
    table[0] = -1
    tower = Tower(200, 8, feature_tables={"genre": table})
    loss_layer = RetrievalLoss(LossConfig(num_sampled=20, seed=1), num_items=200)
    query = tf.random.stateless_normal([16, 8], seed=[1, 2])
    true_ids = tf.zeros([16], tf.int64)
    tower(true_ids)  # build
    feature_embedding = tower.feature_embeddings[0].embeddings
    with tf.GradientTape(persistent=True) as tape:
        positives_only = tf.reduce_sum(query * tower(true_ids))
        sampled_loss = tf.reduce_mean(loss_layer(query, true_ids, tower))
    from_positives = tf.convert_to_tensor(tape.gradient(positives_only, feature_embedding)).numpy()
    np.testing.assert_array_equal(from_positives, 0.0)
    from_negatives = tf.convert_to_tensor(tape.gradient(sampled_loss, feature_embedding)).numpy()
    assert np.linalg.norm(from_negatives[0]) > 1e-4
