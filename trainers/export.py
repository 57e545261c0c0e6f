"""Exports a trained run as a versioned SavedModel that serves top-K: `python -m trainers.export --model_dir ...`.

Layout: <export_dir>/<n>/ with n the next integer (default export_dir: <model_dir>/export). A version is written
under a temporary name and renamed when complete, so a failed export never leaves a half version and never
touches older ones. Signatures:
  serving_default   user_id [batch] int64 -> item_ids [batch, K] int64, scores [batch, K] float32
  query_embedding   user_id [batch] int64 -> embedding [batch, dim]
  item_embedding    item_id [batch] int64 -> embedding [batch, dim]
  serving_keys      (corpora with vocabularies) user_key [batch] string -> item_keys [batch, K] string,
                    item_ids, scores; the vocabularies are SavedModel assets (assets/user_keys.txt, item_keys.txt)
  serving_history   (models whose query reads a history) history [batch, n] string item keys, most recent first,
                    "" for padding (the built-in corpus's keys are its ids as text), and the context the model
                    reads: hour_of_day, day_of_week [batch] int64 (-1 for none); each context column of the
                    corpus under its name, categorical as string [batch], multi-valued as string [batch, n] (""
                    pads; unknown values are none), numeric as raw float32 [batch] (standardised inside; NaN,
                    +-inf are none); values outside a feature's range (hour_of_day=99) are none too, and the
                    scores are never NaN (a row whose numbers overflow them is answered with them none)
                    -> item_keys, item_ids, scores:
                    the query of a user the model need not know. Unknown keys are ignored, the first
                    history_length known ones kept; an empty history is the model's answer for an empty history.
For a history model, the user-id signatures query each training user's latest history (their last
history_length training items, stored in the SavedModel). No signature returns the `<oov>` bucket of rare items.
The loaded object also has user_ids_of_keys (keys [batch] -> ids, -1 when unknown). assets.extra/export.json
records K, the index, the corpus sizes, the query features, the context features (and the kinds of the corpus's
context columns among them) and the checkpoint the version came from.
The default brute-force index loads with plain `tf.saved_model.load`; `--index=scann` needs `import scann` in the
loading process first (its custom ops).
"""

import contextlib
import json
import logging
import os
import sys
import tempfile
from typing import Optional

import numpy as np

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from absl import app, flags

from data import atomic, context, vocabulary
from trainers import cli

METADATA = os.path.join("assets.extra", "export.json")
INDEXES = ("brute_force", "scann")
# tf-keras' warning when tf.saved_model.save asks a subclassed Model for its config (twice per export).
_NO_CONFIG_WARNING = "Model's `__init__()` arguments contain non-serializable objects"


class _WithoutNoConfigWarning(logging.Filter):
    def filter(self, record):
        return _NO_CONFIG_WARNING not in record.getMessage()


@contextlib.contextmanager
def _no_config_warning():
    """Within the block, TensorFlow's logger drops tf-keras' no-config warning, and only it. It is about
    re-creating the Keras model from its config (keras.models.load_model), which this export is not for: the
    SavedModel serves through its signatures, and the trainer rebuilds models from config.json."""
    tensorflow_logger, without = logging.getLogger("tensorflow"), _WithoutNoConfigWarning()
    tensorflow_logger.addFilter(without)
    try:
        yield
    finally:
        tensorflow_logger.removeFilter(without)


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as file:
        for line in lines:
            if "\n" in line or "\r" in line:
                raise ValueError(f"vocabulary key {line!r} holds a line break; it cannot go into {path}")
            file.write(line + "\n")


def oov_item_id(corpus) -> Optional[int]:
    """The id of the `<oov>` bucket of rare items, or None when the corpus has none."""
    if corpus.item_keys is None or vocabulary.OOV_KEY not in corpus.item_keys:
        return None
    return corpus.item_keys.index(vocabulary.OOV_KEY)


def _top_k_without(index, k: int, excluded_id: Optional[int]):
    """queries [b, dim] -> (scores [b, k], ids [b, k]) of an index built for k + 1 when an id is excluded: that
    id (at most once in a row) is moved past the end, the order of the others kept."""
    import tensorflow as tf

    def top_k(queries):
        scores, ids = index(queries)
        if excluded_id is None:
            return scores, ids
        order = tf.argsort(tf.cast(tf.equal(ids, excluded_id), tf.int32), axis=1, stable=True)[:, :k]
        return tf.gather(scores, order, batch_dims=1), tf.gather(ids, order, batch_dims=1)

    return top_k


