"""Every bad input of issue 4 stops with its message naming file and line (CSV) or record (TFRecord)."""

import gzip

import numpy as np
import pytest
import tensorflow as tf

from data import readers
from data.schema import Schema, SchemaError

SCHEMA = Schema(
    user_column="user",
    item_column="item",
    timestamp_column="time",
    weight_column="weight",
    item_feature_columns=("genres",),
    multi_valued_columns=("genres",),
)
HEADER = "user,item,time,weight,genres\n"
GOOD = ["u1,a,1,1.0,x|y\n", "u1,b,2,0.5,y\n", "u2,a,3,2,x|y\n"]


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        (HEADER + GOOD[0] + "u1,b,2\n", r"log\.csv:3: missing column: 3 fields, the header has 5"),
        (HEADER + "u1,a,1,abc,x\n", r"log\.csv:2: non-numeric weight 'abc' in column 'weight'"),
        (HEADER + GOOD[0] + GOOD[1] + ",a,4,1,x\n", r"log\.csv:4: empty key in column 'user'"),
        (HEADER + "u1,a,yesterday,1,x\n", r"log\.csv:2: non-numeric timestamp 'yesterday'"),
        (HEADER, r"no interactions in 1 file"),
        ("", r"log\.csv: empty file; expected a header line"),
        (
            "user,item,when,weight,genres\n" + GOOD[0],
            r"log\.csv:1: schema mismatch: .* lacks the declared column\(s\) \['time'\]",
        ),
    ],
    ids=["missing_column", "non_numeric_weight", "empty_key", "non_numeric_timestamp", "empty_input", "empty_file",
         "schema_mismatch"],
)
def test_bad_csv_input_names_file_and_line(tmp_path, text, message):
    path = _write(tmp_path / "log.csv", text)
    with pytest.raises(readers.DataError, match=message):
        readers.read_log(path, SCHEMA)


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(readers.DataError, match=r"--input .*nothing-\*\.csv: matches no files"):
        readers.read_log(str(tmp_path / "nothing-*.csv"), SCHEMA)


def test_skip_bad_records_counts_reports_and_skips(tmp_path):
    text = HEADER + GOOD[0] + "u1,b,2\n" + ",a,4,1,x\n" + "u1,a,1,abc,x\n" + GOOD[1] + GOOD[2]
    log = readers.read_log(_write(tmp_path / "log.csv", text), SCHEMA, skip_bad_records=True)
    assert len(log) == 3 and log.bad_records.count == 3
    assert [message.split(": ")[0][-5:] for message in log.bad_records.messages] == ["csv:3", "csv:4", "csv:5"]
    np.testing.assert_array_equal(log.weights, [1.0, 0.5, 2.0])
    assert log.item_features == {"a": {"genres": ["x", "y"]}, "b": {"genres": ["y"]}}


