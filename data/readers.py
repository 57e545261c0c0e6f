"""Readers of interaction logs and feature files: CSV or TFRecord (tf.train.Example), one file or a glob.

Each record is checked against the declared `Schema`; a bad one raises `DataError` naming the file and line
(CSV, 1-based physical line) or record index (TFRecord, 0-based), or, with skip_bad_records, is counted and
skipped. Every record read is either returned or counted as bad: no row is lost or merged without a report.
Messages are one line; a value quoted in one is cut to MAX_VALUE_CHARS characters.

CSV: one record per physical line. The file is read as bytes and split on b"\\n" here, and each line is
decoded and parsed on its own, so a line that is not UTF-8 is one bad record at its own line number, and a
field may not contain a line break: a quoted field left open at the end of its line ("unterminated quote") is
a bad record at the line where the quote opened, and reading resumes at the next line. (The csv module alone
would read every later line into that field.) A line longer than MAX_LINE_BYTES, or a field longer than
csv.field_size_limit() characters, is a bad record too. Blank lines are not records; a leading UTF-8 byte
order mark is ignored.

TFRecord: a file that ends inside a record (truncated) makes that record a bad record; a corrupted record
(checksum mismatch) stops the read, since the records after it cannot be located.

Rows are read with the csv module and protobuf parsing, with no TensorFlow op per row (TFRecord files are
read in batches of serialized records), so millions of rows take seconds.
"""

import csv
import dataclasses
import glob
import itertools
import math
import os
import re
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from data import context as context_lib
from data.schema import Schema

FORMATS = ("csv", "tfrecord")
# Bad records whose message is kept for the report; all of them are counted.
MAX_REPORTED_BAD_RECORDS = 10
# A value quoted in a message is cut to this many characters, so that the message stays about one screen line.
MAX_VALUE_CHARS = 80
# No log line is this long; the cap keeps a file without line breaks from being read into memory whole.
MAX_LINE_BYTES = 1 << 20
# CSV files are read in blocks of whole lines, each parsed in one call of the csv module. Small blocks keep few
# row lists alive at a time: with 1 MiB blocks a 1M-row read took 60% longer, the garbage collector walking the
# live rows. Must not exceed MAX_LINE_BYTES: only the first line of a block (the one continued from the previous
# block) can then be longer than MAX_LINE_BYTES, so only it is measured.
_CSV_BLOCK_BYTES = 16 << 10
_TFRECORD_BATCH = 4096
# Framing of each TFRecord around its serialized bytes: length (8 bytes), its CRC (4), the data's CRC (4).
_TFRECORD_FRAMING_BYTES = 16
_BYTE_ORDER_MARK = b"\xef\xbb\xbf"
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1  # timestamps are stored as int64
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # weights are stored as float32

# CSV lines: (1-based number of the first line, [fields of each line], None), or (line number, None, why that
# line is no record).
CsvBlock = Tuple[int, Optional[List[List[str]]], Optional[str]]
# The same for the decoded text of lines.
LineBlock = Tuple[int, Optional[List[str]], Optional[str]]

# item or user key -> {feature column: values}
FeatureRows = Dict[str, Dict[str, List[str]]]
# read_log's progress hook: (the flag of the files being read, rows read so far): 0 as it starts, then every
# PROGRESS_EVERY_ROWS rows. A caller that prints decides how often (data.prepare: every few seconds).
Progress = Callable[[str, int], None]
PROGRESS_EVERY_ROWS = 10_000


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
    # The item keys of every row's negative column, row after row (flat: a list per row would leave a million
    # lists for the garbage collector to walk), and [n] how many each row holds; None without the column.
    negative_keys: Optional[List[str]] = None
    negative_lengths: Optional[np.ndarray] = None
    # The declared context columns (schema.context_columns, numeric_context_columns), each row's value in turn:
    # {name: [n] str ("" for none)} categorical, {name: [n] float} numeric, and for a multi-valued column
    # {name: (every row's values one row after the other, [n] how many each row has)}.
    context: Dict[str, object] = dataclasses.field(default_factory=dict)

    def __len__(self):
        return len(self.user_keys)

    @property
    def num_records_read(self) -> int:
        """Every record of the files (blank CSV lines and headers are none): the ones kept and the bad ones."""
        return len(self.user_keys) + self.bad_records.count


