"""Prepares an interaction log of one's own for training: `python -m data.prepare --input ... --output_dir ...`.

    log files (CSV / TFRecord, a glob) + schema
      -> read and validate every record (data.readers)
      -> train / eval split (data.splits): per user (no interaction in both), or as given by a held-out file
         (--eval_input, same schema and format; its feature columns are not read)
      -> with --validation_per_user=N, of each user's training rows the last N by time as the validation split
         (data.splits.validation: model selection reads it, so the eval rows stay the test set, read once)
      -> item ids by descending *training* count (data.vocabulary): id 0 = most frequent, item_counts.npy
         non-increasing as the log-uniform sampler assumes; items seen fewer than --min_item_count times in
         train (items seen only in eval included) share one OOV id, ranked by their summed count
      -> user ids by descending training count, for the users with training rows; feature tables by id
         (data.features)
      -> a prepared corpus directory (data.corpus), written under a staging name and renamed when complete

Each interaction's history (the user's earlier training items, for a history query tower) is by default not
written: it is a window of the training split sorted by (user, time), which the trainer sorts once when it loads
the corpus (data.history.history_log) and reads per batch (data.pipeline.QueryInputs), so one prepared corpus
serves any --history_length. With --history_length=N each record carries its history (at most N items) and
latest_history-*.tfrecord every user's latest (data.records): the trainer then streams the records and never
reads the training split whole, the way for logs beyond one machine's memory. Timestamps are the time order of
histories (same-second rows never see each other); without --timestamp_column, file order is.

--runner=beam computes the same corpus with an Apache Beam pipeline (data.beam_prepare).

Eval interactions that the model cannot be asked about are dropped and counted by reason: an item never in
training or rarer than --min_item_count (its id is the OOV bucket: a recommender cannot retrieve "some rare
item"), or a user never in training (possible only with --eval_input). The ranking's ties are broken by key, so
the result does not depend on the order of rows or files.

Every row read is accounted for, in the report and in metadata.json's "rows":
    {"read": {"input": n[, "eval_input": m]}, "bad_records": {"input": b[, "eval_input": c]},
     "train": t, "eval": e, "eval_dropped": {"unseen_item": .., "rare_item": .., "unseen_user": ..}}
with sum(read) == sum(bad_records) + train + eval + sum(eval_dropped); with a validation split also
"validation": v, "validation_dropped": {reason: ..} (validation rows are dropped for the reasons eval rows are),
and the sum adds v + sum(validation_dropped). A row is a record: a non-blank CSV line
after the header, or a TFRecord. Bad records of the feature side files are counted apart (they hold no
interactions).

Logged negatives (--negative_column: item keys shown with the interaction and not chosen) are mapped to item ids
with the training vocabulary and written as each record's negative_ids. A key that is no training item of its
own (never an interaction's item: "unseen_item"; in the OOV bucket: "oov_item") and one equal to the row's own
item ("own_item") is dropped from the row's list; every key of a written row is counted in metadata.json's
"logged_negatives": {"column", "read", "kept", "dropped": {reason: keys}, "max_negatives"} with
read == kept + sum(dropped), and "max_negatives" (top level, the parsed width) is the longest kept list. The
keys of eval rows dropped as a whole go with their row (counted there).

Context columns (--context_columns, categorical or multi-valued; --numeric_context_columns) are written into each
record under the column's name (data.context): value ids of a vocabulary of the training rows (`context-<name>.tsv`;
a value only held-out rows have is none, -1, and counted), numbers standardised with the training rows' mean and
standard deviation. metadata.json's "context_columns" lists them. A numeric field that is empty or no finite
number, or one beyond float32, is a bad record; a numeric column with one value in every training row is refused.

This module's `main` is a thin command over `prepare`; like trainers/, it is the place that reads flags.
"""

import dataclasses
import itertools
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from data import atomic, corpus, features, history, readers, records, splits, vocabulary
from data import context as context_lib
from data.readers import DataError
from data.schema import Schema, SchemaError

NUM_SHARDS = 4
RUNNERS = ("in_process", "beam")
# Why an eval interaction is dropped, in the order a row is checked (a row counts once, for the first reason).
EVAL_DROP_REASONS = ("unseen_item", "rare_item", "unseen_user")
# Why a logged negative is dropped from its row, in the order a key is checked.
NEGATIVE_DROP_REASONS = ("unseen_item", "oov_item", "own_item")
_NEGATIVE_DROP_TEXT = {"unseen_item": "never an item in training", "oov_item": "in the OOV bucket",
                       "own_item": "the row's own item"}
_DROP_REASON_TEXT = {
    "unseen_item": "item never in training",
    "rare_item": "item below --min_item_count (OOV)",
    "unseen_user": "user never in training",
}


@dataclasses.dataclass
class RowCounts:
    """Where every row read went: sum(read) == sum(bad_records) + train + eval + sum(eval_dropped)
    [+ validation + sum(validation_dropped), with a validation split]."""

    read: Dict[str, int]  # {"input": rows[, "eval_input": rows]}
    bad_records: Dict[str, int]  # the same keys: rows skipped under skip_bad_records
    train: int
    eval: int
    eval_dropped: Dict[str, int]  # {reason in EVAL_DROP_REASONS: rows}
    # With --validation_per_user > 0 (else None, and absent from metadata.json, as a corpus of before has them):
    validation: Optional[int] = None
    validation_dropped: Optional[Dict[str, int]] = None  # {reason in EVAL_DROP_REASONS: rows}, as eval's

    def metadata(self) -> Dict:
        """metadata.json's "rows": every count, the validation ones only with a validation split."""
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}

    def report(self) -> str:
        """One line: the rows read, and where each went."""
        sources = ""
        if len(self.read) > 1:
            sources = " (" + ", ".join(f"{count} --{name}" for name, count in self.read.items()) + ")"
        validation = ""
        if self.validation is not None:
            validation = (f" + {self.validation} validation + {sum(self.validation_dropped.values())} validation "
                          f"dropped ({_reasons(self.validation_dropped)})")
        return (
            f"rows: {sum(self.read.values())} read{sources} = {self.train} train + {self.eval} eval + "
            f"{sum(self.bad_records.values())} bad records skipped + {sum(self.eval_dropped.values())} eval dropped "
            f"({_reasons(self.eval_dropped)}){validation}"
        )


