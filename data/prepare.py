"""Prepares an interaction log of one's own for training: `python -m data.prepare --input ... --output_dir ...`.

    log files (CSV / TFRecord, a glob) + schema
      -> read and validate every record (data.readers)
      -> per-user train / eval split (data.splits): no interaction in both
      -> item ids by descending *training* count (data.vocabulary): id 0 = most frequent, item_counts.npy
         non-increasing as the log-uniform sampler assumes; items seen fewer than --min_item_count times in
         train (items seen only in eval included) share one OOV id, ranked by their summed count
      -> user ids by descending training count; feature tables by id (data.features)
      -> a prepared corpus directory (data.corpus), written under a staging name and renamed when complete

Eval interactions whose item fell into the OOV bucket are dropped (a recommender cannot retrieve "some rare
item"); metadata.json counts them (eval_dropped_oov). The ranking's ties are broken by key, so the result does
not depend on the order of rows or files.

This module's `main` is a thin command over `prepare`; like trainers/, it is the place that reads flags.
"""

import dataclasses
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional

import numpy as np

from data import corpus, features, readers, records, splits, vocabulary
from data.readers import DataError
from data.schema import Schema, SchemaError

NUM_SHARDS = 4


@dataclasses.dataclass
class Summary:
    """What a prepare run read and wrote."""

    output_dir: str
    num_rows_read: int
    num_items: int
    num_users: int
    num_train: int
    num_eval: int
    oov_item_id: Optional[int]
    num_items_folded: int
    eval_dropped_oov: int
    bad_records: readers.BadRecords
    items_without_features: Dict[str, int]

    def report(self) -> str:
        lines = [
            f"prepared {self.output_dir}: {self.num_items} items, {self.num_users} users, "
            f"{self.num_train} train and {self.num_eval} eval interactions (from {self.num_rows_read} rows)"
        ]
        if self.oov_item_id is not None:
            lines.append(
                f"{self.num_items_folded} rare items share OOV id {self.oov_item_id}; "
                f"{self.eval_dropped_oov} eval interactions with an OOV item dropped"
            )
        for column, missing in sorted(self.items_without_features.items()):
            if missing:
                lines.append(f"feature {column!r}: {missing} ids have no value")
        if self.bad_records.count:
            lines.append(f"skipped {self.bad_records.count} bad records, the first ones:")
            lines.extend(f"  {message}" for message in self.bad_records.messages)
        return "\n".join(lines)