def expand(pattern: str, flag: str = "--input") -> List[str]:
    """Files matched by one path or glob, or several joined by commas, sorted within each pattern.

    flag: the flag that gave the pattern, for the message.
    """
    files = []
    for part in [part.strip() for part in pattern.split(",") if part.strip()]:
        matched = sorted(path for path in glob.glob(part) if os.path.isfile(path))
        if not matched:
            raise DataError(f"{flag} {part}: matches no files")
        files.extend(matched)
    if not files:
        raise DataError(f"{flag} {pattern!r}: names no files")
    return files


def read_log(
    pattern: str,
    schema: Schema,
    file_format: str = "csv",
    skip_bad_records: bool = False,
    item_features_in_log: bool = True,
    user_features_in_log: bool = True,
    flag: str = "--input",
    progress: Optional[Progress] = None,
) -> RawLog:
    """Reads every interaction of the files matching `pattern`.

    Args:
      pattern: a path, a glob, or several joined by commas.
      schema: the declared columns.
      file_format: "csv" or "tfrecord".
      skip_bad_records: count and skip malformed records instead of stopping at the first.
      item_features_in_log, user_features_in_log: read the schema's item / user feature columns from the log
        (False when they come from a side file).
      flag: the flag that gave the pattern, for messages.
      progress: called with (flag, rows read) as reading starts and every PROGRESS_EVERY_ROWS rows (records).
    Raises:
      DataError: no matching file, no interaction at all, or (without skip_bad_records) a bad record.
    """
    files = expand(pattern, flag)
    log = _LogColumns(schema, schema.item_feature_columns if item_features_in_log else (),
                      schema.user_feature_columns if user_features_in_log else ())
    rows_read, report = 0, progress or (lambda flag, rows: None)
    report(flag, 0)
    for path in files:
        for location, values in _records(path, file_format, schema, log.columns, log.bad, skip_bad_records):
            rows_read += 1
            if not rows_read % PROGRESS_EVERY_ROWS:
                report(flag, rows_read)
            log.add(values, location, skip_bad_records)
    if not log.user_keys:
        reason = f", {log.bad.count} bad records skipped" if log.bad.count else ""
        raise DataError(f"{flag} {pattern}: no interactions in {len(files)} file(s){reason}")
    return log.raw_log(files)


def _positions(columns: Sequence[str]) -> Dict[str, int]:
    """{column: its position in a record's values}, for records read as _records(..., columns, ...)."""
    return {column: position for position, column in enumerate(columns)}


class _InteractionPositions(NamedTuple):
    """Where a record's interaction columns are in its values, looked up by name once per read (None: the schema
    has no such column)."""

    user: int
    item: int
    timestamp: Optional[int]
    weight: Optional[int]

    @classmethod
    def of(cls, schema: Schema, position: Dict[str, int]) -> "_InteractionPositions":
        return cls(position[schema.user_column], position[schema.item_column], position.get(schema.timestamp_column),
                   position.get(schema.weight_column))