def _reasons(eval_dropped: Dict[str, int]) -> str:
    return ", ".join(f"{count} {_DROP_REASON_TEXT[reason]}" for reason, count in eval_dropped.items())


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
    eval_dropped_oov: int  # eval rows whose item is the OOV bucket: unseen or rare
    bad_records: readers.BadRecords  # of --input and --eval_input
    items_without_features: Dict[str, int]
    rows: RowCounts
    feature_bad_records: readers.BadRecords  # of the feature side files
    logged_negatives: Optional[Dict] = None  # metadata.json's "logged_negatives", with a negative column
    context_columns: Tuple[context_lib.ContextColumn, ...] = ()
    history_length: Optional[int] = None  # N when the records carry their history
    num_validation: int = 0  # rows of the validation split (--validation_per_user), apart from train and eval

    def report(self) -> str:
        validation = f", {self.num_validation} validation" if self.num_validation else ""
        lines = [
            f"prepared {self.output_dir}: {self.num_items} items, {self.num_users} users, "
            f"{self.num_train} train{validation} and {self.num_eval} eval interactions (from {self.num_rows_read} "
            "rows)",
            self.rows.report(),
        ]
        if self.oov_item_id is not None:
            lines.append(
                f"{self.num_items_folded} items with fewer than --min_item_count training rows (items only in eval "
                f"included) share OOV id {self.oov_item_id}"
            )
        if self.logged_negatives is not None:
            counts = self.logged_negatives
            dropped = ", ".join(f"{counts['dropped'][reason]} {_NEGATIVE_DROP_TEXT[reason]}"
                                for reason in NEGATIVE_DROP_REASONS)
            lines.append(
                f"logged negatives ({counts['column']!r}): {counts['read']} read = {counts['kept']} kept + "
                f"{sum(counts['dropped'].values())} dropped ({dropped}); up to {counts['max_negatives']} per row"
            )
        lines.extend(context_lib.report(self.context_columns))
        if self.history_length is not None:
            lines.append(f"histories written: each record's last {self.history_length} earlier training items of "
                         "its user, and every user's latest (latest_history-*.tfrecord)")
        for column, missing in sorted(self.items_without_features.items()):
            if missing:
                lines.append(f"feature {column!r}: {missing} ids have no value")
        for bad, where in ((self.bad_records, ""), (self.feature_bad_records, " in the feature files")):
            if bad.count:
                lines.append(f"skipped {bad.count} bad records{where}, the first ones:")
                lines.extend(f"  {message}" for message in bad.messages)
        return "\n".join(lines)


def prepare(
    input_pattern: str,
    schema: Schema,
    output_dir: str,
    *,
    file_format: str = "csv",
    eval_input: Optional[str] = None,
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
    history_length: Optional[int] = None,
    progress: Optional[readers.Progress] = None,
    validation_per_user: int = 0,
) -> Summary:
    """Reads, validates, splits and writes a prepared corpus to output_dir (see the module docstring).

    eval_input: held-out rows (a file, glob, or several joined by commas) in the log's schema and format; then
    every row of input_pattern is a training row, and split / eval_per_user / seed do not apply.
    item_features_input / user_features_input: optional side files (same format and delimiter as the log)
    keyed by the schema's item / user column and holding its feature columns; without them the feature
    columns are read from the log itself (the first row of each item or user).
    history_length: N to write each record's history (at most N items) and every user's latest one.
    validation_per_user: N > 0 holds out, of each user's training rows, the last N as the validation split
    (validation-*.tfrecord; splits.validation), which is not trained on and not counted in the vocabularies.
    progress: told the rows read of --input and --eval_input as they are read (readers.read_log).
    Raises DataError (bad input), SchemaError, or FileExistsError; output_dir is then left as it was.
    """
    check_arguments(output_dir, overwrite, split, eval_per_user, min_item_count, num_shards, history_length,
                    validation_per_user)
    options = _Options(input_pattern, eval_input, split, eval_per_user, seed, min_item_count, num_shards,
                       history_length, validation_per_user, description)
    logs = _read_logs(input_pattern, schema, file_format, skip_bad_records, eval_input, item_features_input,
                      user_features_input, progress)
    rows = _split_rows(logs, schema, options)
    ids = _training_ids(rows, options)
    held_out = _kept_held_out_rows(logs, rows, ids, options)
    written = _features_written(logs, schema, rows, ids, held_out, options)
    prepared = _Prepared(logs, schema, options, rows, ids, held_out, written)
    atomic.write_atomically(output_dir, prepared.write, overwrite)  # a failure leaves output_dir as it was
    return prepared.summary(output_dir)


@dataclasses.dataclass(frozen=True)
class _Options:
    """prepare's arguments that shape the corpus once the logs are read (see prepare)."""

    input_pattern: str
    eval_input: Optional[str]
    split: str
    eval_per_user: int
    seed: int
    min_item_count: int
    num_shards: int
    history_length: Optional[int]
    validation_per_user: int
    description: str


