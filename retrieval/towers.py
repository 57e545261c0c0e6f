"""The two towers: ids -> embeddings, with optional categorical features, an MLP and L2 normalisation."""

import re
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf


def masked_mean_embedding(embedding: tf.keras.layers.Layer, ids: tf.Tensor) -> tf.Tensor:
    """ids [n, m] int, negative for none -> [n, dim]: the mean embedding of each row's valid ids (zeros for a row
    without any). Only valid ids are looked up, so padding never touches a row of the table (a lazy optimizer
    would otherwise move row 0 by its momentum on every step)."""
    positions = tf.where(ids >= 0)  # [v, 2] int64 (row, slot)
    values = embedding(tf.gather_nd(ids, positions))  # [v, dim]
    rows, num_rows = positions[:, 0], tf.shape(ids, out_type=tf.int64)[0]
    sums = tf.math.unsorted_segment_sum(values, rows, num_rows)  # [n, dim]
    counts = tf.math.unsorted_segment_sum(tf.ones_like(rows, values.dtype), rows, num_rows)  # [n]
    return sums / tf.maximum(counts, 1)[:, tf.newaxis]


def embed_valid(embedding: tf.keras.layers.Layer, ids: tf.Tensor) -> tf.Tensor:
    """ids [n, m] int, negative for none -> [n, m, dim]: embeddings of the valid ids, zeros elsewhere (only valid
    ids looked up)."""
    positions = tf.where(ids >= 0)  # [v, 2]
    values = embedding(tf.gather_nd(ids, positions))  # [v, dim]
    shape = tf.concat([tf.shape(ids, out_type=tf.int64), tf.shape(values, out_type=tf.int64)[1:]], axis=0)
    return tf.scatter_nd(positions, values, shape)


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
        id_embedding: bool = True,
        project: bool = False,
    ):
        """feature_tables: {name: [vocabulary_size, max_values] int value ids in [0, V), -1 padded}.
        id_embedding: False leaves the id's own embedding out (a query tower of other parts; see retrieval.query).
        project: always end with the linear projection (a subclass adding parts of its own)."""
        super().__init__(name=name)
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.normalize = normalize
        self.embedding = None
        if id_embedding:
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
        needs_projection = project or bool(hidden_dims) or bool(self.feature_names)
        self.projection = tf.keras.layers.Dense(embedding_dim, name="projection") if needs_projection else None

    def call(self, ids):
        return self.head(self.id_parts(ids))

    def id_parts(self, ids):
        """ids [n] -> [[n, dim]]: the id embedding (when the tower has one), then each feature's mean embedding."""
        parts = [] if self.embedding is None else [self.embedding(ids)]
        for table, embedding in zip(self.feature_tables, self.feature_embeddings):
            parts.append(masked_mean_embedding(embedding, tf.gather(table, ids)))  # [n, max_values] -> [n, dim]
        return parts

    def head(self, parts):
        """[[n, dim_i]] -> [n, output_dim]: concatenated, then the hidden layers, projection and normalisation."""
        outputs = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
        for layer in self.hidden_layers:
            outputs = layer(outputs)
        if self.projection is not None:
            outputs = self.projection(outputs)
        if self.normalize:
            # In float32 under mixed_float16: in float16 the squares of small values and l2_normalize's epsilon
            # (1e-12) underflow to 0, and a vector whose squared norm is 0 normalises to NaN (the step-0 loss was).
            outputs = tf.cast(tf.math.l2_normalize(tf.cast(outputs, tf.float32), axis=-1), outputs.dtype)
        return outputs

    def embed_all(self, batch_size: int = 65536) -> tf.Tensor:
        """Embeddings of every id in [0, vocabulary_size): [vocabulary_size, embedding_dim], computed in chunks."""
        # Written batch by batch into one buffer, not concatenated: tf.concat holds every batch and the result at
        # once (5 GB at 10M x 64, which the oneDNN allocator then keeps). The buffer is a variable's, assigned a
        # slice at a time in place (no sparse op touches it, so reading it back is no copy either).
        buffer = None
        for start in range(0, self.vocabulary_size, batch_size):
            ids = tf.range(start, min(start + batch_size, self.vocabulary_size), dtype=tf.int64)
            embeddings = self(ids)
            if buffer is None:
                buffer = tf.Variable(tf.zeros([self.vocabulary_size, embeddings.shape[1]], embeddings.dtype),
                                     trainable=False)
            buffer[start : start + batch_size].assign(embeddings)
        return tf.convert_to_tensor(buffer)

    def embed_chunks(self, chunk_size: int, batch_size: int = 65536):
        """embed_all's rows as consecutive [chunk_size, embedding_dim] tensors (the last one shorter), computed
        when asked: a consumer that ranks chunk by chunk (retrieval.metrics.exact_top_k_of_chunks) never holds all
        of them, where embed_all holds all of them (2.56 GB at 10M x 64). With chunk_size a multiple of batch_size
        the tower runs on the same batch_size ids as in embed_all, so the rows are embed_all's, bit for bit."""
        for start in range(0, self.vocabulary_size, chunk_size):
            stop = min(start + chunk_size, self.vocabulary_size)
            batches = [self(tf.range(begin, min(begin + batch_size, stop), dtype=tf.int64))
                       for begin in range(start, stop, batch_size)]
            yield batches[0] if len(batches) == 1 else tf.concat(batches, axis=0)