class _LogColumns:
    """A log's columns as its records are read: a record is kept whole, or counted as bad (for its first fault)
    and not kept at all."""

    def __init__(self, schema: Schema, item_features: Sequence[str], user_features: Sequence[str]):
        self.schema = schema
        columns = schema.interaction_columns() + tuple(item_features) + tuple(user_features)
        columns += schema.context_columns + schema.numeric_context_columns
        # The columns asked of each record, in this order because messages list missing ones in it.
        self.columns = columns + ((schema.negative_column,) if schema.negative_column else ())
        position = _positions(self.columns)
        self.interaction = _InteractionPositions.of(schema, position)
        self.negative_position = position.get(schema.negative_column)  # None without the column
        self.context = _ContextReader(schema, position)
        # (column, position) of the features read from the log, with the rows read by key: {key: {column: values}}
        self.features = [([(name, position[name]) for name in item_features], {}),
                         ([(name, position[name]) for name in user_features], {})]
        self.multi_valued = set(schema.multi_valued_columns)
        self.user_keys, self.item_keys, self.timestamps, self.weights = [], [], [], []
        self.negative_keys, self.negative_lengths = [], []
        self.bad = BadRecords()

    def add(self, values: List, location: str, skip: bool) -> None:
        """Keeps the record of `values` (its raw value of each of self.columns) or counts it as bad."""
        interaction = _interaction(values, self.interaction, self.schema, location, self.bad, skip)
        if interaction is None:  # each bad record is counted once, for its first fault
            return
        negatives = ()
        if self.negative_position is not None:
            negatives = _keys(values[self.negative_position], self.schema.negative_column, self.schema.value_separator,
                              location, self.bad, skip)
            if negatives is None:
                return
        if self.context.read(values, location, self.bad, skip):
            self._keep(values, interaction, negatives)

    def _keep(self, values: List, interaction, negatives: Sequence[str]) -> None:
        user, item, timestamp, weight = interaction
        self.timestamps.append(len(self.timestamps) if timestamp is None else timestamp)
        if self.negative_position is not None:
            self.negative_keys.extend(negatives)
            self.negative_lengths.append(len(negatives))
        if self.interaction.weight is not None:
            self.weights.append(weight)
        self.user_keys.append(user)
        self.item_keys.append(item)
        for key, (named_positions, rows) in zip((item, user), self.features):
            if named_positions and key not in rows:  # an item's or user's features are those of its first row
                rows[key] = {name: _feature_values(values[position], name in self.multi_valued,
                                                   self.schema.value_separator)
                             for name, position in named_positions}

    def raw_log(self, files: List[str]) -> RawLog:
        has_weight, has_negatives = self.interaction.weight is not None, self.negative_position is not None
        return RawLog(
            user_keys=self.user_keys,
            item_keys=self.item_keys,
            timestamps=np.asarray(self.timestamps, dtype=np.int64),
            weights=np.asarray(self.weights, dtype=np.float32) if has_weight else None,
            item_features=self.features[0][1],
            user_features=self.features[1][1],
            files=files,
            bad_records=self.bad,
            negative_keys=self.negative_keys if has_negatives else None,
            negative_lengths=np.asarray(self.negative_lengths, dtype=np.int64) if has_negatives else None,
            context=self.context.columns_read(),
        )


class _ContextReader:
    """Reads the declared context columns of each row (found in its values by name) and keeps them, or finds
    the row bad: a numeric value that is no finite number, a key with a tab or line break."""

    def __init__(self, schema: Schema, position: Dict[str, int]):
        self.categorical, self.numeric = schema.context_columns, schema.numeric_context_columns
        self.columns = self.categorical + self.numeric
        self.named_positions = [(name, position[name]) for name in self.columns]
        self.separator = schema.value_separator
        self.multi_valued = set(schema.multi_valued_columns)
        self.values = {name: ([], []) if name in self.multi_valued else [] for name in self.columns}

    def read(self, values, location: str, bad: BadRecords, skip: bool) -> bool:
        """Keeps the row's context and returns True, or counts the row as bad and returns False."""
        row = {}
        for name, position in self.named_positions:
            raw = values[position]
            if name in self.numeric:
                row[name] = _context_number(raw, name, location, bad, skip)
            elif name in self.multi_valued:
                keys = _keys(raw, name, self.separator, location, bad, skip)
                row[name] = None if keys is None else list(dict.fromkeys(key.strip() for key in keys))
            else:
                row[name] = raw.strip() and _key(raw.strip(), name, location, bad, skip)
            if row[name] is None:
                return False
        for name, value in row.items():
            if name in self.multi_valued:
                self.values[name][0].extend(value)
                self.values[name][1].append(len(value))
            else:
                self.values[name].append(value)
        return True

    def columns_read(self) -> Dict[str, object]:
        return {name: (values[0], np.asarray(values[1], np.int64)) if name in self.multi_valued else values
                for name, values in self.values.items()}


