"""`python -m data.prepare` on real files, as a user runs it (issue 14): a bad row stops the run with one line
naming its file and line (record), or with --skip_bad_records is counted and skipped alone; metadata.json
accounts for every row read, and the written splits hold what it says."""

import json

import tensorflow as tf

from data import corpus, records
from tests.conftest import run_module

FLAGS = ["--user_column=user", "--item_column=item", "--timestamp_column=time", "--item_feature_columns=genres",
         "--multi_valued_columns=genres"]
HEADER = "user,item,time,genres\n"
# The message's prefix "data.prepare: <file>:<line>: " plus this: one screen line and a value cut to 80 characters.
MAX_MESSAGE_CHARS = 250


def _rows(count):
    """`count` data lines: 100 users of count / 100 rows each, 200 items."""
    return [f"u{row % 100},i{row % 200},{row},g{row % 3}|g{row % 5}\n" for row in range(count)]


def _prepare(tmp_path, *args):
    return run_module("data.prepare", *FLAGS, f"--output_dir={tmp_path / 'out'}", *args)


def _error_line(result, location):
    """The run's one-line message, checked: it failed without a traceback and names `location` first."""
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not result.stdout
    message = result.stderr.strip().splitlines()[-1]
    prefix = f"data.prepare: {location}: "
    assert message.startswith(prefix), message
    assert len(message) - len(prefix) <= MAX_MESSAGE_CHARS, message
    return message[len(prefix):]


def _metadata(result, tmp_path):
    """metadata.json of a successful run, its row counts checked against each other and the written files."""
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    with open(tmp_path / "out" / "metadata.json") as file:
        metadata = json.load(file)
    rows = metadata["rows"]
    used = sum(rows["bad_records"].values()) + rows["train"] + rows["eval"] + sum(rows["eval_dropped"].values())
    assert sum(rows["read"].values()) == used, rows
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    assert len(records.read_all(prepared.train_files)["user_id"]) == rows["train"] == metadata["num_train"]
    assert len(records.read_all(prepared.eval_files)["user_id"]) == rows["eval"] == metadata["num_eval"]
    return metadata


def test_unterminated_quote_stops_at_its_line(tmp_path):
    """The issue's file: the quote used to swallow the last 1,000 rows, and the run exited 0 having read 4,000."""
    lines = _rows(5000)
    lines[3999] = 'u1,i2,4000,"g1|g2\n'  # line 4001
    path = tmp_path / "log.csv"
    path.write_text(HEADER + "".join(lines))
    why = _error_line(_prepare(tmp_path, f"--input={path}"), f"{path}:4001")
    assert why.startswith("""unterminated quote: a field opened with '"' does not close on its line""")
    assert why.endswith("""'u1,i2,4000,"g1|g2'""")
    assert not (tmp_path / "out").exists()


def test_invalid_utf8_stops_at_its_line(tmp_path):
    """Reported as line 1 ("unreadable header") before."""
    lines = [line.encode() for line in _rows(5000)]
    lines[9] = b"u9,caf\xe9,9,g1\n"  # line 11
    path = tmp_path / "log.csv"
    path.write_bytes(HEADER.encode() + b"".join(lines))
    why = _error_line(_prepare(tmp_path, f"--input={path}"), f"{path}:11")
    assert why.startswith("not UTF-8: byte 0xe9 at byte 7 of the line") and "b'u9,caf\\xe9,9,g1'" in why


