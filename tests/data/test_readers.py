"""Every bad input of issue 4 stops with its message naming file and line (CSV) or record (TFRecord)."""

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
