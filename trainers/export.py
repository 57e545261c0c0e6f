"""Exports a trained run as a versioned SavedModel that serves top-K: `python -m trainers.export --model_dir ...`.

Layout: <export_dir>/<n>/ with n the next integer (default export_dir: <model_dir>/export). A version is written
under a temporary name and renamed when complete, so a failed export never leaves a half version and never
touches older ones. Signatures:
  serving_default   user_id [batch] int64 -> item_ids [batch, K] int64, scores [batch, K] float32
  query_embedding   user_id [batch] int64 -> embedding [batch, dim]
  item_embedding    item_id [batch] int64 -> embedding [batch, dim]
  serving_keys      (corpora with vocabularies) user_key [batch] string -> item_keys [batch, K] string,
                    item_ids, scores; the vocabularies are SavedModel assets (assets/user_keys.txt, item_keys.txt)
The loaded object also has user_ids_of_keys (keys [batch] -> ids, -1 when unknown). assets.extra/export.json
records K, the index, the corpus sizes and the checkpoint the version came from.
The default brute-force index loads with plain `tf.saved_model.load`; `--index=scann` needs `import scann` in the
loading process first (its custom ops).
"""

import json
import os
import sys
import tempfile

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from absl import app, flags

from data import atomic
from trainers import cli

METADATA = os.path.join("assets.extra", "export.json")
INDEXES = ("brute_force", "scann")


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as file:
        for line in lines:
            if "\n" in line or "\r" in line:
                raise ValueError(f"vocabulary key {line!r} holds a line break; it cannot go into {path}")
            file.write(line + "\n")


def _serving_module(model, corpus, k: int, index_kind: str, vocabulary_dir: str):
    """A tf.Module holding the towers, the index over every item and (optionally) the key vocabularies."""
    import tensorflow as tf

    from retrieval import index as index_lib

    module = tf.Module()
    module.query_tower = model.query_tower
    module.item_tower = model.item_tower
    module.index = index_lib.build_index(index_kind, model.item_tower.embed_all(), k)
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
            scores, item_ids = module.index(module.query_tower(user_ids))
        return {"item_ids": tf.cast(item_ids, tf.int64), "scores": tf.cast(scores, tf.float32)}

    user_spec = tf.TensorSpec([None], tf.int64, name="user_id")
    module.serve = tf.function(top_k, input_signature=[user_spec])

    @tf.function(input_signature=[user_spec])
    def query_embedding(user_ids):
        with tf.control_dependencies(check_ids(user_ids, num_users, "user_id")):
            return {"embedding": module.query_tower(user_ids)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="item_id")])
    def item_embedding(item_ids):
        with tf.control_dependencies(check_ids(item_ids, num_items, "item_id")):
            return {"embedding": module.item_tower(item_ids)}

    module.query_embedding = query_embedding
    module.item_embedding = item_embedding
    signatures = {"serving_default": module.serve, "query_embedding": query_embedding, "item_embedding": item_embedding}
    if corpus.user_keys is not None and corpus.item_keys is not None:
        signatures["serving_keys"] = _add_key_signatures(module, corpus, vocabulary_dir, top_k)
    return module, signatures


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
           checkpoint: str = "") -> str:
    """Writes the next version <export_dir>/<n>/ (export_dir defaults to <model_dir>/export); returns its path.

    Written whole or not at all (data.atomic.write_new_version); older versions are never touched. Raises
    ValueError for a bad k or index.
    """
    import tensorflow as tf

    if index not in INDEXES:
        raise ValueError(f"index {index!r}: expected one of {', '.join(INDEXES)}")
    if not 1 <= k <= corpus.num_items:
        raise ValueError(f"export top-K k={k} must be between 1 and the corpus size {corpus.num_items}")
    metadata = {
        "k": k,
        "index": index,
        "num_items": corpus.num_items,
        "num_users": corpus.num_users,
        "model_dir": os.path.abspath(model_dir),
        "checkpoint": checkpoint,
    }

    def write(saved_model_dir: str) -> None:
        # Vocabularies are read at save time and copied into the SavedModel's assets/.
        with tempfile.TemporaryDirectory(prefix="vocabulary-") as vocabulary_dir:
            module, signatures = _serving_module(model, corpus, k, index, vocabulary_dir)
            tf.saved_model.save(module, saved_model_dir, signatures=signatures)
        os.makedirs(os.path.join(saved_model_dir, "assets.extra"), exist_ok=True)
        with open(os.path.join(saved_model_dir, METADATA), "w") as file:
            json.dump({**metadata, "has_vocabulary": "serving_keys" in signatures}, file, indent=2)

    return atomic.write_new_version(export_dir or os.path.join(model_dir, "export"), write)


def export_from_model_dir(model_dir: str, export_dir: str = "", k: int = 100, index: str = "brute_force"):
    """Exports the newest checkpoint of a run: what the trainer calls at the end, whatever its strategy.

    The model is rebuilt on one device from config.json, so mirrored or parameter-server-sharded training
    exports the same plain SavedModel. Returns (version path, checkpoint step). Raises FileNotFoundError /
    ValueError with the reason.
    """
    from trainers import run_dir

    restored = run_dir.restore_model(model_dir)
    path = export(restored.model, restored.corpus, model_dir, export_dir, k, index, restored.checkpoint)
    return path, restored.step


def export_after_training(model_dir: str, k: int):
    """The trainer's --export: prints and returns (version path, step), or exits with the command that retries
    it (the run's checkpoints are kept either way)."""
    import tensorflow as tf

    try:
        path, step = export_from_model_dir(model_dir, k=k)
    except (OSError, ValueError, tf.errors.OpError) as error:
        sys.exit(f"training finished and its checkpoints are kept, but the export failed: {error}. Retry with "
                 f"`python -m trainers.export --model_dir={model_dir} --k={k}`.")
    print(f"exported step {step} to {path}  (python -m trainers.retrieve --export_dir {path} --user_id ...)",
          flush=True)
    return path, step


FLAGS = flags.FLAGS


def _define_flags():
    """Only when run as a command: the trainer imports this module and owns --model_dir itself."""
    flags.DEFINE_string("model_dir", None, "A trainers.train run directory (config.json + checkpoints/).")
    flags.DEFINE_string("export_dir", "", "Where versions go; default <model_dir>/export.")
    flags.DEFINE_integer("k", 100, "Items the serving signature returns per query.", lower_bound=1)
    flags.DEFINE_enum("index", "brute_force", list(INDEXES), "Top-K index inside the SavedModel.")


def main(argv):
    cli.check_arguments(argv, "model_dir")
    try:
        path, step = export_from_model_dir(FLAGS.model_dir, FLAGS.export_dir, FLAGS.k, FLAGS.index)
    except (OSError, ValueError) as error:
        raise app.UsageError(f"--model_dir={FLAGS.model_dir} --k={FLAGS.k}: {error}") from None
    print(f"exported step {step} to {path}", flush=True)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
