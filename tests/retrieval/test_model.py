import numpy as np
import tensorflow as tf

from retrieval.model import TwoTowerModel
from retrieval.retrieval_loss import LossConfig, RetrievalLoss
from retrieval.towers import Tower


def test_interaction_weights_scale_each_rows_loss():
    model = TwoTowerModel(Tower(5, 4), Tower(20, 4), RetrievalLoss(LossConfig(loss="full_softmax"), num_items=20))
    features = {"user_id": tf.constant([0, 1, 2, 3], tf.int64), "item_id": tf.constant([3, 4, 5, 6], tf.int64)}
    unweighted = model.per_example_loss(features).numpy()
    assert np.all(unweighted > 0)
    weights = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
    weighted = model.per_example_loss({**features, "weight": tf.constant(weights)}).numpy()
    np.testing.assert_allclose(weighted, unweighted * weights, rtol=1e-6)
    mean = model.compute_loss({**features, "weight": tf.constant(weights)})
    np.testing.assert_allclose(mean, np.mean(weighted), rtol=1e-6)
    # Rows of num_true interactions are weighted by their mean weight.
    two_true = LossConfig(loss="full_softmax", num_true=2)
    model = TwoTowerModel(model.query_tower, model.item_tower, RetrievalLoss(two_true, num_items=20))
    rows = {"user_id": features["user_id"][:2], "item_id": tf.reshape(features["item_id"], [2, 2])}
    row_loss = model.per_example_loss(rows).numpy()
    weighted_rows = model.per_example_loss({**rows, "weight": tf.constant([[1.0, 3.0], [0.0, 0.0]])}).numpy()
    np.testing.assert_allclose(weighted_rows, row_loss * [2.0, 0.0], rtol=1e-6)
