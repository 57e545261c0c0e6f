"""The query tower: a user from any of their id, their static features, their recent items and the context.

    QueryTower({user_id: [batch], history: [batch, L], hour_of_day: [batch], ...}) -> query embeddings [batch, dim]

Its parts, each chosen by name (QUERY_FEATURES), are concatenated and go through the tower's head (hidden ReLU
layers, a linear projection to `embedding_dim`, optional L2 normalisation), as in the item tower:
- user_id: the user's id embedding (retrieval.towers.Tower's); a user the model does not know (id -1) gets zeros.
- user_features: the mean embedding of each of the user's static feature values (looked up by user id).
- history: the user's recent items, most recent first, padded with PAD (-1), pooled by a HistoryEncoder (the plain
  mean, a learned position-weighted mean, which the trainer takes by default, a GRU or a self-attention block). It reads
  the item tower's id table when shared (YouTube's candidate generation, Yi et al. 2019), so a history of items
  a new user just met is a query the model has already learned; under ParameterServerStrategy that table is the
  sharded one. An empty history pools to zeros: the query is then the head's bias, "the model's answer for an
  empty history".
- context: what the interaction's moment says: one embedding per categorical context feature (hour of day, day
  of week, a log's own categorical columns: values in [0, vocabulary size), -1 for none), the mean of the
  valid values' embeddings for a multi-valued one ([batch, n], -1 padded), and each numeric context feature's
  (standardised) value as it is, concatenated into the head.
A query tower of user_id (and user_features) alone is exactly retrieval.towers.Tower: its variables, and so its
checkpoints, are those of the query tower before this module existed.

Every input may be missing from the dict (or the input may be a bare user-id tensor): a missing history is
empty and a missing context value is none, so callers that know only user ids (the step-zero check, variable
creation before a restore) still call the tower.
"""

from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrieval.towers import Tower, embed_valid, masked_mean_embedding

QUERY_FEATURES = ("user_id", "user_features", "history", "context")
HISTORY_ENCODERS = ("mean", "weighted_mean", "gru", "attention")
PAD = -1
# The mean encoders train the item table through this many most recent items of each history (HistoryEncoder._mean).
TRAINED_POSITIONS = 10
# The name of the history's own table's variable (query_tower/history_encoder/embeddings): the one the trainer's
# optimizer updates without a first moment (retrieval.optimizers.LazyAdam's momentless_variables).
HISTORY_TABLE = "history_encoder/embeddings"
# Context features derived from the interaction's timestamp, and their number of values.
TIME_FEATURES = {"hour_of_day": 24, "day_of_week": 7}


def check_features(query_features: Sequence[str], context_features: Optional[Sequence[str]] = None,
                   declared_context: Optional[Sequence[str]] = None) -> None:
    """ValueError naming the setting unless query_features are some of QUERY_FEATURES (at least one, each once)
    and context_features (when given) at least one when query_features has context, each one of TIME_FEATURES or
    of declared_context (the corpus's own context columns; None: not known yet, so not checked)."""
    unknown = [name for name in query_features if name not in QUERY_FEATURES]
    if unknown or not query_features or len(set(query_features)) != len(query_features):
        raise ValueError(
            f"query_features={','.join(query_features)}; expected one or more of {', '.join(QUERY_FEATURES)}"
        )
    if context_features is None:
        return
    available = list(TIME_FEATURES) + list(declared_context or ())
    unknown = [name for name in context_features if name not in available] if declared_context is not None else []
    if unknown or ("context" in query_features and not context_features):
        raise ValueError(f"context_features={','.join(context_features)}; expected some of {', '.join(available)}"
                         + ("" if declared_context is not None else " or the corpus's context columns"))