@dataclasses.dataclass
class _Logs:
    """What prepare read: the log, the held-out log (--eval_input; None without) and the feature rows by key."""

    log: readers.RawLog
    held_out: Optional[readers.RawLog]
    item_rows: readers.FeatureRows  # the log's own, or --item_features_input's
    user_rows: readers.FeatureRows
    feature_bad_records: readers.BadRecords  # of the feature side files

    def by_flag(self) -> Dict[str, readers.RawLog]:
        """{"input": log[, "eval_input": held-out log]}: the logs in the order their rows are joined."""
        return {"input": self.log} if self.held_out is None else {"input": self.log, "eval_input": self.held_out}

    def parts(self) -> List[readers.RawLog]:
        return list(self.by_flag().values())

    def bad_records(self) -> readers.BadRecords:
        """The interaction logs' bad records, merged."""
        return _merged([part.bad_records for part in self.parts()])


@dataclasses.dataclass
class _Rows:
    """Every row of the log, then of the held-out log: [n] columns in codes, and the split each row is in."""

    user_keys: List[str]  # distinct, in order of first appearance
    user_code: np.ndarray  # [n] int64, index into user_keys
    item_keys: List[str]
    item_code: np.ndarray  # [n] int64, index into item_keys
    timestamps: np.ndarray  # [n] int64
    weights: Optional[np.ndarray]  # [n] float32, None without a weight column
    is_eval: np.ndarray  # [n] bool, held out for eval (before the rows of unusable items or users are dropped)
    is_validation: np.ndarray  # [n] bool, likewise for validation
    is_train: np.ndarray  # [n] bool, neither


@dataclasses.dataclass
class _Ids:
    """The training vocabularies (data.vocabulary) and the ids of every row."""

    items: vocabulary.Vocabulary
    users: vocabulary.Vocabulary
    item_id_of: np.ndarray  # [len(item_keys)] id of each item code
    item_id: np.ndarray  # [n] int64
    user_id: np.ndarray  # [n] int64, -1 for a user never in training
    train_item_counts: np.ndarray  # [len(item_keys)] training rows of each item code
    train_user_counts: np.ndarray  # [len(user_keys)]


@dataclasses.dataclass
class _HeldOut:
    """The eval and validation rows written, and where every row read went."""

    kept_eval: np.ndarray  # [n] bool
    kept_validation: np.ndarray  # [n] bool, all False without a validation split
    counts: RowCounts


@dataclasses.dataclass
class _FeaturesWritten:
    """What the records and the side tables carry beyond the ids."""

    negatives: Optional[Tuple[np.ndarray, np.ndarray]]  # (ids [m], lengths [n]) of the kept logged negatives
    logged_negatives: Optional[Dict]  # metadata.json's "logged_negatives", with a negative column
    context: List[context_lib.Built]
    tables: Dict  # {"item" / "user": {column: table}}, see _feature_tables
    vocabularies: Dict  # {"item" / "user": {column: vocabulary}}
    metadata: Dict  # {"item" / "user": {column: metadata}}
    items_without_features: Dict[str, int]  # {"<kind> <column>": ids without a value}
    histories: Optional[Dict[str, np.ndarray]]  # with history_length, see _histories


def _read_logs(input_pattern, schema: Schema, file_format: str, skip_bad_records: bool, eval_input,
               item_features_input, user_features_input, progress) -> _Logs:
    """Reads and validates --input, --eval_input and the feature side files (readers); DataError when bad."""
    log = readers.read_log(
        input_pattern, schema, file_format, skip_bad_records, item_features_in_log=not item_features_input,
        user_features_in_log=not user_features_input, progress=progress,
    )
    held_out_log = None
    if eval_input:
        held_out_log = readers.read_log(
            eval_input, schema, file_format, skip_bad_records, item_features_in_log=False, user_features_in_log=False,
            flag="--eval_input", progress=progress,
        )
    feature_bad_records = readers.BadRecords()

    def feature_rows(path, key_column, feature_columns, flag, of_log):
        """The side file's rows by key when it is given and the schema has such features, else the log's."""
        if not (path and feature_columns):
            return of_log
        return readers.read_features(path, key_column, feature_columns, schema, file_format, skip_bad_records,
                                     feature_bad_records, flag=flag)

    item_rows = feature_rows(item_features_input, schema.item_column, schema.item_feature_columns,
                             "--item_features_input", log.item_features)
    user_rows = feature_rows(user_features_input, schema.user_column, schema.user_feature_columns,
                             "--user_features_input", log.user_features)
    return _Logs(log, held_out_log, item_rows, user_rows, feature_bad_records)


def _split_rows(logs: _Logs, schema: Schema, options: _Options) -> _Rows:
    """The logs' rows joined in codes, and their split (data.splits): the held-out file's rows as given, else per
    user; then, with validation_per_user, each user's last training rows as the validation split."""
    user_keys, user_code = _codes([key for part in logs.parts() for key in part.user_keys])
    item_keys, item_code = _codes([key for part in logs.parts() for key in part.item_keys])
    timestamps, weights = _joined_columns(logs.log, logs.held_out, schema)
    if logs.held_out is not None:
        is_eval = splits.given(len(logs.log), len(logs.held_out))
    else:
        is_eval = splits.held_out(user_code, timestamps, options.split, options.eval_per_user, options.seed)
    is_validation = splits.validation(user_code, timestamps, is_eval, options.validation_per_user)
    return _Rows(user_keys, user_code, item_keys, item_code, timestamps, weights, is_eval, is_validation,
                 is_train=~is_eval & ~is_validation)


