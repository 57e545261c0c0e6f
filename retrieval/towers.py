"""The two towers: ids -> embeddings, with optional categorical features, an MLP and L2 normalisation."""

import re
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf


class Tower(tf.keras.Model):
    """A tower from integer ids to embeddings: ids [n] -> [n, output_dim].

    An id embedding of `embedding_dim`; with `feature_tables`, next to it one embedding of `embedding_dim` per
    feature, the mean over the id's valid values (multi-valued features such as genres; zeros for an id
    without a value), all concatenated. Then `hidden_dims` ReLU layers and a linear projection back to
    `embedding_dim` (when there are hidden layers or features), then L2 normalisation when `normalize` (pair it
    with a temperature below 1, since normalised scores lie in [-1, 1]).

    Features are looked up by id inside the tower, from tables held as non-trainable variables (checkpointed
    and exported with the model), so anything that calls the tower with ids, sampled negatives included, gets
    them. Embedding lookups give IndexedSlices gradients, so only the rows a step touches are updated by
    sparse-aware optimizers.
    """

    def __init__(
        self,
        vocabulary_size: int,
        embedding_dim: int,
        hidden_dims: Sequence[int] = (),
        normalize: bool = False,
        name: str = "tower",
        feature_tables: Optional[Mapping[str, np.ndarray]] = None,
    ):
        """feature_tables: {name: [vocabulary_size, max_values] int value ids in [0, V), -1 padded}."""
        super().__init__(name=name)
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.normalize = normalize
        self.embedding = tf.keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.feature_names = sorted(feature_tables or {})
        self.feature_tables, self.feature_embeddings = [], []
        for feature_name in self.feature_names:
            table = np.asarray(feature_tables[feature_name])
            if table.ndim != 2 or table.shape[0] != vocabulary_size:
                raise ValueError(
                    f"feature {feature_name!r}: table shape {table.shape}, expected [{vocabulary_size}, max_values]"
                )
            layer_name = "feature_" + re.sub(r"[^A-Za-z0-9_]", "_", feature_name)
            self.feature_tables.append(
                tf.Variable(table.astype(np.int32), trainable=False, name=layer_name + "_table")
            )
            num_values = max(int(table.max()) + 1 if table.size else 1, 1)  # value ids are dense from 0
            self.feature_embeddings.append(tf.keras.layers.Embedding(num_values, embedding_dim, name=layer_name))
        self.hidden_layers = [tf.keras.layers.Dense(units, activation="relu") for units in hidden_dims]
        needs_projection = bool(hidden_dims) or bool(self.feature_names)
        self.projection = tf.keras.layers.Dense(embedding_dim, name="projection") if needs_projection else None

    def call(self, ids):
        outputs = self.embedding(ids)
        if self.feature_tables:
            parts = [outputs]
            for table, embedding in zip(self.feature_tables, self.feature_embeddings):
                values = tf.gather(table, ids)  # [n, max_values]
                valid = tf.cast(values >= 0, outputs.dtype)[..., tf.newaxis]  # [n, max_values, 1]
                embedded = embedding(tf.maximum(values, 0)) * valid  # [n, max_values, dim]
                count = tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)  # [n, 1]
                parts.append(tf.reduce_sum(embedded, axis=1) / count)  # [n, dim]
            outputs = tf.concat(parts, axis=-1)  # [n, dim * (1 + num_features)]
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
