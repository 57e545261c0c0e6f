"""Top-K items for one user from an exported SavedModel: `python -m trainers.retrieve --export_dir ... --user_id 42`,
or for anyone from their recent items: `... --history key1,key2,... [--context hour_of_day=20,device=mobile]`.

Prints one line per item: rank, item id, the item's own key (when the corpus has a vocabulary) and score. With a
vocabulary, --user_id is the user's own key; otherwise the dense user id. --history lists item keys (the item ids
as text for the built-in corpus), most recent first; keys the model does not know are ignored, and an empty
--history= asks for the model's answer to an empty history (a history model's export only). --export_dir is one
version (<model_dir>/export/3) or the directory of versions, whose newest is used. --output_json=PATH also writes
the answer as JSON: {"export_dir": the version used, "k", "query": {"user_id": ...} or {"history": [keys],
"context": [name=value]}, "items": [{"rank", "item_id", "item_key" (null without a vocabulary), "score"}]}.

--context gives the context the model reads as name=value pairs: a time feature as an integer, a context column
of the corpus in its own terms (a categorical value, the values of a multi-valued one joined by '|', a number);
omitted ones, values the model does not know and a time feature outside its range (hour_of_day=99) are none. An
item that is not name=value with name one of the model's context features, a time feature that is not an integer
and a numeric one that is not a finite float32 number are refused in one line.
"""

import json
import math
import os
import re

import retrieval  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from absl import app, flags

from data import atomic, context
from trainers import cli, export

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "An exported version, or the export directory (its newest version).")
flags.DEFINE_string("user_id", None, "The user: its own key when the corpus has a vocabulary, else the dense id.")
flags.DEFINE_integer("k", 10, "Items to print, at most the exported K.", lower_bound=1)
flags.DEFINE_string("history", None, "The user's recent item keys, most recent first, comma-separated (instead of "
                    "--user_id; an export of a history model).")
flags.DEFINE_list("context", [], "The context the model reads, as name=value: hour_of_day=0..23, day_of_week=0..6 "
                  "(Monday 0), the corpus's context columns by value (multi-valued: values joined by '|'; numeric: a "
                  "number); omitted ones and unknown values are none.")
flags.DEFINE_string("output_json", None, "Also write the answer to this JSON file (the module docstring).")


def resolve_version(export_dir: str) -> str:
    """The version directory to load: export_dir itself, or its highest-numbered version."""
    if not os.path.isdir(export_dir):
        raise ValueError("no such directory")
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    versions = [int(name) for name in os.listdir(export_dir) if name.isdigit()]
    if not versions:
        raise ValueError("neither a SavedModel nor a directory of numbered versions (<n>/saved_model.pb)")
    return os.path.join(export_dir, str(max(versions)))