def _training_ids(rows: _Rows, options: _Options) -> _Ids:
    """Item and user ids by descending training count (the rare items in one OOV id), and every row's."""
    train_item_counts = np.bincount(rows.item_code[rows.is_train], minlength=len(rows.item_keys))
    train_user_counts = np.bincount(rows.user_code[rows.is_train], minlength=len(rows.user_keys))
    try:
        items, item_id_of = vocabulary.build(rows.item_keys, train_item_counts, options.min_item_count)
    except ValueError as error:
        raise DataError(f"--input {options.input_pattern}: {error}") from None
    users, user_id_of = trained_user_vocabulary(rows.user_keys, train_user_counts)
    return _Ids(items, users, item_id_of, item_id_of[rows.item_code], user_id_of[rows.user_code], train_item_counts,
                train_user_counts)


def _kept_held_out_rows(logs: _Logs, rows: _Rows, ids: _Ids, options: _Options) -> _HeldOut:
    """The eval and validation rows the model can be asked about (eval_drops drops the others, by reason), and
    where every row went. DataError when no eval row is left, or no validation row of a validation split."""
    item_train_count, user_train_count = ids.train_item_counts[rows.item_code], ids.train_user_counts[rows.user_code]
    drops = eval_drops(rows.is_eval, item_train_count, user_train_count, options.min_item_count)
    kept_eval = rows.is_eval & ~np.logical_or.reduce(list(drops.values()))
    eval_dropped = {reason: int(mask.sum()) for reason, mask in drops.items()}
    if not kept_eval.any():
        raise DataError(no_eval_message(options.input_pattern, options.eval_input, options.eval_per_user,
                                        eval_dropped))
    kept_validation, validation_dropped = kept_validation_rows(
        rows.is_validation, item_train_count, user_train_count, options.min_item_count,
        options.validation_per_user, options.input_pattern)
    counts = RowCounts(
        read={name: part.num_records_read for name, part in logs.by_flag().items()},
        bad_records={name: part.bad_records.count for name, part in logs.by_flag().items()},
        train=int(rows.is_train.sum()),
        eval=int(kept_eval.sum()),
        eval_dropped=eval_dropped,
        validation=int(kept_validation.sum()) if options.validation_per_user else None,
        validation_dropped=validation_dropped,
    )
    return _HeldOut(kept_eval, kept_validation, counts)


def _features_written(logs: _Logs, schema: Schema, rows: _Rows, ids: _Ids, held_out: _HeldOut,
                      options: _Options) -> _FeaturesWritten:
    """The logged negatives, context columns, item and user feature tables, and (with history_length) the
    histories of the rows written."""
    kept_held_out = held_out.kept_eval | held_out.kept_validation  # the written rows that are not trained on
    negatives, logged_negatives = _logged_negatives(logs, schema, rows, ids, rows.is_train | kept_held_out)
    context = _context_columns(schema, logs.parts(), rows.is_train, kept_held_out)
    tables = _feature_tables(schema, {"item": (logs.item_rows, ids.items.keys),
                                      "user": (logs.user_rows, ids.users.keys)})
    histories = None
    if options.history_length is not None:
        histories = _histories(_interaction_columns(rows, ids), rows.is_train, held_out.kept_eval, len(ids.users),
                               options.history_length, held_out.kept_validation)
    return _FeaturesWritten(negatives, logged_negatives, context, *tables, histories)


def _logged_negatives(logs: _Logs, schema: Schema, rows: _Rows, ids: _Ids, written: np.ndarray):
    """(negatives, counts) of _negative_ids over the rows written ([n] bool), counts naming the column; (None,
    None) without a negative column."""
    if not schema.negative_column:
        return None, None
    negatives, counts = _negative_ids(
        [key for part in logs.parts() for key in part.negative_keys],
        np.concatenate([part.negative_lengths for part in logs.parts()]),
        rows.item_keys, ids.item_id_of, ids.items.oov_id, ids.item_id, written,
    )
    counts["column"] = schema.negative_column
    return negatives, counts


def _interaction_columns(rows: _Rows, ids: _Ids) -> Dict[str, Optional[np.ndarray]]:
    """{"user_id", "item_id", "timestamp", "weight" (None without a weight column)}: [n] each, every row's."""
    return {"user_id": ids.user_id, "item_id": ids.item_id, "timestamp": rows.timestamps, "weight": rows.weights}


