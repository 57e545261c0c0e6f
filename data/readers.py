"""Readers of interaction logs and feature files: CSV or TFRecord (tf.train.Example), one file or a glob.

Each record is checked against the declared `Schema`; a bad one raises `DataError` naming the file and line
(CSV, 1-based physical line) or record index (TFRecord, 0-based), or, with skip_bad_records, is counted and
skipped. Rows are read with the csv module and protobuf parsing, with no TensorFlow op per row (TFRecord files
are read in batches of serialized records), so millions of rows take seconds.
"""

import csv
import dataclasses
import glob
import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from data.schema import Schema

FORMATS = ("csv", "tfrecord")
# Bad records whose message is kept for the report; all of them are counted.
MAX_REPORTED_BAD_RECORDS = 10
_TFRECORD_BATCH = 4096

# item or user key -> {feature column: values}
FeatureRows = Dict[str, Dict[str, List[str]]]


class DataError(ValueError):
    """Input that does not match its declared schema; the message names the file and line or record."""


@dataclasses.dataclass
class BadRecords:
    """Records skipped under skip_bad_records: how many, and the first few messages."""

    count: int = 0
    messages: List[str] = dataclasses.field(default_factory=list)

    def add(self, message: str, skip: bool) -> None:
        if not skip:
            raise DataError(message)
        self.count += 1
        if len(self.messages) < MAX_REPORTED_BAD_RECORDS:
            self.messages.append(message)


@dataclasses.dataclass
class RawLog:
    """An interaction log in its own keys, in file order: parallel columns of n interactions."""

    user_keys: List[str]  # [n]
    item_keys: List[str]  # [n]
    timestamps: np.ndarray  # [n] int64; the row number when the schema has no timestamp column
    weights: Optional[np.ndarray]  # [n] float32, or None without a weight column
    item_features: FeatureRows  # from the first row of each item (when declared in the log)
    user_features: FeatureRows  # from the first row of each user (when declared in the log)
    files: List[str]
    bad_records: BadRecords

    def __len__(self):
        return len(self.user_keys)


def expand(pattern: str) -> List[str]:
    """Files matched by one path or glob, or several joined by commas, sorted within each pattern."""
    files = []
    for part in [part.strip() for part in pattern.split(",") if part.strip()]:
        matched = sorted(path for path in glob.glob(part) if os.path.isfile(path))
        if not matched:
            raise DataError(f"--input {part}: matches no files")
        files.extend(matched)
    if not files:
        raise DataError(f"--input {pattern!r}: names no files")
    return files


def read_log(
    pattern: str,
    schema: Schema,
    file_format: str = "csv",
    skip_bad_records: bool = False,
    item_features_in_log: bool = True,
    user_features_in_log: bool = True,
) -> RawLog:
    """Reads every interaction of the files matching `pattern`.

    Args:
      pattern: a path, a glob, or several joined by commas.
      schema: the declared columns.
      file_format: "csv" or "tfrecord".
      skip_bad_records: count and skip malformed records instead of stopping at the first.
      item_features_in_log, user_features_in_log: read the schema's item / user feature columns from the log
        (False when they come from a side file).
    Raises:
      DataError: no matching file, no interaction at all, or (without skip_bad_records) a bad record.
    """
    files = expand(pattern)
    item_features = schema.item_feature_columns if item_features_in_log else ()
    user_features = schema.user_feature_columns if user_features_in_log else ()
    columns = schema.interaction_columns() + item_features + user_features
    multi_valued = set(schema.multi_valued_columns)
    has_timestamp, has_weight = schema.timestamp_column is not None, schema.weight_column is not None
    weight_index = 3 if has_timestamp else 2
    first_feature = len(schema.interaction_columns())
    user_keys, item_keys, timestamps, weights = [], [], [], []
    item_rows, user_rows = {}, {}
    bad = BadRecords()

    for path in files:
        for location, values in _records(path, file_format, schema, columns, bad, skip_bad_records):
            user = _key(values[0], columns[0], location, bad, skip_bad_records)
            if user is None:  # each bad record is counted once, for its first fault
                continue
            item = _key(values[1], columns[1], location, bad, skip_bad_records)
            if item is None:
                continue
            timestamp = len(timestamps)
            if has_timestamp:
                timestamp = _integer(values[2], columns[2], location, bad, skip_bad_records)
                if timestamp is None:
                    continue
            if has_weight:
                weight = _weight(values[weight_index], columns[weight_index], location, bad, skip_bad_records)
                if weight is None:
                    continue
                weights.append(weight)
            user_keys.append(user)
            item_keys.append(item)
            timestamps.append(timestamp)
            position = first_feature
            for key, names, rows in ((item, item_features, item_rows), (user, user_features, user_rows)):
                if names and key not in rows:
                    rows[key] = {
                        name: _feature_values(values[position + offset], name in multi_valued, schema.value_separator)
                        for offset, name in enumerate(names)
                    }
                position += len(names)

    if not user_keys:
        reason = f", {bad.count} bad records skipped" if bad.count else ""
        raise DataError(f"--input {pattern}: no interactions in {len(files)} file(s){reason}")
    return RawLog(
        user_keys=user_keys,
        item_keys=item_keys,
        timestamps=np.asarray(timestamps, dtype=np.int64),
        weights=np.asarray(weights, dtype=np.float32) if has_weight else None,
        item_features=item_rows,
        user_features=user_rows,
        files=files,
        bad_records=bad,
    )