def _query_features(module, user_ids):
    """The query tower's inputs for known users: their id and, for a history model, their latest history."""
    import tensorflow as tf

    features = {"user_id": user_ids}
    if getattr(module, "user_histories", None) is not None:
        features["history"] = tf.gather(module.user_histories, user_ids)
    return features


def _serving_module(model, corpus, k: int, index_kind: str, vocabulary_dir: str, user_histories=None):
    """A tf.Module holding the towers, the index over every item but the OOV bucket, (optionally) the key
    vocabularies and, for a history model, every training user's latest history [num_users, L]."""
    import tensorflow as tf

    from retrieval import index as index_lib

    module = tf.Module()
    module.query_tower = model.query_tower
    module.item_tower = model.item_tower
    oov_id = oov_item_id(corpus)
    module.index = index_lib.build_index(index_kind, model.item_tower.embed_all(), k + (oov_id is not None))
    search = _top_k_without(module.index, k, oov_id)
    module.user_histories = None
    if user_histories is not None:
        module.user_histories = tf.Variable(np.asarray(user_histories, np.int64), trainable=False, name="histories")
    num_users = corpus.num_users
    num_items = corpus.num_items

    def check_ids(ids, limit, name):
        message = f"{name} must be in [0, {limit})"
        return [
            tf.debugging.assert_non_negative(ids, message=message),
            tf.debugging.assert_less(ids, tf.constant(limit, tf.int64), message=message),
        ]

    def top_k(user_ids):
        with tf.control_dependencies(check_ids(user_ids, num_users, "user_id")):
            scores, item_ids = search(module.query_tower(_query_features(module, user_ids)))
        return {"item_ids": tf.cast(item_ids, tf.int64), "scores": tf.cast(scores, tf.float32)}

    user_spec = tf.TensorSpec([None], tf.int64, name="user_id")
    module.serve = tf.function(top_k, input_signature=[user_spec])

    @tf.function(input_signature=[user_spec])
    def query_embedding(user_ids):
        with tf.control_dependencies(check_ids(user_ids, num_users, "user_id")):
            return {"embedding": module.query_tower(_query_features(module, user_ids))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="item_id")])
    def item_embedding(item_ids):
        with tf.control_dependencies(check_ids(item_ids, num_items, "item_id")):
            return {"embedding": module.item_tower(item_ids)}

    module.query_embedding = query_embedding
    module.item_embedding = item_embedding
    signatures = {"serving_default": module.serve, "query_embedding": query_embedding, "item_embedding": item_embedding}
    if corpus.user_keys is not None and corpus.item_keys is not None:
        signatures["serving_keys"] = _add_key_signatures(module, corpus, vocabulary_dir, top_k)
    if getattr(model.query_tower, "history_encoder", None) is not None:
        signatures["serving_history"] = _add_history_signature(module, corpus, vocabulary_dir, search)
    return module, signatures


def _add_history_signature(module, corpus, vocabulary_dir: str, search):
    """serving_history: history item keys [batch, n] string (+ the context the model reads) -> item_keys,
    item_ids, scores [batch, K]. Keys map to ids through the item vocabulary asset (the ids as text for a corpus
    without one); unknown keys and "" are dropped, the others keep their order (most recent first)."""
    import tensorflow as tf

    path = os.path.join(vocabulary_dir, "item_keys.txt")
    if not os.path.exists(path):
        _write_lines(path, corpus.item_keys or [str(item) for item in range(corpus.num_items)])
    line = tf.lookup.TextFileIndex
    module.item_ids_by_key = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(path, tf.string, line.WHOLE_LINE, tf.int64, line.LINE_NUMBER), -1
    )
    if getattr(module, "item_keys_by_id", None) is None:
        module.item_keys_by_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(path, tf.int64, line.LINE_NUMBER, tf.string, line.WHOLE_LINE), ""
        )
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
        scores, item_ids = _finite_top_k(module.query_tower, search, features, module.query_tower.numeric_context_names)
        item_ids = tf.cast(item_ids, tf.int64)
        return {"item_ids": item_ids, "scores": tf.cast(scores, tf.float32),
                "item_keys": module.item_keys_by_id.lookup(item_ids)}

    module.serving_history = tf.function(serving_history, input_signature=specs)
    return module.serving_history