@dataclasses.dataclass
class _Prepared:
    """A corpus computed in memory: what prepare writes (write) and reports (summary)."""

    logs: _Logs
    schema: Schema
    options: _Options
    rows: _Rows
    ids: _Ids
    held_out: _HeldOut
    written: _FeaturesWritten

    def write(self, staging: str) -> None:
        """Every file of the corpus into the directory staging (data.corpus's layout)."""
        self._write_records(staging)
        self._write_vocabularies(staging)
        corpus.write_metadata(staging, **self._metadata())

    def _written_splits(self) -> Tuple[Tuple[str, np.ndarray], ...]:
        """(split name, [n] bool) of each split written: train, eval[, validation]."""
        held_out = self.held_out
        validation = (("validation", held_out.kept_validation),) if self.options.validation_per_user else ()
        return (("train", self.rows.is_train), ("eval", held_out.kept_eval)) + validation

    def _write_records(self, staging: str) -> None:
        """<split>-*.tfrecord of each written split, and with histories latest_history-*.tfrecord (data.records)."""
        columns, written, num_shards = _interaction_columns(self.rows, self.ids), self.written, self.options.num_shards
        for split_name, mask in self._written_splits():
            split_columns = {name: None if values is None else values[mask] for name, values in columns.items()}
            split_context = [(part.column, part.values[mask]) for part in written.context]
            histories = None if written.histories is None else written.histories[split_name]
            records.write_interactions(staging, split_name, split_columns, num_shards, _rows(written.negatives, mask),
                                       split_context, histories)
        if written.histories is not None:
            records.write_latest_histories(staging, written.histories["latest"], num_shards)

    def _write_vocabularies(self, staging: str) -> None:
        """item_counts.npy, the item and user vocabularies, the context columns' and the feature tables'."""
        items, written = self.ids.items, self.written
        np.save(os.path.join(staging, "item_counts.npy"), items.counts.astype(np.int64))
        vocabulary.write_tsv(os.path.join(staging, corpus.ITEM_VOCABULARY), items)
        vocabulary.write_tsv(os.path.join(staging, corpus.USER_VOCABULARY), self.ids.users, with_counts=False)
        context_lib.write_vocabularies(staging, written.context)
        for kind in ("item", "user"):
            if written.tables[kind]:
                features.write(staging, kind, written.tables[kind], written.vocabularies[kind])

    def _metadata(self) -> Dict:
        """metadata.json's entries (data.corpus.write_metadata), the optional ones only where they apply."""
        options, counts, written, held_out_log = self.options, self.held_out.counts, self.written, self.logs.held_out
        bad_records, feature_bad_records = self.logs.bad_records(), self.logs.feature_bad_records
        logged_negatives = written.logged_negatives
        return dict(
            num_items=len(self.ids.items),
            num_users=len(self.ids.users),
            num_train=counts.train,
            num_eval=counts.eval,
            description=options.description or f"prepared from {options.input_pattern}",
            source_files=self.logs.log.files,
            eval_source_files=held_out_log.files if held_out_log else None,
            schema=dataclasses.asdict(self.schema),
            split="given" if held_out_log else options.split,
            eval_per_user=None if held_out_log else options.eval_per_user,
            seed=None if held_out_log else options.seed,
            min_item_count=options.min_item_count,
            oov_item_id=self.ids.items.oov_id,
            eval_dropped_oov=counts.eval_dropped["unseen_item"] + counts.eval_dropped["rare_item"],
            rows=counts.metadata(),
            num_bad_records=bad_records.count + feature_bad_records.count,
            bad_record_messages=bad_records.messages + feature_bad_records.messages,
            item_features=written.metadata["item"],
            user_features=written.metadata["user"],
            context_columns=[part.column.metadata() for part in written.context],
            **({} if options.history_length is None else {"history_length": options.history_length}),
            **({} if not options.validation_per_user else {"validation_per_user": options.validation_per_user,
                                                           "num_validation": counts.validation}),
            **({} if logged_negatives is None else {
                "logged_negatives": logged_negatives, "max_negatives": logged_negatives["max_negatives"]}),
        )

    def summary(self, output_dir: str) -> Summary:
        """What the run read and wrote, for the report."""
        counts, ids = self.held_out.counts, self.ids
        return Summary(
            output_dir=output_dir,
            num_rows_read=sum(counts.read.values()),
            num_items=len(ids.items),
            num_users=len(ids.users),
            num_train=counts.train,
            num_eval=counts.eval,
            oov_item_id=ids.items.oov_id,
            num_items_folded=int((ids.train_item_counts < self.options.min_item_count).sum()),
            eval_dropped_oov=counts.eval_dropped["unseen_item"] + counts.eval_dropped["rare_item"],
            bad_records=self.logs.bad_records(),
            items_without_features=self.written.items_without_features,
            rows=counts,
            feature_bad_records=self.logs.feature_bad_records,
            logged_negatives=self.written.logged_negatives,
            context_columns=tuple(part.column for part in self.written.context),
            history_length=self.options.history_length,
            num_validation=counts.validation or 0,
        )


def kept_validation_rows(is_validation, item_train_count, user_train_count, min_item_count: int,
                         validation_per_user: int, input_pattern: str):
    """(kept [n] bool, {reason: rows dropped} or None without a validation split) of the validation rows: dropped
    for the reasons eval rows are (eval_drops), and counted. DataError when a validation split was asked for and
    none is left, as model selection on no rows would choose nothing."""
    if not validation_per_user:
        return np.zeros_like(is_validation), None
    drops = eval_drops(is_validation, item_train_count, user_train_count, min_item_count)
    kept = is_validation & ~np.logical_or.reduce(list(drops.values()))
    dropped = {reason: int(mask.sum()) for reason, mask in drops.items()}
    if not kept.any():
        raise DataError(f"--input {input_pattern}: no validation interactions: no user has more than "
                        f"--validation_per_user={validation_per_user} training interactions with a usable one "
                        f"({_reasons(dropped)} dropped); lower --validation_per_user or pass 0")
    return kept, dropped


def _histories(columns, is_train: np.ndarray, is_eval: np.ndarray, num_users: int, history_length: int,
               is_validation: Optional[np.ndarray] = None):
    """{"train": [t, N], "eval": [e, N], "validation": [v, N], "latest": [num_users, N]} int64 PAD-padded: each
    written row's history (data.history: the user's items strictly before the row's time) and each user's after all
    of them. Training and validation rows see the training rows before them (the model is chosen without the
    validation rows); eval rows and the latest histories see the training and validation rows before them, as
    a query at test (and serving) time is asked with everything that happened before it."""
    is_validation = np.zeros_like(is_train) if is_validation is None else is_validation
    names = ("user_id", "item_id", "timestamp")
    train = {name: columns[name][is_train] for name in names}
    train_log = history.history_log(train["user_id"], train["item_id"], train["timestamp"])
    seen = {name: columns[name][is_train | is_validation] for name in names}
    seen_log = history.history_log(seen["user_id"], seen["item_id"], seen["timestamp"])
    users = np.arange(num_users, dtype=np.int64)

    def of_rows(log, mask):
        return history.histories_from_log(log, columns["user_id"][mask], columns["timestamp"][mask], history_length)

    return {
        "train": of_rows(train_log, is_train),
        "validation": of_rows(train_log, is_validation),
        "eval": of_rows(seen_log, is_eval),
        "latest": history.histories_from_log(seen_log, users, np.full(num_users, np.iinfo(np.int64).max),
                                             history_length),
    }


