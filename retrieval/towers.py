"""The two towers: ids -> embeddings, with an optional MLP and L2 normalisation."""

from typing import Sequence

import tensorflow as tf


class Tower(tf.keras.Model):
    """A tower from integer ids to embeddings: ids [n] -> [n, output_dim].

    An id embedding of `embedding_dim`, then `hidden_dims` ReLU layers and a linear projection back to
    `embedding_dim` when hidden_dims is not empty, then L2 normalisation when `normalize` (pair it with a
    temperature below 1, since normalised scores lie in [-1, 1]). Embedding lookups give IndexedSlices
    gradients, so only the rows a step touches are updated by sparse-aware optimizers.
    """

    def __init__(
        self,
        vocabulary_size: int,
        embedding_dim: int,
        hidden_dims: Sequence[int] = (),
        normalize: bool = False,
        name: str = "tower",
    ):
        super().__init__(name=name)
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.normalize = normalize
        self.embedding = tf.keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.hidden_layers = [tf.keras.layers.Dense(units, activation="relu") for units in hidden_dims]
        self.projection = tf.keras.layers.Dense(embedding_dim, name="projection") if hidden_dims else None

    def call(self, ids):
        outputs = self.embedding(ids)
        for layer in self.hidden_layers:
            outputs = layer(outputs)
        if self.projection is not None:
            outputs = self.projection(outputs)
        if self.normalize:
            outputs = tf.math.l2_normalize(outputs, axis=-1)
        return outputs

    def embed_all(self, batch_size: int = 65536) -> tf.Tensor:
        """Embeddings of every id in [0, vocabulary_size): [vocabulary_size, embedding_dim], computed in chunks."""
        dataset = tf.data.Dataset.range(self.vocabulary_size).batch(batch_size)
        return tf.concat([self(ids) for ids in dataset], axis=0)