def _finite_top_k(query_tower, search, features, numeric_names):
    """(scores, ids) [batch, K] of search(query_tower(features)), never NaN or infinite: a row whose scores are not
    all finite (a numeric context value finite but so far out that the query or its dot products overflow) is
    answered with its numeric context none, as an unknown value is (computed only when some row needs it)."""
    import tensorflow as tf

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
    import tensorflow as tf

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
    import tensorflow as tf

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
            line = tf.lookup.TextFileIndex
            table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(path, tf.string, line.WHOLE_LINE, tf.int64, line.LINE_NUMBER),
                context.NONE)
            module.context_ids_by_value[name] = table
            shape = [None, None] if column.kind == context.MULTI else [None]
            lookup = _in_vocabulary(sizes[name])
            inputs.append((tf.TensorSpec(shape, tf.string, name=name),
                           lambda values, table=table, lookup=lookup: lookup(table.lookup(values))))
    return inputs


def _standardise(column, dtype="float32"):
    """raw values [batch] float32 -> standardised with the column's training mean and std, in the tower's dtype;
    none (0, the mean) for NaN, +-inf and a value whose standardised one is not finite in that dtype."""
    import tensorflow as tf

    def standardise(raw):
        values = tf.cast((tf.cast(raw, tf.float64) - column.mean) / column.std, dtype)
        return tf.where(tf.math.is_finite(values), values, tf.zeros_like(values))

    return standardise


def _add_key_signatures(module, corpus, vocabulary_dir: str, top_k):
    """Adds the vocabularies (as SavedModel assets), user_ids_of_keys and the serving_keys signature, which
    answers top_k (user ids -> item_ids, scores) by user key with the items' keys; returns serving_keys."""
    import tensorflow as tf

    user_path = os.path.join(vocabulary_dir, "user_keys.txt")
    item_path = os.path.join(vocabulary_dir, "item_keys.txt")
    _write_lines(user_path, corpus.user_keys)
    _write_lines(item_path, corpus.item_keys)
    line = tf.lookup.TextFileIndex
    # Line n holds the key of id n; the initializers track the files as SavedModel assets.
    module.user_ids_by_key = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(user_path, tf.string, line.WHOLE_LINE, tf.int64, line.LINE_NUMBER), -1
    )
    module.item_keys_by_id = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(item_path, tf.int64, line.LINE_NUMBER, tf.string, line.WHOLE_LINE), ""
    )

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


def export(model, corpus, model_dir: str, export_dir: str = "", k: int = 100, index: str = "brute_force",
           checkpoint: str = "", user_histories=None) -> str:
    """Writes the next version <export_dir>/<n>/ (export_dir defaults to <model_dir>/export); returns its path.

    user_histories: [num_users, L] every training user's latest history, for a model whose query reads one.
    Written whole or not at all (data.atomic.write_new_version); older versions are never touched. Raises
    ValueError for a bad k or index.
    """
    import tensorflow as tf

    if index not in INDEXES:
        raise ValueError(f"index {index!r}: expected one of {', '.join(INDEXES)}")
    num_retrievable = corpus.num_items - (oov_item_id(corpus) is not None)
    if not 1 <= k <= num_retrievable:
        raise ValueError(f"export top-K k={k} must be between 1 and the corpus size {num_retrievable}")
    query_tower = model.query_tower
    context_features = _context_feature_names(query_tower)
    metadata = {
        "k": k,
        "index": index,
        "num_items": corpus.num_items,
        "num_users": corpus.num_users,
        "model_dir": os.path.abspath(model_dir),
        "checkpoint": checkpoint,
        "oov_item_id": oov_item_id(corpus),
        "query_features": list(getattr(query_tower, "query_features", ("user_id",))),
        "context_features": context_features,
        # The corpus's own context columns the model reads, and their kinds (trainers.retrieve --context).
        "context_columns": [{"name": column.name, "kind": column.kind} for column in corpus.context_columns
                            if column.name in context_features],
    }

    def write(saved_model_dir: str) -> None:
        # Vocabularies are read at save time and copied into the SavedModel's assets/.
        with tempfile.TemporaryDirectory(prefix="vocabulary-") as vocabulary_dir:
            module, signatures = _serving_module(model, corpus, k, index, vocabulary_dir, user_histories)
            with _no_config_warning():
                tf.saved_model.save(module, saved_model_dir, signatures=signatures)
        os.makedirs(os.path.join(saved_model_dir, "assets.extra"), exist_ok=True)
        with open(os.path.join(saved_model_dir, METADATA), "w") as file:
            json.dump({**metadata, "has_vocabulary": "serving_keys" in signatures,
                   "has_history": "serving_history" in signatures}, file, indent=2)

    return atomic.write_new_version(export_dir or os.path.join(model_dir, "export"), write)