def check_arguments(output_dir: str, overwrite: bool, split: str, eval_per_user: int, min_item_count: int,
                    num_shards: int, history_length: Optional[int] = None, validation_per_user: int = 0) -> None:
    """FileExistsError or ValueError for arguments no runner can prepare with."""
    if os.path.exists(output_dir) and not (overwrite and os.path.isdir(output_dir)):
        raise FileExistsError(f"{output_dir} exists; choose a new --output_dir or pass --overwrite")
    if split not in splits.METHODS or eval_per_user < 1 or min_item_count < 1 or num_shards < 1:
        raise ValueError(
            f"split={split!r} (expected {' or '.join(splits.METHODS)}), eval_per_user={eval_per_user}, "
            f"min_item_count={min_item_count}, num_shards={num_shards} (expected >= 1)"
        )
    if history_length is not None and not 1 <= history_length <= history.MAX_WRITTEN_HISTORY_LENGTH:
        raise ValueError(f"--history_length={history_length}: expected 1 to {history.MAX_WRITTEN_HISTORY_LENGTH}")
    if validation_per_user < 0:
        raise ValueError(f"--validation_per_user={validation_per_user}: expected 0 (no validation split) or more")


def _negative_ids(negative_keys, lengths, item_keys, item_id_of, oov_id, row_item_id, written):
    """Each row's logged negatives as item ids, the keys of no training item and of the row's own item dropped.

    negative_keys, lengths: every row's keys one row after the other, and [n] how many each row has. item_keys, item_id_of: the distinct item keys and the id [k] of each.
    oov_id: the OOV bucket's id or None. row_item_id: [n] each row's item id. written: [n] bool, the rows written.
    Returns ((ids [m], lengths [n]) of the kept negatives in row order, or None when no row keeps one, and
    {"read", "kept", "dropped": {reason: keys}, "max_negatives"} over the written rows).
    """
    code_of = dict(zip(item_keys, range(len(item_keys))))
    codes = np.fromiter(map(code_of.get, negative_keys, itertools.repeat(-1)), np.int64, len(negative_keys))
    ids = np.where(codes >= 0, item_id_of[codes], -1)
    unseen = codes < 0
    oov = ~unseen & (ids == (-1 if oov_id is None else oov_id))
    own = ~unseen & ~oov & (ids == np.repeat(row_item_id, lengths))
    counted = np.repeat(written, lengths)
    keep = counted & ~(unseen | oov | own)
    kept_lengths = np.bincount(np.repeat(np.arange(len(lengths)), lengths)[keep], minlength=len(lengths))
    width = int(kept_lengths.max(initial=0))
    dropped = {reason: int((mask & counted).sum()) for reason, mask in zip(NEGATIVE_DROP_REASONS, (unseen, oov, own))}
    counts = {"read": int(counted.sum()), "kept": int(keep.sum()), "dropped": dropped, "max_negatives": width}
    return ((ids[keep], kept_lengths) if width else None), counts


def _rows(negatives, mask: np.ndarray):
    """(ids, lengths) of negatives for the rows of mask [n] only; None stays None."""
    if negatives is None:
        return None
    ids, lengths = negatives
    return ids[np.repeat(mask, lengths)], lengths[mask]


def _context_columns(schema: Schema, logs: List[readers.RawLog], is_train: np.ndarray, is_eval: np.ndarray):
    """[data.context.Built] of each declared context column, over the logs' rows joined in order.

    is_train, is_eval: [n] bool, the training rows and the eval rows written (the vocabularies and the
    standardisation come from training rows; unseen values are counted over written eval rows).
    """
    built = []
    for name in schema.context_columns + schema.numeric_context_columns:
        if name in schema.numeric_context_columns:
            values = np.concatenate([np.asarray(part.context[name], np.float64) for part in logs])
            built.append(context_lib.build_numeric(name, values, is_train))
        elif name in schema.multi_valued_columns:
            flat = [value for part in logs for value in part.context[name][0]]
            lengths = np.concatenate([part.context[name][1] for part in logs])
            built.append(context_lib.build_multi(name, flat, lengths, is_train, is_eval))
        else:
            values = [value for part in logs for value in part.context[name]]
            built.append(context_lib.build_categorical(name, values, is_train, is_eval))
    return built


def _feature_tables(schema: Schema, rows_and_keys):
    """The feature tables of items and users by id, their value vocabularies, metadata, and ids without a value.

    rows_and_keys: {"item" / "user": (feature rows by key, [key of each id])}.
    Returns ({kind: {column: table}}, {kind: {column: vocabulary}}, {kind: {column: metadata}},
    {"<kind> <column>": ids without a value}).
    """
    tables, vocabularies, metadata, without = {}, {}, {}, {}
    for kind, names in (("item", schema.item_feature_columns), ("user", schema.user_feature_columns)):
        feature_rows, keys = rows_and_keys[kind]
        tables[kind], vocabularies[kind], metadata[kind] = {}, {}, {}
        for number, column in enumerate(sorted(names)):
            table, feature_vocabulary, missing = features.build(feature_rows, keys, column)
            tables[kind][column], vocabularies[kind][column] = table, feature_vocabulary
            metadata[kind][column] = {
                "vocabulary": f"{kind}_feature-{number}.tsv",
                "vocabulary_size": len(feature_vocabulary),
                "max_values": int(table.shape[1]),
            }
            without[f"{kind} {column}"] = missing
    return tables, vocabularies, metadata, without