def _context_number(raw: str, column: str, location: str, bad: BadRecords, skip: bool) -> Optional[float]:
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        bad.add(f"{location}: non-numeric value {_shorten(raw)} in the numeric context column {column!r}; expected "
                "a finite number", skip)
        return None
    if abs(number) > context_lib.MAX_NUMBER:
        bad.add(f"{location}: value {_shorten(raw)} in the numeric context column {column!r} is beyond float32; "
                f"expected a number within +-{context_lib.MAX_NUMBER:.4g}", skip)
        return None
    return number


def read_features(
    pattern: str,
    key_column: str,
    feature_columns: Sequence[str],
    schema: Schema,
    file_format: str = "csv",
    skip_bad_records: bool = False,
    bad: Optional[BadRecords] = None,
    flag: str = "--item_features_input",
) -> FeatureRows:
    """A side file of features, one row per key (e.g. an item catalogue): {key: {column: values}}.

    A key listed twice keeps its first row. flag: the flag that gave the pattern, for messages.
    """
    bad = bad if bad is not None else BadRecords()
    columns = (key_column, *feature_columns)
    multi_valued = set(schema.multi_valued_columns)
    rows = {}
    for path in expand(pattern, flag):
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
    blocks = _csv_blocks(path, schema)
    header, blocks = _csv_header(path, blocks, columns, schema)
    indices = [header.index(column) for column in columns]
    width = len(header)
    for number, rows, why in blocks:
        if rows is None:
            bad.add(f"{path}:{number}: {why}", skip)
            continue
        for line_number, row in enumerate(rows, start=number):
            if len(row) == width:
                yield f"{path}:{line_number}", [row[index] for index in indices]
            elif row:  # a blank line is no record
                bad.add(f"{path}:{line_number}: missing column: {len(row)} fields, the header has {width}", skip)


def _csv_header(path, blocks: Iterator[CsvBlock], columns, schema) -> Tuple[List[str], Iterator[CsvBlock]]:
    """(the first line's fields, the blocks after it); the header must name every declared column, and a bad
    header stops the read even under skip_bad_records."""
    number, rows, why = next(blocks, (1, None, None))
    if rows is None:
        if why is None:
            raise DataError(f"{path}: empty file; expected a header line naming the columns")
        raise DataError(f"{path}:{number}: unreadable header: {why}")
    header = rows[0]
    missing = [column for column in columns if column not in header]
    if missing:
        raise DataError(
            f"{path}:{number}: schema mismatch: header {_shorten(header)} lacks the declared column(s) {missing} "
            f"(delimiter {schema.delimiter!r})"
        )
    repeated = [column for column in columns if header.count(column) > 1]
    if repeated:  # which of the fields would be the column is anyone's guess
        raise DataError(f"{path}:{number}: the header names the declared column(s) {repeated} more than once")
    return header, itertools.chain([(number + 1, rows[1:], None)], blocks)


def _csv_blocks(path, schema) -> Iterator[CsvBlock]:
    """Every physical line of a CSV file, parsed on its own, in runs: (number of the run's first line,
    [fields of each line], None), and (line number, None, why) for a line that is no record."""
    dialect = {"delimiter": schema.delimiter, "quoting": csv.QUOTE_MINIMAL if schema.quoting else csv.QUOTE_NONE}
    for number, lines, why in _line_blocks(path):
        if lines is None:
            yield number, None, why
            continue
        rows = _one_row_per_line(lines, dialect)
        if rows is not None:
            yield number, rows, None
        else:
            yield from _parsed_lines(lines, number, dialect)