def load_export(version_dir: str):
    """(loaded SavedModel, metadata dict); ValueError with the reason when it is not a complete export."""
    import tensorflow as tf

    metadata_path = os.path.join(version_dir, export.METADATA)
    try:
        with open(metadata_path) as file:
            metadata = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{version_dir}: not an export of trainers.export ({metadata_path}: {error})") from None
    if metadata.get("index") == "scann":
        import scann  # noqa: F401  (registers ScaNN's TensorFlow ops before loading)
    try:
        loaded = tf.saved_model.load(version_dir)
    except (OSError, ValueError, tf.errors.OpError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{version_dir}: cannot load the SavedModel ({first_line})") from None
    return loaded, metadata


def _check_k(metadata, k: int) -> None:
    if k > metadata["k"]:
        raise ValueError(f"--k={k} exceeds the {metadata['k']} items per query this version was exported with")


def _rows(outputs, k: int, keys):
    ids = outputs["item_ids"].numpy()[0]
    scores = outputs["scores"].numpy()[0]
    return [(rank + 1, int(ids[rank]), keys[rank], float(scores[rank])) for rank in range(k)]


MULTI_VALUE_SEPARATOR = "|"  # between the values of a multi-valued context column in --context


def parse_context(pairs, names, kinds=None) -> dict:
    """{name: [value] or [[values]]} of --context's name=value pairs, for the context features `names` the model
    reads: an int for a time feature, and by kinds ({name: data.context kind} of the corpus's context columns) a
    string (categorical), a list of strings (multi-valued, joined by '|'), a float (numeric). The ones not given
    are none (-1, "", [""], NaN). ValueError naming the bad pair and what was expected."""
    kinds = kinds or {}
    values = {name: _none(kinds.get(name)) for name in names}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        name = name.strip()
        if not equals or name not in values:
            raise ValueError(f"--context {pair}: expected name=value with name one of {', '.join(names) or '(none)'}")
        values[name] = _context_value(pair, kinds.get(name), value.strip())
    return values


def _none(kind):
    return {None: [-1], context.CATEGORICAL: [""], context.MULTI: [[""]], context.NUMERIC: [math.nan]}[kind]


def _context_value(pair: str, kind, value: str):
    """The serving input [value] of one --context pair (kind None: a time feature)."""
    if kind == context.CATEGORICAL:
        return [value]
    if kind == context.MULTI:
        return [[part.strip() for part in value.split(MULTI_VALUE_SEPARATOR)]]
    if kind == context.NUMERIC:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or abs(number) > context.MAX_NUMBER:
            raise ValueError(f"--context {pair}: expected a finite number for the numeric context column "
                             f"(at most {context.MAX_NUMBER:.6g} in magnitude, a float32)")
        return [number]
    if not re.fullmatch(r"-?[0-9]+", value):
        raise ValueError(f"--context {pair}: expected name=integer for the time feature")
    number = int(value)
    # Out of the feature's range is none, inside the SavedModel; beyond int64 it could not even be sent.
    return [number if -2**63 <= number < 2**63 else -1]


def retrieve_by_history(loaded, metadata, history_keys, context_pairs, k: int):
    """[(rank, item id, item key or None, score)] of the top k for a history of item keys (most recent first)."""
    import tensorflow as tf

    _check_k(metadata, k)
    if not metadata.get("has_history"):
        raise ValueError(f"--history: this export's model does not read a history (its query features: "
                         f"{','.join(metadata.get('query_features', ['user_id']))}); use --user_id")
    kinds = {column["name"]: column["kind"] for column in metadata.get("context_columns", [])}
    values = parse_context(context_pairs, metadata.get("context_features", []), kinds)
    dtypes = {None: tf.int64, context.NUMERIC: tf.float32}
    inputs = {name: tf.constant(value, dtypes.get(kinds.get(name), tf.string)) for name, value in values.items()}
    history = tf.constant([list(history_keys) or [""]], tf.string)  # [1, n]; "" pads
    outputs = loaded.signatures["serving_history"](history=history, **inputs)
    keys = [key.decode("utf-8") for key in outputs["item_keys"].numpy()[0]]
    return _rows(outputs, k, keys if metadata["has_vocabulary"] else [None] * len(keys))


def retrieve(loaded, metadata, user: str, k: int):
    """[(rank, item id, item key or None, score)] of the top k for `user` (a key, or a dense id as text)."""
    import tensorflow as tf

    _check_k(metadata, k)
    if metadata["has_vocabulary"]:
        # The vocabulary asset is the user list; check it here for a clear message instead of the graph's assert.
        user_id = loaded.user_ids_of_keys(tf.constant([user])).numpy()[0]
        if user_id < 0:
            raise ValueError(f"--user_id={user}: not in the user vocabulary ({metadata['num_users']} users)")
        outputs = loaded.signatures["serving_keys"](user_key=tf.constant([user]))
        keys = [key.decode("utf-8") for key in outputs["item_keys"].numpy()[0]]
    else:
        try:
            user_id = int(user)
        except ValueError:
            raise ValueError(f"--user_id={user}: expected an integer user id (this corpus has no vocabulary)") from None
        if not 0 <= user_id < metadata["num_users"]:
            raise ValueError(f"--user_id={user}: expected a user id in [0, {metadata['num_users']})")
        outputs = loaded.signatures["serving_default"](user_id=tf.constant([user_id], tf.int64))
        keys = [None] * metadata["k"]
    return _rows(outputs, k, keys)


def main(argv):
    cli.check_arguments(argv, "export_dir")
    if (FLAGS.user_id is None) == (FLAGS.history is None):
        raise app.UsageError("give --user_id or --history (one of them)")
    try:
        version_dir = resolve_version(FLAGS.export_dir)
        loaded, metadata = load_export(version_dir)
    except ValueError as error:
        raise app.UsageError(f"--export_dir={FLAGS.export_dir}: {error}") from None
    if FLAGS.k > metadata["num_items"]:
        raise app.UsageError(f"--k={FLAGS.k} exceeds the corpus size {metadata['num_items']}")
    history_keys = None if FLAGS.history is None else [key.strip() for key in FLAGS.history.split(",") if key.strip()]
    try:
        if history_keys is not None:
            rows = retrieve_by_history(loaded, metadata, history_keys, FLAGS.context, FLAGS.k)
        else:
            rows = retrieve(loaded, metadata, FLAGS.user_id, FLAGS.k)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    if FLAGS.output_json:
        query = {"user_id": FLAGS.user_id} if history_keys is None else {"history": history_keys,
                                                                         "context": FLAGS.context}
        atomic.write_json_atomically(FLAGS.output_json, answer_document(version_dir, FLAGS.k, query, rows))
    with_keys = metadata["has_vocabulary"]
    print(f"{'rank':>4}  {'item id':>8}  {'item key':<24}  score" if with_keys else f"{'rank':>4}  {'item id':>8}  score")
    for rank, item_id, key, score in rows:
        print(f"{rank:>4}  {item_id:>8}  {key:<24}  {score:.4f}" if with_keys else f"{rank:>4}  {item_id:>8}  {score:.4f}")


def answer_document(version_dir: str, k: int, query, rows):
    """--output_json's document (the module docstring): the version used, the query, and the rows retrieve or
    retrieve_by_history returned."""
    items = [{"rank": rank, "item_id": item_id, "item_key": key, "score": score} for rank, item_id, key, score in rows]
    return {"export_dir": version_dir, "k": k, "query": query, "items": items}


if __name__ == "__main__":
    cli.run(main)