def _context_feature_names(query_tower):
    """Every context feature the query tower reads: categorical (time features included), then numeric."""
    return list(getattr(query_tower, "context_names", ())) + list(getattr(query_tower, "numeric_context_names", ()))


def export_from_model_dir(model_dir: str, export_dir: str = "", k: int = 100, index: str = "brute_force",
                          best: bool = False):
    """Exports the newest checkpoint of a run (best: its --keep_best checkpoint): what the trainer calls at the end,
    whatever its strategy.

    The model is rebuilt on one device from config.json, so mirrored or parameter-server-sharded training
    exports the same plain SavedModel. Returns (version path, checkpoint step). Raises FileNotFoundError /
    ValueError with the reason.
    """
    from trainers import restored_run, training_input

    restored = restored_run.restore_model(model_dir, best)
    histories = None
    if "history" in restored.config.model.query_features:
        histories = training_input.latest_histories(restored.corpus, restored.config)
    path = export(restored.model, restored.corpus, model_dir, export_dir, k, index, restored.checkpoint, histories)
    return path, restored.step


def export_after_training(model_dir: str, k: int, best: bool = False):
    """The trainer's --export (best: of the --keep_best checkpoint): prints and returns (version path, step), or
    exits with the command that retries it (the run's checkpoints are kept either way)."""
    import gc

    import tensorflow as tf

    # The trained model is unreachable by now but held in reference cycles (Keras layers and their callbacks):
    # collected here, its tables (7.68 GB with the Adam slots at 10M x 64) are free for the exported model to
    # reuse, instead of the export adding its own on top (the oneDNN allocator keeps what it once held).
    gc.collect()
    try:
        path, step = export_from_model_dir(model_dir, k=k, best=best)
    except (OSError, ValueError, tf.errors.OpError) as error:
        sys.exit(f"training finished and its checkpoints are kept, but the export failed: {error}. Retry with "
                 f"`python -m trainers.export --model_dir={model_dir} --k={k}{' --best' if best else ''}`.")
    which = " (the best checkpoint, --keep_best)" if best else ""
    with open(os.path.join(path, METADATA)) as file:
        query = "--user_id ... or --history ..." if json.load(file)["has_history"] else "--user_id ..."
    print(f"exported step {step}{which} to {path}  (python -m trainers.retrieve --export_dir {path} {query})",
          flush=True)
    return path, step


FLAGS = flags.FLAGS


def _define_flags():
    """Only when run as a command: the trainer imports this module and owns --model_dir itself."""
    flags.DEFINE_string("model_dir", None, "A trainers.train run directory (config.json + checkpoints/).")
    flags.DEFINE_string("export_dir", "", "Where versions go; default <model_dir>/export.")
    flags.DEFINE_integer("k", 100, "Items the serving signature returns per query.", lower_bound=1)
    flags.DEFINE_enum("index", "brute_force", list(INDEXES), "Top-K index inside the SavedModel.")
    flags.DEFINE_bool("best", False, "Export the run's --keep_best checkpoint (checkpoints/best/), not the newest.")


def main(argv):
    cli.check_arguments(argv, "model_dir")
    try:
        path, step = export_from_model_dir(FLAGS.model_dir, FLAGS.export_dir, FLAGS.k, FLAGS.index, FLAGS.best)
    except (OSError, ValueError) as error:
        raise app.UsageError(f"--model_dir={FLAGS.model_dir} --k={FLAGS.k}: {error}") from None
    print(f"exported step {step} to {path}", flush=True)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