def _one_row_per_line(lines: List[str], dialect) -> Optional[List[List[str]]]:
    """The rows of `lines` in one call of the csv module, or None when a line is no row of its own.

    Each line gives at most one row; it gives none when a quoted field left open on an earlier line swallowed
    it. An empty sentinel line after the block gives a row of its own unless a quote is left open on the last
    line. So the lines are one row each exactly when the reader returns one row more than there are lines.
    """
    try:
        rows = list(csv.reader(itertools.chain(lines, ("",)), **dialect))
    except csv.Error:
        return None
    if len(rows) != len(lines) + 1:
        return None
    rows.pop()  # the sentinel's
    return rows


def _parsed_lines(lines: List[str], number: int, dialect) -> Iterator[CsvBlock]:
    """Each of `lines` (the first numbered `number`) parsed as one row, a run of one line each; the slow path
    for a block holding a line that is no row of its own.

    A csv reader asks its input for another line while a quoted field is open: its line_num then advances by
    more than one for a row. Such a row is reported at the line where it began, and a new reader resumes on the
    line after it.
    """
    start = 0  # index in `lines` of the reader's first line
    while start < len(lines):
        reader = csv.reader(itertools.chain(itertools.islice(lines, start, None), ("",)), **dialect)
        done = 0  # reader.line_num after the last row of one line
        try:
            for row in reader:
                if reader.line_num > done + 1:
                    break
                if start + done == len(lines):  # the sentinel
                    return
                yield number + start + done, [row], None
                done += 1
            else:
                return
            why = _unterminated_quote(lines[start + done])
        except csv.Error as error:
            spans_lines = reader.line_num > done + 1  # e.g. the open field grew past the csv field size limit
            why = _unterminated_quote(lines[start + done]) if spans_lines else _unreadable(error)
        yield number + start + done, None, why
        start += done + 1


def _line_blocks(path) -> Iterator[LineBlock]:
    """The file's lines in blocks: (number of the block's first line, [decoded lines], None), and
    (line number, None, why) for a line that is not UTF-8 or longer than MAX_LINE_BYTES."""
    number, discarding = 1, False  # discarding: inside an over-long line, up to its line break
    try:
        file = open(path, "rb")
    except OSError as error:
        raise DataError(f"{path}: cannot open ({error.strerror})") from None
    with file:
        carry = file.read(len(_BYTE_ORDER_MARK))
        if carry == _BYTE_ORDER_MARK:
            carry = b""
        while block := file.read(_CSV_BLOCK_BYTES):
            data, carry = carry + block, b""
            first_break = data.find(b"\n")
            if discarding or first_break > MAX_LINE_BYTES or (first_break < 0 and len(data) > MAX_LINE_BYTES):
                if not discarding:
                    yield number, None, _too_long(data)
                if first_break < 0:
                    discarding = True
                    continue
                data, number, discarding = data[first_break + 1:], number + 1, False
            last_break = data.rfind(b"\n")
            if last_break < 0:
                carry = data
                continue
            whole, carry = data[:last_break], data[last_break + 1:]
            yield from _decoded(whole, number)
            number += whole.count(b"\n") + 1
    if carry:  # a last line without a line break
        yield from _decoded(carry, number)


def _decoded(whole: bytes, number: int) -> Iterator[LineBlock]:
    """Whole lines (joined by b"\\n", the first one numbered `number`) decoded, in blocks split at bad lines."""
    try:
        text = whole.decode("utf-8")  # the common case: one call for the block
    except UnicodeDecodeError:
        text = None
    if text is not None:
        yield number, text.split("\n"), None  # b"\n" is never part of a multi-byte character: same split
        return
    good, first = [], number
    for offset, raw in enumerate(whole.split(b"\n")):
        try:
            good.append(raw.decode("utf-8"))
            continue
        except UnicodeDecodeError as error:
            why = f"not UTF-8: byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line ({error.reason}): "
        if good:
            yield first, good, None
        yield number + offset, None, why + _shorten(raw) + "; re-encode the file as UTF-8"
        good, first = [], number + offset + 1
    if good:
        yield first, good, None


