"""The tf.Module a SavedModel export serves, and its signatures: serving_default, query_embedding, item_embedding,
serving_keys and user_ids_of_keys (corpora with vocabularies), serving_history (models whose query reads a
history). Each signature's inputs and outputs, with their shapes, are listed in trainers/export.py's docstring
(the command's help); trainers.export writes the module as a version.

Key vocabularies are text files, line n the key of id n, that the lookup tables' initializers track as SavedModel
assets (assets/user_keys.txt, item_keys.txt, context-<name>.txt).
"""

import os
from typing import Optional

import numpy as np

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from data import context
from retrieval import index as index_lib


def serving_module(model, corpus, k: int, index_kind: str, vocabulary_dir: str, user_histories=None):
    """(tf.Module, {signature name: tf.function}): the towers, the index over every item but the OOV bucket,
    (optionally) the key vocabularies, written into vocabulary_dir, and, for a history model, every training user's
    latest history [num_users, L]."""
    module = tf.Module()
    module.query_tower = model.query_tower
    module.item_tower = model.item_tower
    oov_id = corpus.oov_item_id
    module.index = index_lib.build_index(index_kind, model.item_tower.embed_all(), k + (oov_id is not None))
    search = _top_k_without(module.index, k, oov_id)
    module.user_histories = None
    if user_histories is not None:
        module.user_histories = tf.Variable(np.asarray(user_histories, np.int64), trainable=False, name="histories")
    top_k = _add_id_signatures(module, search, corpus.num_users, corpus.num_items)
    signatures = {"serving_default": module.serve, "query_embedding": module.query_embedding,
                  "item_embedding": module.item_embedding}
    if corpus.user_keys is not None and corpus.item_keys is not None:
        signatures["serving_keys"] = _add_key_signatures(module, corpus, vocabulary_dir, top_k)
    if getattr(model.query_tower, "history_encoder", None) is not None:
        signatures["serving_history"] = _add_history_signature(module, corpus, vocabulary_dir, search)
    return module, signatures


def _top_k_without(index, k: int, excluded_id: Optional[int]):
    """queries [b, dim] -> (scores [b, k], ids [b, k]) of an index built for k + 1 when an id is excluded: that
    id (at most once in a row) is moved past the end, the order of the others kept."""

    def top_k(queries):
        scores, ids = index(queries)
        if excluded_id is None:
            return scores, ids
        order = tf.argsort(tf.cast(tf.equal(ids, excluded_id), tf.int32), axis=1, stable=True)[:, :k]
        return tf.gather(scores, order, batch_dims=1), tf.gather(ids, order, batch_dims=1)

    return top_k


def _query_features(module, user_ids):
    """The query tower's inputs for known users: their id and, for a history model, their latest history."""
    features = {"user_id": user_ids}
    if getattr(module, "user_histories", None) is not None:
        features["history"] = tf.gather(module.user_histories, user_ids)
    return features


def _checked_ids(ids, limit: int, name: str):
    """The assertions that ids [batch] int64 are in [0, limit), for a control dependency."""
    message = f"{name} must be in [0, {limit})"
    return [
        tf.debugging.assert_non_negative(ids, message=message),
        tf.debugging.assert_less(ids, tf.constant(limit, tf.int64), message=message),
    ]


def _add_id_signatures(module, search, num_users: int, num_items: int):
    """Adds serve (serving_default), query_embedding and item_embedding, each checking its ids are in range;
    returns top_k, the function of serve (user ids -> item_ids, scores), for the key signatures to answer with."""

    def top_k(user_ids):
        with tf.control_dependencies(_checked_ids(user_ids, num_users, "user_id")):
            scores, item_ids = search(module.query_tower(_query_features(module, user_ids)))
        return {"item_ids": tf.cast(item_ids, tf.int64), "scores": tf.cast(scores, tf.float32)}

    user_spec = tf.TensorSpec([None], tf.int64, name="user_id")
    module.serve = tf.function(top_k, input_signature=[user_spec])

    @tf.function(input_signature=[user_spec])
    def query_embedding(user_ids):
        with tf.control_dependencies(_checked_ids(user_ids, num_users, "user_id")):
            return {"embedding": module.query_tower(_query_features(module, user_ids))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="item_id")])
    def item_embedding(item_ids):
        with tf.control_dependencies(_checked_ids(item_ids, num_items, "item_id")):
            return {"embedding": module.item_tower(item_ids)}

    module.query_embedding = query_embedding
    module.item_embedding = item_embedding
    return top_k


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as file:
        for line in lines:
            if "\n" in line or "\r" in line:
                raise ValueError(f"vocabulary key {line!r} holds a line break; it cannot go into {path}")
            file.write(line + "\n")