def prepare(
    input_pattern: str,
    schema: Schema,
    output_dir: str,
    *,
    file_format: str = "csv",
    item_features_input: Optional[str] = None,
    user_features_input: Optional[str] = None,
    split: str = "last",
    eval_per_user: int = 1,
    seed: int = 0,
    min_item_count: int = 1,
    num_shards: int = NUM_SHARDS,
    skip_bad_records: bool = False,
    overwrite: bool = False,
    description: str = "",
) -> Summary:
    """Reads, validates, splits and writes a prepared corpus to output_dir (see the module docstring).

    item_features_input / user_features_input: optional side files (same format and delimiter as the log)
    keyed by the schema's item / user column and holding its feature columns; without them the feature
    columns are read from the log itself (the first row of each item or user).
    Raises DataError (bad input), SchemaError, or FileExistsError; output_dir is then left as it was.
    """
    if os.path.exists(output_dir) and not (overwrite and os.path.isdir(output_dir)):
        raise FileExistsError(f"{output_dir} exists; choose a new --output_dir or pass --overwrite")
    if split not in splits.METHODS or eval_per_user < 1 or min_item_count < 1 or num_shards < 1:
        raise ValueError(
            f"split={split!r} (expected {' or '.join(splits.METHODS)}), eval_per_user={eval_per_user}, "
            f"min_item_count={min_item_count}, num_shards={num_shards} (expected >= 1)"
        )
    log = readers.read_log(
        input_pattern,
        schema,
        file_format,
        skip_bad_records,
        item_features_in_log=not item_features_input,
        user_features_in_log=not user_features_input,
    )
    item_rows, user_rows = log.item_features, log.user_features
    if item_features_input and schema.item_feature_columns:
        item_rows = readers.read_features(
            item_features_input, schema.item_column, schema.item_feature_columns, schema, file_format,
            skip_bad_records, log.bad_records,
        )
    if user_features_input and schema.user_feature_columns:
        user_rows = readers.read_features(
            user_features_input, schema.user_column, schema.user_feature_columns, schema, file_format,
            skip_bad_records, log.bad_records,
        )

    user_keys, user_code = _codes(log.user_keys)
    item_keys, item_code = _codes(log.item_keys)
    is_eval = splits.held_out(user_code, log.timestamps, split, eval_per_user, seed)
    train_item_counts = np.bincount(item_code[~is_eval], minlength=len(item_keys))
    try:
        items, item_id_of = vocabulary.build(item_keys, train_item_counts, min_item_count)
    except ValueError as error:
        raise DataError(f"--input {input_pattern}: {error}") from None
    users, user_id_of = vocabulary.build(user_keys, np.bincount(user_code[~is_eval], minlength=len(user_keys)), 0)
    item_id, user_id = item_id_of[item_code], user_id_of[user_code]
    dropped = is_eval & (item_id == items.oov_id) if items.oov_id is not None else np.zeros_like(is_eval)
    if not (is_eval & ~dropped).any():
        raise DataError(
            f"--input {input_pattern}: no eval interactions: no user has more than eval_per_user={eval_per_user} "
            f"interactions{' with a held-out item seen in training' if dropped.any() else ''}"
        )
    columns = {"user_id": user_id, "item_id": item_id, "timestamp": log.timestamps, "weight": log.weights}

    tables, feature_metadata, without = {"item": {}, "user": {}}, {"item": {}, "user": {}}, {}
    feature_vocabularies = {"item": {}, "user": {}}
    for kind, rows, keys, names in (
        ("item", item_rows, items.keys, schema.item_feature_columns),
        ("user", user_rows, users.keys, schema.user_feature_columns),
    ):
        for number, column in enumerate(sorted(names)):
            table, feature_vocabulary, missing = features.build(rows, keys, column)
            tables[kind][column], feature_vocabularies[kind][column] = table, feature_vocabulary
            feature_metadata[kind][column] = {
                "vocabulary": f"{kind}_feature-{number}.tsv",
                "vocabulary_size": len(feature_vocabulary),
                "max_values": int(table.shape[1]),
            }
            without[f"{kind} {column}"] = missing

    def write(staging: str) -> None:
        for split_name, mask in (("train", ~is_eval), ("eval", is_eval & ~dropped)):
            split_columns = {name: None if values is None else values[mask] for name, values in columns.items()}
            records.write_interactions(staging, split_name, split_columns, num_shards)
        np.save(os.path.join(staging, "item_counts.npy"), items.counts.astype(np.int64))
        vocabulary.write_tsv(os.path.join(staging, corpus.ITEM_VOCABULARY), items)
        vocabulary.write_tsv(os.path.join(staging, corpus.USER_VOCABULARY), users, with_counts=False)
        for kind in ("item", "user"):
            if tables[kind]:
                features.write(staging, kind, tables[kind], feature_vocabularies[kind])
        corpus.write_metadata(
            staging,
            num_items=len(items),
            num_users=len(users),
            num_train=int((~is_eval).sum()),
            num_eval=int((is_eval & ~dropped).sum()),
            description=description or f"prepared from {input_pattern}",
            source_files=log.files,
            schema=dataclasses.asdict(schema),
            split=split,
            eval_per_user=eval_per_user,
            seed=seed,
            min_item_count=min_item_count,
            oov_item_id=items.oov_id,
            eval_dropped_oov=int(dropped.sum()),
            num_bad_records=log.bad_records.count,
            item_features=feature_metadata["item"],
            user_features=feature_metadata["user"],
        )

    write_atomically(output_dir, write, overwrite)
    return Summary(
        output_dir=output_dir,
        num_rows_read=len(log),
        num_items=len(items),
        num_users=len(users),
        num_train=int((~is_eval).sum()),
        num_eval=int((is_eval & ~dropped).sum()),
        oov_item_id=items.oov_id,
        num_items_folded=int((train_item_counts < min_item_count).sum()),
        eval_dropped_oov=int(dropped.sum()),
        bad_records=log.bad_records,
        items_without_features=without,
    )