def _joined_columns(log: readers.RawLog, held_out_log: Optional[readers.RawLog], schema: Schema):
    """(timestamps [n], weights [n] or None) of the log's rows followed by the held-out log's."""
    if held_out_log is None:
        return log.timestamps, log.weights
    held_out_timestamps = held_out_log.timestamps
    if schema.timestamp_column is None:  # row numbers: the held-out file comes after the log
        held_out_timestamps = held_out_timestamps + len(log)
    timestamps = np.concatenate([log.timestamps, held_out_timestamps])
    weights = None if log.weights is None else np.concatenate([log.weights, held_out_log.weights])
    return timestamps, weights


def trained_user_vocabulary(user_keys: List[str], train_counts: np.ndarray):
    """(vocabulary of the users with training rows, id [k] of each key, -1 for a user never in training)."""
    trained = np.flatnonzero(train_counts > 0)
    users, id_of_trained = vocabulary.build([user_keys[index] for index in trained], train_counts[trained], 0)
    id_of = np.full(len(user_keys), -1, np.int64)
    id_of[trained] = id_of_trained
    return users, id_of


def eval_drops(is_eval, item_train_count, user_train_count, min_item_count: int) -> Dict[str, np.ndarray]:
    """{reason: [n] bool} the eval rows dropped for each of EVAL_DROP_REASONS, each row for its first reason.

    item_train_count, user_train_count: [n] the training count of each row's item and user.
    """
    unseen_item = is_eval & (item_train_count == 0)
    rare_item = is_eval & (item_train_count > 0) & (item_train_count < min_item_count)
    unseen_user = is_eval & ~unseen_item & ~rare_item & (user_train_count == 0)
    return {"unseen_item": unseen_item, "rare_item": rare_item, "unseen_user": unseen_user}


def no_eval_message(input_pattern, eval_input, eval_per_user: int, eval_dropped: Dict[str, int]) -> str:
    if eval_input:
        return f"--eval_input {eval_input}: no eval interactions left: every row was dropped ({_reasons(eval_dropped)})"
    message = f"--input {input_pattern}: no eval interactions: no user has more than eval_per_user={eval_per_user} "
    if any(eval_dropped.values()):
        return message + f"interactions with a usable held-out row ({_reasons(eval_dropped)} dropped)"
    return message + "interactions"


def _merged(parts: List[readers.BadRecords]) -> readers.BadRecords:
    """One BadRecords of several: every count, and the first messages in order."""
    merged = readers.BadRecords(count=sum(part.count for part in parts))
    merged.messages = [message for part in parts for message in part.messages][: readers.MAX_REPORTED_BAD_RECORDS]
    return merged


def _codes(keys: List[str]):
    """(distinct keys in order of first appearance, code [n] int64 of each key)."""
    index: Dict[str, int] = {}
    code = np.fromiter((index.setdefault(key, len(index)) for key in keys), np.int64, len(keys))
    return list(index), code


class ReadProgress:
    """The command's progress while it reads a log (a readers.Progress): "reading --input: 1,200,000 rows,
    310,000 rows/s" on stderr every `every_seconds`, so a short log prints none. Only the reading reports: it is
    a third of an in-process run (2,000,000 rows: 6.7 s of 20 s); the split and the writing after it do not."""

    def __init__(self, every_seconds: float):
        self.every_seconds = every_seconds
        self.started = self.last = time.monotonic()

    def __call__(self, flag: str, rows: int) -> None:
        now = time.monotonic()
        if not rows:  # a read starts
            self.started = self.last = now
        elif now - self.last >= self.every_seconds:
            self.last = now
            rate = rows / max(now - self.started, 1e-9)
            print(f"reading {flag}: {rows:,} rows, {rate:,.0f} rows/s", file=sys.stderr, flush=True)


def _define_flags():
    """The command's flags: what to read, its schema, how to split it, what to write, and which runner."""
    from absl import flags

    for define in (_define_input_flags, _define_schema_flags, _define_split_flags, _define_output_flags,
                   _define_runner_flags):
        define(flags)


def _define_input_flags(flags):
    flags.DEFINE_string("input", None, "Interaction log: a file, a glob, or several joined by commas.")
    flags.DEFINE_string(
        "eval_input", None, "Held-out interactions in the log's schema and format (a file, glob, or several joined by "
        "commas): a fixed split, used as given instead of --split. Rows of users or items with no training row are "
        "dropped and counted."
    )
    flags.DEFINE_enum("format", "csv", list(readers.FORMATS), "File format of --input (and the feature files).")
    flags.DEFINE_string("output_dir", None, "The prepared corpus directory to create (for trainers.train --data).")
    flags.DEFINE_string("item_features_input", None, "Side file of item features keyed by the item column.")
    flags.DEFINE_string("user_features_input", None, "Side file of user features keyed by the user column.")


def _define_schema_flags(flags):
    flags.DEFINE_string("schema", None, "A JSON schema file (keys as the schema flags below); flags override it.")
    flags.DEFINE_string("user_column", None, "Column of the user key.")
    flags.DEFINE_string("item_column", None, "Column of the item key.")
    flags.DEFINE_string("timestamp_column", None, "Column of an integer timestamp (default: file order).")
    flags.DEFINE_string("weight_column", None, "Column of a non-negative interaction weight (written as `weight`).")
    flags.DEFINE_list("item_feature_columns", None, "Categorical item feature columns.")
    flags.DEFINE_list("user_feature_columns", None, "Categorical user feature columns.")
    flags.DEFINE_list("multi_valued_columns", None, "Feature (or context) columns holding several values, e.g. genres.")
    flags.DEFINE_list(
        "context_columns", None, "Categorical per-interaction context columns of the log (e.g. device), for the query "
        "tower's context; multi-valued when also in --multi_valued_columns. Value ids from the training rows."
    )
    flags.DEFINE_list(
        "numeric_context_columns", None, "Numeric per-interaction context columns (e.g. price), standardised with "
        "the training rows' mean and standard deviation; an empty or non-numeric value is a bad record."
    )
    flags.DEFINE_string(
        "negative_column", None, "Column of the item keys shown with the interaction and not chosen (logged "
        "negatives; CSV: joined by --value_separator, empty for none). Keys of no training item, and the row's own "
        "item, are dropped and counted."
    )
    flags.DEFINE_string("value_separator", None, "Separator inside multi-valued CSV fields (default '|').")
    flags.DEFINE_string("delimiter", None, r"CSV field delimiter (default ','; '\t' for tab).")
    flags.DEFINE_bool("quoting", None, "CSV fields may be quoted with '\"' (default); --noquoting for plain TSV dumps.")


