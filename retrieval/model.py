"""The two-tower model on tfrs.Model: a query tower, an item tower and a retrieval loss."""

import tensorflow as tf
import tensorflow_recommenders as tfrs

from retrieval.query import QueryTower
from retrieval.retrieval_loss import DIAGNOSTICS, RetrievalLoss
from retrieval.towers import Tower

# How a step's per-example losses become its loss: "mean" over the global batch (this project's default) or "sum"
# (TensorFlow Recommenders'; the gradients are batch-size times larger, which TFRS's learning rates assume).
LOSS_REDUCTIONS = ("mean", "sum")


def reduce_loss(per_example, loss_reduction: str):
    """[] from a replica's per-example losses [local batch]: "sum", or "mean" (tf.nn.compute_average_loss: its
    share of the global batch's mean under tf.distribute). LOSS_REDUCTIONS."""
    if loss_reduction == "sum":
        return tf.reduce_sum(per_example)
    return tf.nn.compute_average_loss(per_example)


class TwoTowerModel(tfrs.Model):
    """features {user_id: [batch], item_id: [batch] or [batch, num_true]} -> scalar loss for the step.

    The query tower is a QueryTower, which reads what it needs of the features (user_id, history [batch, L],
    context), or a plain Tower of user ids.

    compute_loss returns the per-replica share of the global-batch loss (`reduce_loss`: its mean by default, its
    sum with loss_reduction="sum"), which is what tf.distribute's gradient all-reduce (a sum over replicas)
    expects. Step outputs are summed across replicas (`distribute_reduction_method = "sum"`) so the logged loss is
    the global batch's, not the first replica's share.
    """

    def __init__(self, query_tower: Tower, item_tower: Tower, retrieval_loss: RetrievalLoss,
                 loss_reduction: str = "mean"):
        super().__init__()
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction={loss_reduction!r}; expected one of {', '.join(LOSS_REDUCTIONS)}")
        self.query_tower = query_tower
        self.item_tower = item_tower
        self.retrieval_loss = retrieval_loss
        self.loss_reduction = loss_reduction
        self.distribute_reduction_method = "sum"
        self._create_diagnostic_metrics()

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _create_diagnostic_metrics(self):
        """The sampler diagnostics as Keras metrics, which sync their results over replicas; train_step resets
        them every step, so each logged value (TensorBoard: batch_<name>) is that step's. Not tracked: they stay
        out of checkpoints, so checkpoints written before they existed still restore with every object matched."""
        self.diagnostic_metrics = [tf.keras.metrics.Mean(name) for name in DIAGNOSTICS]

    def call(self, features):
        """Query embeddings [batch, dim] for the features' user_id [batch] (and history, context)."""
        return self.query_embeddings(features)

    def query_embeddings(self, features, training=False):
        """[batch, dim]: the query tower on the features it reads."""
        if isinstance(self.query_tower, QueryTower):
            return self.query_tower(features, training=training)
        return self.query_tower(features["user_id"], training=training)

    def per_example_loss(self, features, training=False):
        """[batch] loss of each row, times features["weight"] ([batch], or [batch, num_true]: the row's mean)
        when the batch has interaction weights (Keras sample-weight semantics)."""
        return self._loss_and_diagnostics(features, training)[0]

    def _loss_and_diagnostics(self, features, training):
        query_embeddings = self.query_embeddings(features, training=training)
        loss, diagnostics = self.retrieval_loss.loss_and_diagnostics(
            query_embeddings,
            features["item_id"],
            self.item_tower,
            training=training,
            step=self.optimizer.iterations if training else None,  # the streaming estimate's clock
            logged_negatives=features.get("negative_ids"),  # [batch, n] shown and not chosen, -1 padded
        )
        weight = features.get("weight")
        if weight is None:
            return loss, diagnostics
        weight = tf.cast(weight, loss.dtype)
        if weight.shape.rank == 2:
            weight = tf.reduce_mean(weight, axis=1)
        return loss * weight, diagnostics

    def reduce_loss(self, per_example):
        """The step's loss [] from this replica's per-example losses [local batch]: its share of the global batch's
        mean ("mean": tf.nn.compute_average_loss divides by the global batch size) or of its sum ("sum": TFRS's
        Retrieval task reduces its Keras loss with SUM). Either way the replicas' shares add up to the global
        batch's loss, as the gradient all-reduce and the logged loss add them."""
        return reduce_loss(per_example, self.loss_reduction)

    def compute_loss(self, features, training=False):
        return self.reduce_loss(self.per_example_loss(features, training=training))

    def train_step(self, features):
        """tfrs.Model.train_step, plus the sampler diagnostics, and loss scaling under mixed precision.

        Deliberately differs from tfrs.Model.train_step, which calls apply_gradients on unscaled gradients:
        `optimizer.minimize(tape=...)` lets a LossScaleOptimizer (mixed_float16) scale the loss and unscale
        the gradients.
        """
        with tf.GradientTape() as tape:
            per_example, diagnostics = self._loss_and_diagnostics(features, training=True)
            loss = self.reduce_loss(per_example)
            regularization_loss = tf.nn.scale_regularization_loss(tf.add_n(self.losses)) if self.losses else 0.0
            total_loss = loss + regularization_loss
        self.optimizer.minimize(total_loss, self.trainable_variables, tape=tape)
        outputs = {"loss": loss}
        for metric in self.diagnostic_metrics:
            if metric.name in diagnostics:
                metric.reset_state()
                metric.update_state(diagnostics[metric.name])
                outputs[metric.name] = metric.result()  # the mean over replicas (Keras syncs metric results)
        return outputs