def write_atomically(output_dir: str, write, overwrite: bool = False) -> None:
    """Calls write(staging_dir) and renames the staging dir to output_dir only when it returns.

    A failure leaves output_dir as it was (absent, or the previous corpus under overwrite) and no staging dir.
    """
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.staging-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make the corpus private to its writer
    try:
        write(staging)
        if os.path.exists(output_dir):
            if not overwrite:
                raise FileExistsError(f"{output_dir} appeared while preparing; pass --overwrite to replace it")
            previous = staging + ".previous"
            os.rename(output_dir, previous)
            os.rename(staging, output_dir)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.rename(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _codes(keys: List[str]):
    """(distinct keys in order of first appearance, code [n] int64 of each key)."""
    index: Dict[str, int] = {}
    code = np.fromiter((index.setdefault(key, len(index)) for key in keys), np.int64, len(keys))
    return list(index), code


def _define_flags():
    from absl import flags

    flags.DEFINE_string("input", None, "Interaction log: a file, a glob, or several joined by commas.")
    flags.DEFINE_enum("format", "csv", list(readers.FORMATS), "File format of --input (and the feature files).")
    flags.DEFINE_string("output_dir", None, "The prepared corpus directory to create (for trainers.train --data).")
    flags.DEFINE_string("schema", None, "A JSON schema file (keys as the schema flags below); flags override it.")
    flags.DEFINE_string("user_column", None, "Column of the user key.")
    flags.DEFINE_string("item_column", None, "Column of the item key.")
    flags.DEFINE_string("timestamp_column", None, "Column of an integer timestamp (default: file order).")
    flags.DEFINE_string("weight_column", None, "Column of a non-negative interaction weight (written as `weight`).")
    flags.DEFINE_list("item_feature_columns", None, "Categorical item feature columns.")
    flags.DEFINE_list("user_feature_columns", None, "Categorical user feature columns.")
    flags.DEFINE_list("multi_valued_columns", None, "Feature columns holding several values, e.g. genres.")
    flags.DEFINE_string("value_separator", None, "Separator inside multi-valued CSV fields (default '|').")
    flags.DEFINE_string("delimiter", None, r"CSV field delimiter (default ','; '\t' for tab).")
    flags.DEFINE_bool("quoting", None, "CSV fields may be quoted with '\"' (default); --noquoting for plain TSV dumps.")
    flags.DEFINE_string("item_features_input", None, "Side file of item features keyed by the item column.")
    flags.DEFINE_string("user_features_input", None, "Side file of user features keyed by the user column.")
    flags.DEFINE_enum("split", "last", list(splits.METHODS), "Held-out interactions per user: latest or random.")
    flags.DEFINE_integer("eval_per_user", 1, "Interactions held out per user.", lower_bound=1)
    flags.DEFINE_integer("min_item_count", 1, "Items with fewer training interactions share an OOV id.", lower_bound=1)
    flags.DEFINE_integer("num_shards", NUM_SHARDS, "TFRecord shards per split.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of --split=random.")
    flags.DEFINE_bool("skip_bad_records", False, "Count, report and skip malformed records instead of stopping.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir (only once the new one is complete).")


def schema_from_flags(values) -> Schema:
    """The schema of --schema and/or the schema flags (flags win)."""
    delimiter = values.delimiter.replace("\\t", "\t") if values.delimiter is not None else None
    overrides = {
        "user_column": values.user_column,
        "item_column": values.item_column,
        "timestamp_column": values.timestamp_column,
        "weight_column": values.weight_column,
        "item_feature_columns": values.item_feature_columns,
        "user_feature_columns": values.user_feature_columns,
        "multi_valued_columns": values.multi_valued_columns,
        "value_separator": values.value_separator,
        "delimiter": delimiter,
        "quoting": values.quoting,
    }
    if values.schema:
        return Schema.from_json(values.schema, **overrides)
    if not values.user_column or not values.item_column:
        raise SchemaError("give --user_column and --item_column (or a --schema file)")
    return Schema(**{key: value for key, value in overrides.items() if value is not None})


def main(argv):
    from absl import app, flags

    values = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("input", "output_dir"):
        if not getattr(values, name):
            raise app.UsageError(f"--{name} is required")
    try:
        summary = prepare(
            values.input,
            schema_from_flags(values),
            values.output_dir,
            file_format=values.format,
            item_features_input=values.item_features_input,
            user_features_input=values.user_features_input,
            split=values.split,
            eval_per_user=values.eval_per_user,
            seed=values.seed,
            min_item_count=values.min_item_count,
            num_shards=values.num_shards,
            skip_bad_records=values.skip_bad_records,
            overwrite=values.overwrite,
        )
    except (DataError, SchemaError, FileExistsError, ValueError) as error:
        sys.exit(f"data.prepare: {error}")
    print(summary.report())


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
