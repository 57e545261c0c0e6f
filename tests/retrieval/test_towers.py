import numpy as np
import tensorflow as tf

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