def _unterminated_quote(line: str) -> str:
    return (
        f"unterminated quote: a field opened with '\"' does not close on its line (a field may not span lines; "
        f"double a quote inside a quoted field): {_shorten(line)}"
    )


def _unreadable(error: csv.Error) -> str:
    if "new-line character" in str(error):  # the csv module's advice (universal-newline mode) does not apply here
        return "a carriage return (\\r) inside an unquoted field; lines must end with \\n or \\r\\n"
    return f"unreadable CSV ({error})"


def _too_long(data: bytes) -> str:
    return f"line longer than {MAX_LINE_BYTES} bytes (a missing line break?): {_shorten(data)}"


def _shorten(value) -> str:
    """repr(value) cut to MAX_VALUE_CHARS characters, "..." marking a cut, for a one-line message."""
    cut = isinstance(value, (str, bytes)) and len(value) > MAX_VALUE_CHARS
    text = repr(value[:MAX_VALUE_CHARS] if cut else value)  # cut first: the value may be a megabyte long
    if cut or len(text) > MAX_VALUE_CHARS:  # repr writes a byte as up to 4 characters
        return text[:MAX_VALUE_CHARS] + "..."
    return text


def _tfrecord_records(path, schema, columns, bad, skip) -> Iterator[Tuple[str, List]]:
    """(location, [raw value per column]) for each tf.train.Example; list values for multi-valued columns."""
    multi_valued = set(schema.multi_valued_columns) | {schema.negative_column}
    numeric = {schema.timestamp_column: ("int64_list",), schema.weight_column: ("float_list", "int64_list")}
    numeric.update({column: ("float_list", "int64_list") for column in schema.numeric_context_columns})
    for index, serialized in _tfrecords(path, bad, skip):
        location = f"{path}: record {index}"
        values = _example_values(serialized, location, columns, multi_valued, numeric, bad, skip)
        if values is not None:
            yield location, values


def _tfrecords(path, bad, skip) -> Iterator[Tuple[int, bytes]]:
    """(index, serialized record) for each whole record of a TFRecord file.

    A file that ends inside a record (the bytes read fall short of the file's size, or TensorFlow finds the
    record truncated) makes that record a bad record. A corrupted record stops the read: the records after it
    cannot be located.
    """
    import tensorflow as tf

    index, size_read, error = 0, 0, None
    batches = tf.data.TFRecordDataset(path).batch(_TFRECORD_BATCH).as_numpy_iterator()
    try:
        for batch in batches:
            for serialized in batch:
                yield index, serialized
                index += 1
                size_read += len(serialized) + _TFRECORD_FRAMING_BYTES
    except tf.errors.OpError:
        # The failed batch lost its good records too: read them one at a time, up to the bad one.
        try:
            for serialized in tf.data.TFRecordDataset(path).skip(index).as_numpy_iterator():
                yield index, serialized
                index += 1
                size_read += len(serialized) + _TFRECORD_FRAMING_BYTES
        except tf.errors.OpError as record_error:
            error = record_error.message
    file_size = os.path.getsize(path)
    if error is None and size_read == file_size:
        return
    if error is None or "truncated record" in error:
        bad.add(
            f"{path}: record {index}: truncated: the file ends {file_size - size_read} bytes into this record "
            "(an interrupted copy or write?)",
            skip,
        )
        return
    found = re.search(r"corrupted record at (\d+)", error)
    why = f"corrupted at byte {found.group(1)}" if found else _shorten(error)
    raise DataError(
        f"{path}: record {index}: unreadable TFRecord ({why}); the records after it cannot be located. "
        "Is it an uncompressed TFRecord file? Re-create or re-copy it"
    )


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
            try:
                raw = [value.decode("utf-8") for value in raw]
            except UnicodeDecodeError:  # replacing bad bytes could merge two keys into one
                bad.add(f"{location}: column {column!r} is not UTF-8: {_shorten(list(raw))}", skip)
                return None
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


