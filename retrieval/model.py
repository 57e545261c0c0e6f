"""The two-tower model on tfrs.Model: a query tower, an item tower and a retrieval loss."""

import tensorflow as tf
import tensorflow_recommenders as tfrs

from retrieval.task import RetrievalLoss
from retrieval.towers import Tower


class TwoTowerModel(tfrs.Model):
    """features {user_id: [batch], item_id: [batch] or [batch, num_true]} -> scalar loss for the step.

    compute_loss returns the per-replica share of the global-batch mean (`tf.nn.compute_average_loss`), which is
    what tf.distribute's gradient all-reduce (a sum over replicas) expects. Step outputs are summed across
    replicas (`distribute_reduction_method = "sum"`) so the logged loss is the global-batch mean, not the first
    replica's share.
    """

    def __init__(self, query_tower: Tower, item_tower: Tower, retrieval_loss: RetrievalLoss):
        super().__init__()
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.retrieval_loss = retrieval_loss
        self.distribute_reduction_method = "sum"

    def call(self, features):
        """Query embeddings [batch, dim] for features["user_id"] [batch]."""
        return self.query_tower(features["user_id"])

    def per_example_loss(self, features, training=False):
        query_embeddings = self.query_tower(features["user_id"], training=training)
        return self.retrieval_loss(query_embeddings, features["item_id"], self.item_tower)

    def compute_loss(self, features, training=False):
        return tf.nn.compute_average_loss(self.per_example_loss(features, training=training))
