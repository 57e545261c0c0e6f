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
loading process first (its custom ops). The served tf.Module and its signatures are built in trainers/serving.py.
"""

import contextlib
import gc
import json
import logging
import os
import sys
import tempfile

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from absl import app, flags

from data import atomic
from trainers import cli, serving
from trainers.run_config import EvaluationConfig

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


def export(model, corpus, model_dir: str, export_dir: str = "", k: int = EvaluationConfig.export_top_k,
           index: str = "brute_force", checkpoint: str = "", user_histories=None) -> str:
    """Writes the next version <export_dir>/<n>/ (export_dir defaults to <model_dir>/export); returns its path.

    user_histories: [num_users, L] every training user's latest history, for a model whose query reads one.
    Written whole or not at all (data.atomic.write_new_version); older versions are never touched; the module
    and its signatures are trainers.serving's. Raises ValueError for a bad k or index.
    """
    if index not in INDEXES:
        raise ValueError(f"index {index!r}: expected one of {', '.join(INDEXES)}")
    num_retrievable = corpus.num_items - (corpus.oov_item_id is not None)
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
        "oov_item_id": corpus.oov_item_id,
        "query_features": list(getattr(query_tower, "query_features", ("user_id",))),
        "context_features": context_features,
        # The corpus's own context columns the model reads, and their kinds (trainers.retrieve --context).
        "context_columns": [{"name": column.name, "kind": column.kind} for column in corpus.context_columns
                            if column.name in context_features],
    }

    def write(saved_model_dir: str) -> None:
        # Vocabularies are read at save time and copied into the SavedModel's assets/.
        with tempfile.TemporaryDirectory(prefix="vocabulary-") as vocabulary_dir:
            module, signatures = serving.serving_module(model, corpus, k, index, vocabulary_dir, user_histories)
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


def export_from_model_dir(model_dir: str, export_dir: str = "", k: int = EvaluationConfig.export_top_k,
                          index: str = "brute_force", best: bool = False, data=None):
    """Exports the newest checkpoint of a run (best: its --keep_best checkpoint): what the trainer calls at the end,
    whatever its strategy.

    The model is rebuilt on one device from config.json, so mirrored or parameter-server-sharded training
    exports the same plain SavedModel. data: the run's trainers.run_data.RunData when the caller holds it (the
    trainer: its training split is not read again); None: loaded from config.json. Returns (version path,
    checkpoint step). Raises FileNotFoundError / ValueError with the reason.
    """
    from trainers import restored_run, training_input

    restored = restored_run.restore_model(model_dir, best, data)
    histories = None
    if "history" in restored.config.model.query_features:
        histories = training_input.latest_histories(restored.data)
    path = export(restored.model, restored.corpus, model_dir, export_dir, k, index, restored.checkpoint, histories)
    return path, restored.step


def export_after_training(model_dir: str, k: int, best: bool = False, data=None):
    """The trainer's --export (best: of the --keep_best checkpoint; data: the run's RunData): prints and returns
    (version path, step), or exits with the command that retries it (the run's checkpoints are kept either way)."""
    # The trained model is unreachable by now but held in reference cycles (Keras layers and their callbacks):
    # collected here, its tables (7.68 GB with the Adam slots at 10M x 64) are free for the exported model to
    # reuse, instead of the export adding its own on top (the oneDNN allocator keeps what it once held).
    gc.collect()
    try:
        path, step = export_from_model_dir(model_dir, k=k, best=best, data=data)
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
    # The trainer's --export_top_k (trainers.run_config.EvaluationConfig), so both export the same K by default.
    flags.DEFINE_integer("k", EvaluationConfig.export_top_k, "Items the serving signature returns per query.",
                         lower_bound=1)
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