def test_skip_bad_records_skips_each_bad_line_alone_and_counts_it(tmp_path):
    lines = [line.encode() for line in _rows(5000)]
    lines[9] = b"u9,caf\xe9,9,g1\n"  # line 11: not UTF-8
    lines[1998] = b"u9,i9,9," + b"g" * 200_000 + b"\n"  # line 2000: a field beyond the csv module's limit
    lines[2999] = b"u9,\xff,9,g1\n"  # line 3001: not UTF-8 (reported as line 2555 before)
    lines[3999] = b'u1,i2,4000,"g1|g2\n'  # line 4001: unterminated quote
    path = tmp_path / "log.csv"
    path.write_bytes(HEADER.encode() + b"".join(lines))
    result = _prepare(tmp_path, f"--input={path}", "--skip_bad_records")
    metadata = _metadata(result, tmp_path)
    assert metadata["rows"]["read"] == {"input": 5000} and metadata["rows"]["bad_records"] == {"input": 4}
    assert metadata["rows"]["train"] + metadata["rows"]["eval"] == 4996  # no eval row is dropped here
    messages = metadata["bad_record_messages"]
    expected = [(11, "not UTF-8"), (2000, "unreadable CSV (field larger than field limit"), (3001, "not UTF-8"),
                (4001, "unterminated quote")]
    assert len(messages) == len(expected)
    for message, (line, start) in zip(messages, expected):
        assert message.startswith(f"{path}:{line}: {start}") and len(message) <= len(str(path)) + MAX_MESSAGE_CHARS
    assert metadata["num_bad_records"] == 4


def _example(user, item, time):
    feature = {
        "user": tf.train.Feature(bytes_list=tf.train.BytesList(value=[user.encode()])),
        "item": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item.encode()])),
        "time": tf.train.Feature(int64_list=tf.train.Int64List(value=[time])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_truncated_tfrecord_names_its_record(tmp_path):
    """A file cut inside record 160 was reported as "record 0" (the first of the batch that failed)."""
    serialized = [_example(f"u{row % 20}", f"i{row % 30}", row) for row in range(300)]
    path = tmp_path / "log.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)
    cut = sum(len(record) + 16 for record in serialized[:160]) + 20  # 16: each record's length and checksums
    path.write_bytes(path.read_bytes()[:cut])
    flags = ["--format=tfrecord", f"--input={path}", "--user_column=user", "--item_column=item",
             "--timestamp_column=time"]
    result = run_module("data.prepare", *flags, f"--output_dir={tmp_path / 'out'}")
    why = _error_line(result, f"{path}: record 160")
    assert why == "truncated: the file ends 20 bytes into this record (an interrupted copy or write?)"
    metadata = _metadata(run_module("data.prepare", *flags, f"--output_dir={tmp_path / 'out'}", "--skip_bad_records"),
                         tmp_path)
    assert metadata["rows"]["read"] == {"input": 161} and metadata["rows"]["bad_records"] == {"input": 1}


def test_eval_input_is_the_split_and_every_held_out_row_is_counted(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text(HEADER + "".join(_rows(1000)) + "u0,rare,5000,g1\n")
    held_out = tmp_path / "held_out.csv"  # only the interaction columns: its features are not read
    held_out.write_text(
        "user,item,time\n"
        + "".join(f"u{user},i{user},9000\n" for user in range(100))
        + "stranger,i1,9000\n"  # a user never in training
        + "u1,new-item,9000\n"  # an item never in training
        + "u2,rare,9000\n"  # an item in training once, below --min_item_count=2
        + "u3,,9000\n"  # a bad record
    )
    result = _prepare(tmp_path, f"--input={train}", f"--eval_input={held_out}", "--min_item_count=2",
                      "--skip_bad_records")
    metadata = _metadata(result, tmp_path)
    assert metadata["rows"] == {
        "read": {"input": 1001, "eval_input": 104},
        "bad_records": {"input": 0, "eval_input": 1},
        "train": 1001,  # every row of --input: no per-user split
        "eval": 100,
        "eval_dropped": {"unseen_item": 1, "rare_item": 1, "unseen_user": 1},
    }
    assert metadata["split"] == "given" and metadata["bad_record_messages"] == [
        f"{held_out}:105: empty key in column 'item'"]
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    assert set(prepared.item_keys) == {f"i{item}" for item in range(200)} | {"<oov>"}  # from training rows only
    assert set(prepared.user_keys) == {f"u{user}" for user in range(100)}

    mixed = _prepare(tmp_path, f"--input={train}", f"--eval_input={held_out}", "--split=random")
    assert mixed.returncode != 0 and "Traceback" not in mixed.stderr
    assert "--split: the per-user split of --input does not apply with --eval_input" in mixed.stderr