class HistoryEncoder(tf.keras.layers.Layer):
    """history [batch, L] int item ids, most recent first, PAD (-1) after the earliest -> [batch, dim].

    encoder:
      mean: the mean of the valid items' embeddings (padding masked out).
      weighted_mean: the mean weighted by a learned weight of each position (exp of a logit, all 0 at the start:
        the plain mean), normalised over the valid positions: recency at about the cost of the mean.
      gru: a GRU over the items from the oldest to the most recent (padding masked), its last state.
      attention: one self-attention block over the items plus learned position embeddings (padding masked as
        keys), then the masked mean of its outputs.
    item_embedding: the embedding layer to read item ids with (the item tower's, shared), or None for a table of
      its own of num_items rows.
    max_length: the longest history (positions of the attention encoder).
    trained_positions: the mean encoders train the item table through this many most recent items of each history
      (the older ones are read without a gradient; see _mean).
    """

    def __init__(self, item_embedding: Optional[tf.keras.layers.Layer], embedding_dim: int, encoder: str = "mean",
                 max_length: int = 50, num_items: int = 0, name: str = "history_encoder",
                 trained_positions: int = TRAINED_POSITIONS):
        super().__init__(name=name)
        if trained_positions < 1:
            raise ValueError(f"trained_positions={trained_positions}; expected 1 or more")
        self.trained_positions = trained_positions
        if encoder not in HISTORY_ENCODERS:
            raise ValueError(f"history_encoder={encoder!r}; expected one of {', '.join(HISTORY_ENCODERS)}")
        if item_embedding is None:
            item_embedding = tf.keras.layers.Embedding(num_items, embedding_dim, name="history_items")
        self.item_embedding = item_embedding
        self.encoder = encoder
        self.max_length = max_length
        if encoder == "weighted_mean":
            self.position_logits = self.add_weight(
                name="position_logits", shape=[max(max_length, 1)], initializer="zeros", trainable=True
            )
        elif encoder == "gru":
            self.gru = tf.keras.layers.GRU(embedding_dim, go_backwards=True, name="gru")
        elif encoder == "attention":
            self.positions = tf.keras.layers.Embedding(max(max_length, 1), embedding_dim, name="positions")
            self.attention = tf.keras.layers.MultiHeadAttention(2, max(embedding_dim // 2, 1), name="attention")
            self.norm = tf.keras.layers.LayerNormalization(name="norm")

    def call(self, history):
        history = tf.cast(history, tf.int64)
        if self.encoder in ("mean", "weighted_mean"):
            return self._mean(history)
        valid = history >= 0  # [batch, L]
        embedded = embed_valid(self.item_embedding, history)  # [batch, L, dim], zeros at padding
        if self.encoder == "gru":
            # Most recent first, so go_backwards reads oldest to newest; masked steps keep the state.
            return self.gru(embedded, mask=valid)
        length = tf.shape(history)[1]
        inputs = embedded + self.positions(tf.range(length))[tf.newaxis]
        mask = tf.logical_and(valid[:, tf.newaxis, :], valid[:, :, tf.newaxis])  # [batch, L, L]
        outputs = self.norm(inputs + self.attention(inputs, inputs, attention_mask=mask))
        weights = tf.cast(valid, outputs.dtype)[..., tf.newaxis]
        return tf.reduce_sum(outputs * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)

    def build(self, input_shape):
        if not self.item_embedding.built:  # a shared table the item tower has not built yet
            self.item_embedding.build(None)
        super().build(input_shape)

    def _mean(self, history):
        """The (position-weighted) mean of the valid items.

        The table is trained through the trained_positions (TRAINED_POSITIONS) most recent items of each history
        only: the older ones are read without a gradient. Every interaction is among the most recent items of the histories that
        follow it, so every row still learns from each of its occurrences; at 1,000,000 items this halves the
        step (the optimizer touched some 16,000 random rows of the table and its two Adam slots per batch of 1,024
        histories of 50) for the same recall (README, "The query tower"). Each slice's valid items are pooled
        with a sorted segment sum (tf.where lists them row by row), several times cheaper on CPU than the
        unsorted one in both directions, and the table's gradient is the trained items' rows as they are: the
        optimizer de-duplicates sparse gradients itself, so de-duplicating here too only added a second pass.
        """
        batch_size = tf.shape(history, out_type=tf.int64)[0]
        valid = history >= 0  # [batch, L]
        if self.encoder == "mean":
            weights = None
            norms = tf.reduce_sum(tf.cast(valid, self.compute_dtype), axis=1, keepdims=True)
        else:
            slots = tf.minimum(tf.range(tf.shape(history)[1]), self.max_length - 1)
            weights = tf.cast(tf.exp(tf.cast(tf.gather(self.position_logits, slots), tf.float32)),
                              self.compute_dtype)  # [L]
            norms = tf.reduce_sum(tf.where(valid, weights, tf.zeros_like(weights)), axis=1, keepdims=True)
        trained = self.trained_positions
        sums = (self._sums(history[:, :trained], valid[:, :trained],
                           None if weights is None else weights[:trained], batch_size, trained=True)
                + self._sums(history[:, trained:], valid[:, trained:],
                             None if weights is None else weights[trained:], batch_size, trained=False))
        return sums / tf.maximum(norms, tf.cast(1e-6, norms.dtype))

    def _sums(self, history, valid, weights, batch_size, trained: bool):
        """The weighted sum [batch, dim] of the valid items' embeddings of a slice of the history; weights: [l] of
        the slice's positions, or None for 1."""
        positions = tf.where(valid)  # [v, 2] (row, position) of the valid items, row by row
        ids = tf.gather_nd(history, positions)  # [v]
        table = self.item_embedding.embeddings  # embedding_lookup reads a ShardedVariable (parameter_server) too
        values = tf.nn.embedding_lookup(table, ids)  # [v, dim]; its gradient: IndexedSlices of these rows
        if not trained:
            values = tf.stop_gradient(values)
        values = tf.cast(values, self.compute_dtype)
        if weights is not None:
            values = values * tf.gather(weights, positions[:, 1])[:, tf.newaxis]
        sums = tf.math.segment_sum(values, positions[:, 0])  # [last valid row + 1, dim]
        return tf.pad(sums, [[0, batch_size - tf.shape(sums, out_type=tf.int64)[0]], [0, 0]])


class QueryTower(Tower):
    """features {user_id: [batch], history: [batch, L], <context name>: [batch]} -> [batch, embedding_dim].

    query_features: the parts to use, from QUERY_FEATURES (see the module docstring).
    num_users: rows of the user id table (and of user_feature_tables).
    user_feature_tables: {name: [num_users, max_values] value ids, -1 padded}: read when query_features has
      user_features.
    history: the HistoryEncoder (required when query_features has history).
    context_vocabularies: {context feature name: number of values} of the categorical (and multi-valued) context
      read when query_features has context.
    numeric_context: the names of the numeric context features read then ([batch] float, standardised).
    """

    def __init__(
        self,
        num_users: int,
        embedding_dim: int,
        hidden_dims: Sequence[int] = (),
        normalize: bool = False,
        query_features: Sequence[str] = ("user_id",),
        user_feature_tables: Optional[Mapping[str, np.ndarray]] = None,
        history: Optional[HistoryEncoder] = None,
        context_vocabularies: Optional[Mapping[str, int]] = None,
        numeric_context: Sequence[str] = (),
        name: str = "query_tower",
    ):
        check_features(query_features)
        if ("history" in query_features) != (history is not None):
            raise ValueError("a query tower reads a history exactly when query_features has history")
        context_vocabularies = dict(context_vocabularies or {}) if "context" in query_features else {}
        numeric_context = tuple(numeric_context) if "context" in query_features else ()
        self.query_features = tuple(query_features)
        self.uses_user = "user_id" in query_features or bool(user_feature_tables and "user_features" in query_features)
        super().__init__(
            num_users, embedding_dim, hidden_dims, normalize, name=name,
            feature_tables=user_feature_tables if "user_features" in query_features else None,
            id_embedding="user_id" in query_features,
            project=history is not None or bool(context_vocabularies) or bool(numeric_context),
        )
        self.history_encoder = history
        self.context_names = sorted(context_vocabularies)
        self.context_embeddings = [
            tf.keras.layers.Embedding(context_vocabularies[context_name], embedding_dim, name=f"context_{context_name}")
            for context_name in self.context_names
        ]
        self.numeric_context_names = sorted(numeric_context)

    def call(self, features):
        if not isinstance(features, Mapping):
            features = {"user_id": features}
        batch_size = tf.shape(next(iter(features.values())))[0]
        parts = self._user_parts(features["user_id"]) if self.uses_user else []
        if self.history_encoder is not None:
            history = features.get("history")
            if history is None:
                history = tf.fill([batch_size, 1], tf.constant(PAD, tf.int64))
            parts.append(self.history_encoder(history))
        for context_name, embedding in zip(self.context_names, self.context_embeddings):
            values = features.get(context_name)
            if values is None:
                values = tf.fill([batch_size], tf.constant(PAD, tf.int64))
            values = tf.cast(values, tf.int64)
            parts.append(masked_mean_embedding(embedding, tf.reshape(values, [batch_size, -1])))
        for context_name in self.numeric_context_names:
            # The value itself, not an embedding of buckets: it keeps its order and distances, and the head's
            # projection learns a direction per unit. Standardised upstream, so at unit scale like the embeddings;
            # a missing value is 0, the training mean.
            values = features.get(context_name)
            if values is None:
                values = tf.zeros([batch_size])
            parts.append(tf.reshape(tf.cast(values, self.compute_dtype), [batch_size, 1]))
        return self.head(parts)

    def _user_parts(self, user_ids):
        """The user-id part(s) [batch, dim]: zeros for an unknown user (id -1), whom serving_history queries."""
        user_ids = tf.cast(user_ids, tf.int64)
        parts = self.id_parts(tf.maximum(user_ids, 0))
        known = tf.cast(user_ids >= 0, parts[0].dtype)[:, tf.newaxis]
        return [part * known for part in parts]