def interactions_of_file(path: str, schema: Schema, file_format: str, bad: BadRecords,
                         skip: bool) -> Iterator[Tuple[str, str, Optional[int], Optional[float]]]:
    """(user key, item key, timestamp or None without the column, weight or None) of each good record of one
    file, in file order, validated as read_log validates them; the bad ones counted in bad (or DataError)."""
    columns = schema.interaction_columns()
    positions = _InteractionPositions.of(schema, _positions(columns))
    for location, values in _records(path, file_format, schema, columns, bad, skip):
        interaction = _interaction(values, positions, schema, location, bad, skip)
        if interaction is not None:
            yield interaction


def _interaction(values, position: _InteractionPositions, schema: Schema, location: str, bad: BadRecords,
                 skip: bool):
    """(user, item, timestamp or None, weight or None) of a record's values (the interaction columns at
    `position`, found once per read: this runs once per row), or None (counted in bad) for the first fault
    found."""
    user = _key(values[position.user], schema.user_column, location, bad, skip)
    item = None if user is None else _key(values[position.item], schema.item_column, location, bad, skip)
    if item is None:
        return None
    timestamp = weight = None
    if position.timestamp is not None:
        timestamp = _integer(values[position.timestamp], schema.timestamp_column, location, bad, skip)
        if timestamp is None:
            return None
    if position.weight is not None:
        weight = _weight(values[position.weight], schema.weight_column, location, bad, skip)
        if weight is None:
            return None
    return user, item, timestamp, weight


def _key(value: str, column: str, location: str, bad: BadRecords, skip: bool) -> Optional[str]:
    if not value.strip():
        bad.add(f"{location}: empty key in column {column!r}", skip)
        return None
    if "\t" in value or "\n" in value or "\r" in value:  # the vocabulary files are tab- and line-separated
        bad.add(f"{location}: key {_shorten(value)} in column {column!r} contains a tab or line break", skip)
        return None
    return value


def _keys(raw, column: str, separator: str, location: str, bad: BadRecords, skip: bool) -> Optional[List[str]]:
    """The keys of a multi-valued key field (a CSV string joined by separator, or a TFRecord list); an empty
    field is no keys, an empty key between separators a bad record."""
    if not isinstance(raw, list):
        raw = raw.split(separator) if raw.strip() else []
        if all(map(str.strip, raw)) and not any(character in value for value in raw for character in "\t\n\r"):
            return raw  # the common case, checked in bulk; otherwise each key in turn finds the bad one
    keys = []
    for value in raw:
        if _key(value, column, location, bad, skip) is None:
            return None
        keys.append(value)
    return keys


def _integer(value: str, column: str, location: str, bad: BadRecords, skip: bool) -> Optional[int]:
    number = _parse_integer(value)
    if number is None:
        bad.add(f"{location}: non-numeric timestamp {_shorten(value)} in column {column!r}", skip)
    elif not _INT64_MIN <= number <= _INT64_MAX:
        bad.add(f"{location}: timestamp {_shorten(value)} in column {column!r} is outside the int64 range", skip)
        number = None
    return number


def _parse_integer(value: str) -> Optional[int]:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)  # e.g. "881250949.0"; fractions of the unit are dropped
    except ValueError:
        return None
    return int(number) if math.isfinite(number) else None


def _weight(value: str, column: str, location: str, bad: BadRecords, skip: bool) -> Optional[float]:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= _FLOAT32_MAX:  # False for NaN; weights are stored as float32
        bad.add(
            f"{location}: non-numeric weight {_shorten(value)} in column {column!r}; expected a finite number >= 0",
            skip,
        )
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