def _define_split_flags(flags):
    flags.DEFINE_enum("split", "last", list(splits.METHODS), "Held-out interactions per user: latest or random.")
    flags.DEFINE_integer("eval_per_user", 1, "Interactions held out per user.", lower_bound=1)
    flags.DEFINE_integer(
        "validation_per_user", 0, "Of each user's training rows (after the eval rows are held out), the last N "
        "become the validation split (validation-*.tfrecord), on which trainers.train chooses the epoch (--keep_best, "
        "early stopping) so that the eval (test) rows are read once, for the final report; not trained on. Users "
        "with N or fewer training rows keep them all. 0: no validation split.", lower_bound=0)
    flags.DEFINE_integer("min_item_count", 1, "Items with fewer training interactions share an OOV id.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of --split=random.")


def _define_output_flags(flags):
    flags.DEFINE_integer("num_shards", NUM_SHARDS, "TFRecord shards per split (--runner=beam: the runner's bundles "
                         "unless given).", lower_bound=1)
    flags.DEFINE_bool("skip_bad_records", False, "Count, report and skip malformed records instead of stopping.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir (only once the new one is complete).")
    flags.DEFINE_integer(
        "history_length", None, "Write each record's history (its user's last N earlier training items) and every "
        "user's latest history, so trainers.train streams the records and never reads the log whole (needed for "
        "logs beyond one machine's memory; default: histories computed by the trainer at load, any length).",
        lower_bound=1, upper_bound=history.MAX_WRITTEN_HISTORY_LENGTH)


def _define_runner_flags(flags):
    flags.DEFINE_enum("runner", RUNNERS[0], list(RUNNERS), "in_process: this process reads the whole log (the "
                      "embedded default); beam: an Apache Beam pipeline (data.beam_prepare; pip install -e '.[beam]'), "
                      "local worker processes or the runner --beam_options names.")
    flags.DEFINE_float("progress_seconds", 5.0, "While reading in process, print the rows read and rows/s to stderr "
                       f"every N seconds (0: every {readers.PROGRESS_EVERY_ROWS:,} rows).", lower_bound=0.0)
    flags.DEFINE_string("beam_options", "", "With --runner=beam: Beam's own pipeline options, e.g. "
                        "'--direct_num_workers=4' or '--runner=FlinkRunner --flink_master=host:8081' (default: every local core, "
                        "multi_processing; README: 'Logs that outgrow one machine').")


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
        "context_columns": values.context_columns,
        "numeric_context_columns": values.numeric_context_columns,
        "negative_column": values.negative_column,
        "value_separator": values.value_separator,
        "delimiter": delimiter,
        "quoting": values.quoting,
    }
    if values.schema:
        return Schema.from_json(values.schema, **overrides)
    if not values.user_column or not values.item_column:
        raise SchemaError("give --user_column and --item_column (or a --schema file)")
    return Schema(**{key: value for key, value in overrides.items() if value is not None})


def _runner(values):
    """(the prepare function of --runner, its runner-only arguments): on Beam, --num_shards only when given (the
    runner picks the files otherwise: one per bundle); in process, the progress of reading (Beam's workers read)."""
    if values.runner != "beam":
        return prepare, {"num_shards": values.num_shards, "progress": ReadProgress(values.progress_seconds)}
    import logging

    from absl import app

    try:
        import apache_beam  # noqa: F401

        from data import beam_prepare
    except ImportError:
        raise app.UsageError("--runner=beam needs Apache Beam: pip install -e '.[beam]'") from None
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # its workers' lifecycle, a page per run
    num_shards = values.num_shards if values["num_shards"].present else None
    return beam_prepare.prepare, {"beam_options": values.beam_options, "num_shards": num_shards}


# prepare's keyword arguments that the command takes from the flags of the same name (file_format is --format).
_PREPARE_FLAGS = ("eval_input", "item_features_input", "user_features_input", "split", "eval_per_user", "seed",
                  "min_item_count", "skip_bad_records", "overwrite", "history_length", "validation_per_user")


def _check_flags(values, argv) -> None:
    """UsageError for a command line no runner can prepare with."""
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("input", "output_dir"):
        if not getattr(values, name):
            raise app.UsageError(f"--{name} is required")
    per_user_split_flags = [f"--{name}" for name in ("split", "eval_per_user", "seed") if values[name].present]
    if values.eval_input and per_user_split_flags:
        raise app.UsageError(
            f"{', '.join(per_user_split_flags)}: the per-user split of --input does not apply with --eval_input "
            "(the held-out file is the split); drop one or the other"
        )
    if values.beam_options and values.runner != "beam":
        raise app.UsageError("--beam_options is read only with --runner=beam")


def main(argv):
    from absl import flags

    values = flags.FLAGS
    _check_flags(values, argv)
    run, runner_arguments = _runner(values)
    arguments = {name: getattr(values, name) for name in _PREPARE_FLAGS}
    try:
        summary = run(values.input, schema_from_flags(values), values.output_dir, file_format=values.format,
                      **arguments, **runner_arguments)
    except (DataError, SchemaError, FileExistsError, ValueError) as error:
        sys.exit(f"data.prepare: {error}")
    print(summary.report())


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