def _example(**columns):
    feature = {}
    for name, values in columns.items():
        if isinstance(values[0], bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif isinstance(values[0], float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_tfrecord_reads_like_csv_and_names_the_bad_record(tmp_path):
    rows = [
        _example(user=[b"u1"], item=[b"a"], time=[1], weight=[1.0], genres=[b"x", b"y"]),
        _example(user=[b"u1"], item=[b"b"], time=[2], weight=[0.5], genres=[b"y"]),
        _example(user=[b"u2"], item=[b"a"], time=[3], weight=[2], genres=[b"x", b"y"]),
    ]
    path = str(tmp_path / "log.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for row in rows:
            writer.write(row)
    from_tfrecord = readers.read_log(path, SCHEMA, "tfrecord")
    from_csv = readers.read_log(_write(tmp_path / "log.csv", HEADER + "".join(GOOD)), SCHEMA)
    assert from_tfrecord.user_keys == from_csv.user_keys and from_tfrecord.item_keys == from_csv.item_keys
    np.testing.assert_array_equal(from_tfrecord.timestamps, from_csv.timestamps)
    np.testing.assert_array_equal(from_tfrecord.weights, from_csv.weights)
    assert from_tfrecord.item_features == from_csv.item_features

    bad = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(bad) as writer:
        writer.write(rows[0])
        writer.write(_example(user=[b"u1"], item=[b"b"], weight=[1.0], genres=[b"y"]))
        writer.write(_example(user=[b"u1"], item=[b"b"], time=[b"noon"], weight=[1.0], genres=[b"y"]))
    with pytest.raises(readers.DataError, match=r"bad\.tfrecord: record 1: missing column 'time'"):
        readers.read_log(bad, SCHEMA, "tfrecord")
    skipped = readers.read_log(bad, SCHEMA, "tfrecord", skip_bad_records=True)
    assert len(skipped) == 1 and skipped.bad_records.count == 2
    expected = "record 2: schema mismatch: column 'time' is bytes_list, expected int64_list"
    assert expected in skipped.bad_records.messages[1]


def test_schema_json_and_its_errors(tmp_path):
    path = _write(tmp_path / "schema.json", '{"user_column": "user", "item_column": "item", "delimiter": ";"}')
    assert Schema.from_json(path, timestamp_column="time").delimiter == ";"
    bad = _write(tmp_path / "bad.json", '{"user_column": "user", "item_column": "item", "colour": "red"}')
    with pytest.raises(SchemaError, match=r"bad\.json: unknown schema keys \['colour'\]"):
        Schema.from_json(bad)
    with pytest.raises(SchemaError, match="more than one role"):
        Schema(user_column="id", item_column="id")
    with pytest.raises(SchemaError, match="not declared as item or user feature"):
        Schema(user_column="u", item_column="i", multi_valued_columns=("genres",))


def test_tab_separated_without_quoting_keeps_quotes_as_text(tmp_path):
    text = 'user\titem\ttitle\n1\t10\t"Pinocchio" (1940)\n1\t20\tHe said "hi\n'
    schema = Schema(user_column="user", item_column="item", item_feature_columns=("title",), delimiter="\t",
                    quoting=False)
    log = readers.read_log(_write(tmp_path / "log.tsv", text), schema)
    assert log.item_features == {"10": {"title": ['"Pinocchio" (1940)']}, "20": {"title": ['He said "hi']}}


# Issue 14: every row is read, or counted and reported at its own file:line (record), in one short line.


def _lines(count, start=0):
    """`count` good data lines, each a distinct user, so that the rows read can be named."""
    return [f"u{row},a,{row},1,x|y\n" for row in range(start, start + count)]


def _read_both(path, **kwargs):
    """(the DataError message without skip_bad_records, the log read with it)."""
    with pytest.raises(readers.DataError) as error:
        readers.read_log(path, SCHEMA, **kwargs)
    return str(error.value), readers.read_log(path, SCHEMA, skip_bad_records=True, **kwargs)


@pytest.mark.parametrize("block_bytes", [readers._CSV_BLOCK_BYTES, 64])  # 64: the quote opens near a block's end
@pytest.mark.parametrize("where", ["middle", "first_row", "last_line", "last_line_without_break"])
def test_unterminated_quote_is_one_bad_record_at_its_line(tmp_path, monkeypatch, block_bytes, where):
    monkeypatch.setattr(readers, "_CSV_BLOCK_BYTES", block_bytes)
    before = {"middle": 40, "first_row": 0, "last_line": 99, "last_line_without_break": 99}[where]
    text = HEADER + "".join(_lines(before)) + 'u1,i2,4000,1,"g1|g2\n' + "".join(_lines(99 - before, start=before))
    if where == "last_line_without_break":
        text = text[:-1]
    message, log = _read_both(_write(tmp_path / "log.csv", text))
    line = before + 2  # after the header and the good lines before it
    assert message.startswith(f"{tmp_path / 'log.csv'}:{line}: unterminated quote: ")
    assert message.endswith("""'u1,i2,4000,1,"g1|g2'""") and "\n" not in message
    assert log.num_records_read == 100 and len(log) == 99 and log.bad_records.count == 1
    assert log.user_keys == [f"u{row}" for row in range(99)], "every other row is read, in order"
    assert log.bad_records.messages == [message]


def test_a_quoted_field_may_not_span_lines(tmp_path):
    """Each physical line is a record: a line break inside quotes makes both lines bad records, named."""
    text = HEADER + GOOD[0] + 'u1,b,2,1,"x\ny"\n' + GOOD[2] + 'u3,"a,b",4,1,"x, ""y"""\n'
    log = readers.read_log(_write(tmp_path / "log.csv", text), SCHEMA, skip_bad_records=True)
    assert log.user_keys == ["u1", "u2", "u3"] and log.item_keys == ["a", "a", "a,b"]
    assert log.item_features["a,b"] == {"genres": ['x, "y"']}  # quotes within one line still work
    assert [message.split(": ", 2)[1] for message in log.bad_records.messages] == [
        "unterminated quote", "missing column"]
    assert [message.split(": ")[0][-5:] for message in log.bad_records.messages] == ["csv:3", "csv:4"]


def test_invalid_utf8_is_a_bad_record_at_its_own_line(tmp_path):
    lines = [line.encode() for line in [HEADER, *_lines(3500)]]
    lines[10] = b"u9,caf\xe9,9,1,x\n"  # line 11, Latin-1
    lines[3000] = b"u9,\xff,9,1,x\n"  # line 3001, past the first blocks
    path = tmp_path / "log.csv"
    path.write_bytes(b"".join(lines))
    message, log = _read_both(str(path))
    assert message.startswith(f"{path}:11: not UTF-8: byte 0xe9 at byte 7 of the line")
    assert "b'u9,caf\\xe9,9,1,x'" in message and "re-encode" in message
    assert [message.split(": ")[0].rsplit(":", 1)[1] for message in log.bad_records.messages] == ["11", "3001"]
    assert log.num_records_read == 3500 and len(log) == 3498

    path.write_bytes(b"user,it\xe9m,time,weight,genres\n" + b"".join(lines[1:]))
    with pytest.raises(readers.DataError, match=r"log\.csv:1: unreadable header: not UTF-8"):
        readers.read_log(str(path), SCHEMA, skip_bad_records=True)


def test_over_long_field_and_line_are_bad_records_at_their_line(tmp_path, monkeypatch):
    field = "x" * 200_000  # beyond csv.field_size_limit()
    text = HEADER + "".join(_lines(3)) + f"u9,a,9,1,{field}\n" + "".join(_lines(2, start=3))
    message, log = _read_both(_write(tmp_path / "log.csv", text))
    assert message.startswith(f"{tmp_path / 'log.csv'}:5: unreadable CSV (field larger than field limit")
    assert len(log) == 5 and log.bad_records.count == 1

    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 300)
    monkeypatch.setattr(readers, "_CSV_BLOCK_BYTES", 64)
    for long_line in ("u9,a,9,1," + "y" * 301 + "\n", "u9,a,9,1," + "y" * 1000 + "\n"):
        text = HEADER + "".join(_lines(3)) + long_line + "".join(_lines(2, start=3))
        message, log = _read_both(_write(tmp_path / "log.csv", text))
        assert message.startswith(f"{tmp_path / 'log.csv'}:5: line longer than 300 bytes (a missing line break?)")
        assert len(message) < 250 and message.endswith("...")
        assert log.user_keys == ["u0", "u1", "u2", "u3", "u4"] and log.bad_records.count == 1
    at_the_limit = "u9,a,9,1," + "y" * 291 + "\n"  # 300 bytes before its line break: read
    assert len(readers.read_log(_write(tmp_path / "log.csv", HEADER + at_the_limit), SCHEMA)) == 1
    unbroken = "u9,a,9,1," + "y" * 1000  # the file's last line, no line break after it
    _, log = _read_both(_write(tmp_path / "log.csv", HEADER + "".join(_lines(3)) + unbroken))
    assert len(log) == 3 and log.bad_records.count == 1


def test_messages_are_one_short_line_whatever_the_value(tmp_path):
    long_value = "9" * 3000 + "x"
    for row, column in ((f"u1,a,{long_value},1,x\n", "timestamp"), (f"u1,a,1,{long_value},x\n", "weight"),
                        (f'u1,"a\tb{long_value}",1,1,x\n', "key")):
        with pytest.raises(readers.DataError, match=column) as error:
            readers.read_log(_write(tmp_path / "log.csv", HEADER + row), SCHEMA)
        assert len(str(error.value)) < 250 and "9" * 70 + "..." in str(error.value)
    wide_header = "user,item," + ",".join(f"column{index}" for index in range(500)) + "\n"
    with pytest.raises(readers.DataError, match=r"log\.csv:1: schema mismatch") as error:
        readers.read_log(_write(tmp_path / "log.csv", wide_header + "u1,a\n"), SCHEMA)
    assert len(str(error.value)) < 300


def test_numbers_outside_their_stored_type_are_bad_records(tmp_path):
    text = HEADER + "u1,a,99999999999999999999,1,x\n" + "u1,a,1e300,1,x\n" + "u1,a,1,1e39,x\n" + GOOD[0]
    log = readers.read_log(_write(tmp_path / "log.csv", text), SCHEMA, skip_bad_records=True)
    assert len(log) == 1 and [message.split(": ")[1] for message in log.bad_records.messages] == [
        "timestamp '99999999999999999999' in column 'time' is outside the int64 range",
        "timestamp '1e300' in column 'time' is outside the int64 range",
        "non-numeric weight '1e39' in column 'weight'; expected a finite number >= 0",
    ]


def test_line_endings_byte_order_mark_and_blank_lines(tmp_path):
    text = "\ufeff" + HEADER.replace("\n", "\r\n") + GOOD[0].replace("\n", "\r\n") + "\n\r\n" + GOOD[1] + GOOD[2]
    log = readers.read_log(_write(tmp_path / "log.csv", text), SCHEMA)
    assert log.user_keys == ["u1", "u1", "u2"] and log.num_records_read == 3  # blank lines are no records
    assert log.item_features["a"] == {"genres": ["x", "y"]}, "no \\r is left on the last field"
    message, log = _read_both(_write(tmp_path / "log.csv", HEADER + "u1,a,1,1,x\ry\n" + GOOD[1]))
    assert message.endswith("log.csv:2: a carriage return (\\r) inside an unquoted field; lines must end with \\n or "
                            "\\r\\n")
    assert len(log) == 1


def _write_records(path, rows):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            writer.write(row)
    return str(path)


@pytest.mark.parametrize("batch", [readers._TFRECORD_BATCH, 7])  # 7: the bad record is mid-batch, not first
def test_truncated_tfrecord_names_the_record_and_skips_only_it(tmp_path, monkeypatch, batch):
    monkeypatch.setattr(readers, "_TFRECORD_BATCH", batch)
    rows = [_example(user=[b"u%d" % row], item=[b"a"], time=[row], weight=[1.0], genres=[b"x"]) for row in range(300)]
    data = open(_write_records(tmp_path / "whole.tfrecord", rows), "rb").read()
    start_of_160 = sum(len(row) + 16 for row in rows[:160])
    for cut in (20, 5):  # inside the record's data; inside its 12-byte header, which TensorFlow reads as the end
        path = tmp_path / "cut.tfrecord"
        path.write_bytes(data[: start_of_160 + cut])
        message, log = _read_both(str(path), file_format="tfrecord")
        assert message == (f"{path}: record 160: truncated: the file ends {cut} bytes into this record "
                           "(an interrupted copy or write?)")
        assert len(log) == 160 and log.num_records_read == 161 and log.user_keys[-1] == "u159"

    corrupted = bytearray(data)
    corrupted[start_of_160 + 15] ^= 0xFF
    path = tmp_path / "corrupted.tfrecord"
    path.write_bytes(bytes(corrupted))
    with pytest.raises(readers.DataError, match=r"corrupted\.tfrecord: record 160: unreadable TFRecord \(corrupted at "
                                                r"byte \d+\); the records after it cannot be located"):
        readers.read_log(str(path), SCHEMA, "tfrecord", skip_bad_records=True)  # the rest would be lost unseen


def test_tfrecord_key_that_is_not_utf8_is_a_bad_record(tmp_path):
    rows = [_example(user=[b"u\xff"], item=[b"a"], time=[1], weight=[1.0], genres=[b"x"]),
            _example(user=[b"u\xfe"], item=[b"a"], time=[2], weight=[1.0], genres=[b"x"]),
            _example(user=[b"u1"], item=[b"a"], time=[3], weight=[1.0], genres=[b"x"])]
    message, log = _read_both(_write_records(tmp_path / "log.tfrecord", rows), file_format="tfrecord")
    assert message.endswith("log.tfrecord: record 0: column 'user' is not UTF-8: [b'u\\xff']")
    assert log.user_keys == ["u1"] and log.bad_records.count == 2  # not two keys merged into 'u\ufffd'


def test_binary_input_and_repeated_columns_stop_at_the_header(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(gzip.compress((HEADER + "".join(GOOD)).encode()))
    with pytest.raises(readers.DataError, match=r"log\.csv:1: unreadable header: not UTF-8: byte 0x8b") as error:
        readers.read_log(str(path), SCHEMA, skip_bad_records=True)
    assert len(str(error.value)) < len(str(path)) + 250  # the bytes' repr is cut too, not only the bytes
    repeated = "user,item,time,weight,genres,user\n" + "u1,a,1,1,x,u2\n"
    with pytest.raises(readers.DataError, match=r"log\.csv:1: the header names the declared column\(s\) \['user'\]"):
        readers.read_log(_write(path, repeated), SCHEMA)