def _vocabulary_table(path: str, keys_to_ids: bool, default_id: int = -1):
    """A lookup table of the vocabulary file at path (line n holds the key of id n): keys [...] string -> ids int64
    (default_id for a key not in it) with keys_to_ids, else ids [...] int64 -> keys string ("" for an id not in
    it). Its initializer tracks the file as a SavedModel asset."""
    line = tf.lookup.TextFileIndex
    if keys_to_ids:
        initializer = tf.lookup.TextFileInitializer(path, tf.string, line.WHOLE_LINE, tf.int64, line.LINE_NUMBER)
        return tf.lookup.StaticHashTable(initializer, default_id)
    initializer = tf.lookup.TextFileInitializer(path, tf.int64, line.LINE_NUMBER, tf.string, line.WHOLE_LINE)
    return tf.lookup.StaticHashTable(initializer, "")


def _add_key_signatures(module, corpus, vocabulary_dir: str, top_k):
    """Adds the vocabularies (as SavedModel assets), user_ids_of_keys and the serving_keys signature, which
    answers top_k (user ids -> item_ids, scores) by user key with the items' keys; returns serving_keys."""
    user_path = os.path.join(vocabulary_dir, "user_keys.txt")
    item_path = os.path.join(vocabulary_dir, "item_keys.txt")
    _write_lines(user_path, corpus.user_keys)
    _write_lines(item_path, corpus.item_keys)
    module.user_ids_by_key = _vocabulary_table(user_path, keys_to_ids=True)
    module.item_keys_by_id = _vocabulary_table(item_path, keys_to_ids=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_key")])
    def user_ids_of_keys(user_keys):
        """user keys [batch] -> dense ids [batch] int64, -1 for keys outside the vocabulary."""
        return module.user_ids_by_key.lookup(user_keys)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_key")])
    def serving_keys(user_keys):
        user_ids = module.user_ids_by_key.lookup(user_keys)
        with tf.control_dependencies(
            [tf.debugging.assert_non_negative(user_ids, message="user_key not in the user vocabulary")]
        ):
            outputs = top_k(tf.identity(user_ids))
        return {**outputs, "item_keys": module.item_keys_by_id.lookup(outputs["item_ids"])}

    module.user_ids_of_keys = user_ids_of_keys
    module.serving_keys = serving_keys
    return serving_keys


def _add_history_signature(module, corpus, vocabulary_dir: str, search):
    """serving_history: history item keys [batch, n] string (+ the context the model reads) -> item_keys,
    item_ids, scores [batch, K]. Keys map to ids through the item vocabulary asset (the ids as text for a corpus
    without one); unknown keys and "" are dropped, the others keep their order (most recent first)."""
    path = os.path.join(vocabulary_dir, "item_keys.txt")
    if not os.path.exists(path):
        _write_lines(path, corpus.item_keys or [str(item) for item in range(corpus.num_items)])
    module.item_ids_by_key = _vocabulary_table(path, keys_to_ids=True)
    if getattr(module, "item_keys_by_id", None) is None:
        module.item_keys_by_id = _vocabulary_table(path, keys_to_ids=False)
    history_length = module.query_tower.history_encoder.max_length
    context_inputs = _context_inputs(module, corpus, vocabulary_dir)
    specs = [tf.TensorSpec([None, None], tf.string, name="history")] + [spec for spec, _ in context_inputs]

    def serving_history(history_keys, *context_values):
        ids = module.item_ids_by_key.lookup(history_keys)  # [batch, n], -1 for unknown keys and ""
        unknown_user = tf.fill([tf.shape(ids)[0]], tf.constant(-1, tf.int64))
        ids = tf.concat([ids, unknown_user[:, tf.newaxis]], axis=1)  # at least one slot, for an empty history
        known_first = tf.argsort(tf.cast(ids < 0, tf.int32), axis=1, stable=True)
        ids = tf.gather(ids, known_first, batch_dims=1)[:, :history_length]
        features = {"user_id": unknown_user, "history": ids}
        for (spec, to_feature), value in zip(context_inputs, context_values):
            features[spec.name] = to_feature(value)
        scores, item_ids = finite_top_k(module.query_tower, search, features, module.query_tower.numeric_context_names)
        item_ids = tf.cast(item_ids, tf.int64)
        return {"item_ids": item_ids, "scores": tf.cast(scores, tf.float32),
                "item_keys": module.item_keys_by_id.lookup(item_ids)}

    module.serving_history = tf.function(serving_history, input_signature=specs)
    return module.serving_history


def finite_top_k(query_tower, search, features, numeric_names):
    """(scores, ids) [batch, K] of search(query_tower(features)), never NaN or infinite: a row whose scores are not
    all finite (a numeric context value finite but so far out that the query or its dot products overflow) is
    answered with its numeric context none, as an unknown value is (computed only when some row needs it)."""
    scores, ids = search(query_tower(features))
    if not numeric_names:
        return scores, ids
    bad = tf.logical_not(tf.reduce_all(tf.math.is_finite(scores), axis=1))  # [batch]

    def with_numeric_none():
        none = {**features, **{name: tf.zeros_like(features[name]) for name in numeric_names}}
        none_scores, none_ids = search(query_tower(none))
        return (tf.where(bad[:, tf.newaxis], none_scores, scores),
                tf.where(bad[:, tf.newaxis], tf.cast(none_ids, ids.dtype), ids))

    return tf.cond(tf.reduce_any(bad), with_numeric_none, lambda: (tf.identity(scores), tf.identity(ids)))


def _in_vocabulary(size: int):
    """ids [batch] or [batch, n] int64 -> the same with those outside [0, size) NONE: what a client sends beyond
    the feature's embedding table (hour_of_day=99) is none, like -1, not an op error of the lookup."""

    def in_vocabulary(ids):
        ids = tf.cast(ids, tf.int64)
        return tf.where((ids >= 0) & (ids < size), ids, tf.constant(context.NONE, tf.int64))

    return in_vocabulary


def _context_inputs(module, corpus, vocabulary_dir: str):
    """[(TensorSpec, function input -> the query tower's feature)] of each context feature the query tower reads,
    in user terms: a time feature as int64 [batch] (-1 for none; a value outside 0..23 / 0..6 is none too); a
    context column of the corpus by its own values, a categorical one as string [batch] and a multi-valued one as
    string [batch, n] ("" pads; unknown values and "" are none), through a lookup table of its vocabulary (a
    SavedModel asset); a numeric one as its raw float32 [batch], standardised here with the training mean and
    standard deviation (NaN, +-inf and a value whose standardised one is not finite: none, the mean)."""
    declared = {column.name: column for column in corpus.context_columns}
    tower = module.query_tower
    sizes = {name: embedding.input_dim for name, embedding in zip(tower.context_names, tower.context_embeddings)}
    module.context_ids_by_value = {}
    inputs = []
    for name in tower.context_names + tower.numeric_context_names:
        column = declared.get(name)
        if column is None:  # a time feature: its value is its id
            inputs.append((tf.TensorSpec([None], tf.int64, name=name), _in_vocabulary(sizes[name])))
        elif column.kind == context.NUMERIC:
            inputs.append((tf.TensorSpec([None], tf.float32, name=name), _standardise(column, tower.compute_dtype)))
        else:
            path = os.path.join(vocabulary_dir, f"context-{name}.txt")
            _write_lines(path, column.keys)
            table = _vocabulary_table(path, keys_to_ids=True, default_id=context.NONE)
            module.context_ids_by_value[name] = table
            shape = [None, None] if column.kind == context.MULTI else [None]
            lookup = _in_vocabulary(sizes[name])
            inputs.append((tf.TensorSpec(shape, tf.string, name=name),
                           lambda values, table=table, lookup=lookup: lookup(table.lookup(values))))
    return inputs


def _standardise(column, dtype="float32"):
    """raw values [batch] float32 -> standardised with the column's training mean and std, in the tower's dtype;
    none (0, the mean) for NaN, +-inf and a value whose standardised one is not finite in that dtype."""

    def standardise(raw):
        values = tf.cast((tf.cast(raw, tf.float64) - column.mean) / column.std, dtype)
        return tf.where(tf.math.is_finite(values), values, tf.zeros_like(values))

    return standardise