def read_features(
    pattern: str,
    key_column: str,
    feature_columns: Sequence[str],
    schema: Schema,
    file_format: str = "csv",
    skip_bad_records: bool = False,
    bad: Optional[BadRecords] = None,
) -> FeatureRows:
    """A side file of features, one row per key (e.g. an item catalogue): {key: {column: values}}.

    A key listed twice keeps its first row.
    """
    bad = bad if bad is not None else BadRecords()
    columns = (key_column, *feature_columns)
    multi_valued = set(schema.multi_valued_columns)
    rows = {}
    for path in expand(pattern):
        for location, values in _records(path, file_format, schema, columns, bad, skip_bad_records):
            key = _key(values[0], key_column, location, bad, skip_bad_records)
            if key is not None and key not in rows:
                rows[key] = {
                    name: _feature_values(value, name in multi_valued, schema.value_separator)
                    for name, value in zip(feature_columns, values[1:])
                }
    return rows


def _records(path, file_format, schema, columns, bad, skip) -> Iterator[Tuple[str, List]]:
    if file_format == "csv":
        return _csv_records(path, schema, columns, bad, skip)
    if file_format == "tfrecord":
        return _tfrecord_records(path, schema, columns, bad, skip)
    raise DataError(f"--format={file_format}: expected one of {', '.join(FORMATS)}")


def _csv_records(path, schema, columns, bad, skip) -> Iterator[Tuple[str, List[str]]]:
    """(location, [raw field per column]) for each data line; the header line names the columns."""
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.reader(
            file, delimiter=schema.delimiter, quoting=csv.QUOTE_MINIMAL if schema.quoting else csv.QUOTE_NONE
        )
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file; expected a header line naming the columns") from None
        except (csv.Error, UnicodeDecodeError) as error:
            raise DataError(f"{path}:1: unreadable header ({error})") from None
        missing = [column for column in columns if column not in header]
        if missing:
            raise DataError(
                f"{path}:1: schema mismatch: header {header} lacks the declared column(s) {missing} "
                f"(delimiter {schema.delimiter!r})"
            )
        indices = [header.index(column) for column in columns]
        width = len(header)
        try:
            for row in reader:
                if len(row) == width:
                    yield f"{path}:{reader.line_num}", [row[index] for index in indices]
                elif row:  # a blank line is no record
                    message = f"missing column: {len(row)} fields, the header has {width}"
                    bad.add(f"{path}:{reader.line_num}: {message}", skip)
        except (csv.Error, UnicodeDecodeError) as error:
            raise DataError(f"{path}:{reader.line_num + 1}: unreadable CSV ({error})") from None


def _tfrecord_records(path, schema, columns, bad, skip) -> Iterator[Tuple[str, List]]:
    """(location, [raw value per column]) for each tf.train.Example; list values for multi-valued columns."""
    import tensorflow as tf

    multi_valued = set(schema.multi_valued_columns)
    numeric = {schema.timestamp_column: ("int64_list",), schema.weight_column: ("float_list", "int64_list")}
    index = 0
    try:
        for batch in tf.data.TFRecordDataset(path).batch(_TFRECORD_BATCH).as_numpy_iterator():
            for serialized in batch:
                location = f"{path}: record {index}"
                index += 1
                values = _example_values(serialized, location, columns, multi_valued, numeric, bad, skip)
                if values is not None:
                    yield location, values
    except tf.errors.OpError as error:
        raise DataError(f"{path}: record {index}: unreadable TFRecord ({error.message})") from None


def _example_values(serialized, location, columns, multi_valued, numeric, bad, skip):
    import tensorflow as tf

    try:
        example = tf.train.Example.FromString(serialized)
    except Exception as error:  # protobuf's DecodeError
        bad.add(f"{location}: not a tf.train.Example ({error})", skip)
        return None
    features = example.features.feature
    values = []
    for column in columns:
        if column not in features:
            bad.add(f"{location}: missing column {column!r}", skip)
            return None
        feature = features[column]
        kind = feature.WhichOneof("kind")
        allowed = numeric.get(column, ("bytes_list", "int64_list"))
        if kind not in allowed:
            bad.add(f"{location}: schema mismatch: column {column!r} is {kind}, expected {' or '.join(allowed)}", skip)
            return None
        raw = getattr(feature, kind).value
        if kind == "bytes_list":
            raw = [value.decode("utf-8", "replace") for value in raw]
        else:
            raw = [str(value) for value in raw]
        if column in multi_valued:
            values.append(raw)
        elif len(raw) != 1:
            bad.add(f"{location}: column {column!r} holds {len(raw)} values, expected 1", skip)
            return None
        else:
            values.append(raw[0])
    return values


def _key(value: str, column: str, location: str, bad: BadRecords, skip: bool) -> Optional[str]:
    if not value.strip():
        bad.add(f"{location}: empty key in column {column!r}", skip)
        return None
    if "\t" in value or "\n" in value:
        bad.add(f"{location}: key {value!r} in column {column!r} contains a tab or newline", skip)
        return None
    return value


def _integer(value: str, column: str, location: str, bad: BadRecords, skip: bool) -> Optional[int]:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)  # e.g. "881250949.0"; fractions of the unit are dropped
        if math.isfinite(number):
            return int(number)
    except ValueError:
        pass
    bad.add(f"{location}: non-numeric timestamp {value!r} in column {column!r}", skip)
    return None


def _weight(value: str, column: str, location: str, bad: BadRecords, skip: bool) -> Optional[float]:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= 0):
        bad.add(f"{location}: non-numeric weight {value!r} in column {column!r}; expected a number >= 0", skip)
        return None
    return number


def _feature_values(raw, multi_valued: bool, separator: str) -> List[str]:
    """The non-empty values of a feature field: a CSV string (split when multi-valued) or a TFRecord list."""
    if isinstance(raw, list):
        values = raw
    elif multi_valued:
        values = raw.split(separator)
    else:
        values = [raw]
    return [value.strip() for value in values if value.strip()]
