"""data.prepare with per-interaction context columns (issue 12): vocabularies of the training rows, held-out-only
values counted as none, numbers standardised with the training rows' statistics, bad numbers named by
file:line, and the batches both pipelines parse."""

import json

import numpy as np
import pytest

from data import corpus, pipeline, records
from data.schema import Schema, SchemaError
from tests.conftest import run_module

FLAGS = ["--user_column=user", "--item_column=item", "--timestamp_column=time", "--context_columns=device,tags",
         "--multi_valued_columns=tags", "--numeric_context_columns=price"]
# Each user's rows at times 0..3; time 3 is held out. Training devices: mobile 4, desktop 2, tv 2 (tie: by value).
TRAIN_ROWS = [
    ("u0", "a", 0, "mobile", "x|y", "1"), ("u0", "b", 1, "mobile", "y", "2"), ("u0", "c", 2, "tv", "", "3"),
    ("u1", "a", 0, "mobile", "z", "4"), ("u1", "b", 1, "desktop", "x", "5"), ("u1", "c", 2, "tv", "x|z|y", "6"),
    ("u2", "a", 0, "desktop", "y", "7"), ("u2", "b", 1, "mobile", "", "8"),
]
EVAL_ROWS = [("u0", "a", 3, "watch", "x|new", "10"), ("u1", "b", 3, "tv", "new|other", "0"),
             ("u2", "c", 3, "", "z", "4.5")]


def _write(path, rows, extra_lines=()):
    lines = ["user,item,time,device,tags,price"] + [",".join(map(str, row)) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _prepare(tmp_path, log, *args):
    result = run_module("data.prepare", *FLAGS, f"--input={log}", f"--output_dir={tmp_path / 'out'}", *args)
    return result


def _metadata(tmp_path):
    return json.loads((tmp_path / "out" / "metadata.json").read_text())


def test_context_columns_get_training_vocabularies_standardised_numbers_and_counted_unseen_values(tmp_path):
    result = _prepare(tmp_path, _write(tmp_path / "log.csv", TRAIN_ROWS + EVAL_ROWS))
    assert result.returncode == 0, result.stderr[-2000:]
    columns = {entry["name"]: entry for entry in _metadata(tmp_path)["context_columns"]}
    assert columns["device"] == {"name": "device", "kind": "categorical", "vocabulary": "context-device.tsv",
                                 "vocabulary_size": 3, "unseen_eval_values": 1}
    # tags: x 3, y 4, z 2 in training; the held-out "new" (twice) and "other" are none.
    assert columns["tags"]["kind"] == "multi" and columns["tags"]["unseen_eval_values"] == 3
    assert columns["tags"]["max_values"] == 3
    train_prices = np.arange(1, 9, dtype=np.float64)
    assert columns["price"]["mean"] == pytest.approx(train_prices.mean())
    assert columns["price"]["std"] == pytest.approx(train_prices.std())

    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    device, tags, price = prepared.context_columns
    assert device.keys == ("mobile", "desktop", "tv") and tags.keys == ("y", "x", "z")
    lines = (tmp_path / "out" / "context-device.tsv").read_text().splitlines()
    assert lines == ["key\tid\tcount", "mobile\t0\t4", "desktop\t1\t2", "tv\t2\t2"]
    held_out = records.read_all(prepared.eval_files)
    order = np.argsort(held_out["user_id"])  # users are ranked by training count: u0, u1 (3 rows), then u2
    assert held_out["device"][order].tolist() == [-1, 2, -1]  # watch: only held out; u2's empty field
    assert held_out["tags"][order].tolist() == [[1, -1, -1], [-1, -1, -1], [2, -1, -1]]
    expected = (np.array([10, 0, 4.5]) - train_prices.mean()) / train_prices.std()
    np.testing.assert_allclose(held_out["price"][order], expected, rtol=1e-6)
    assert held_out["price"].dtype == np.float32


def test_both_pipelines_parse_the_context_into_the_batch(tmp_path):
    _prepare(tmp_path, _write(tmp_path / "log.csv", TRAIN_ROWS + EVAL_ROWS))
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    columns = pipeline.read_in_memory(prepared.train_files)
    in_memory = next(iter(pipeline.in_memory_batches(columns, 4, seed=1)))
    streaming = next(iter(pipeline.streaming_batches(prepared.train_files, 4, seed=1)))
    for batch in (in_memory, streaming):
        assert batch["device"].shape == [4] and batch["device"].dtype.name == "int64"
        assert batch["tags"].shape == [4, 3] and batch["tags"].dtype.name == "int64"
        assert batch["price"].shape == [4] and batch["price"].dtype.name == "float32"
    # Every training row's context, as written: the streaming pass holds the same rows as the file.
    rows = {(int(u), int(t)): (int(d), tuple(g), round(float(p), 5)) for u, t, d, g, p in zip(
        columns["user_id"], columns["timestamp"], columns["device"], columns["tags"].tolist(), columns["price"])}
    batch = {name: values.numpy() for name, values in streaming.items()}
    for index in range(4):
        key = (int(batch["user_id"][index]), int(batch["timestamp"][index]))
        assert rows[key] == (int(batch["device"][index]), tuple(batch["tags"][index].tolist()),
                             round(float(batch["price"][index]), 5))


def test_a_bad_numeric_value_names_its_line_and_is_skippable_and_counted(tmp_path):
    log = _write(tmp_path / "log.csv", TRAIN_ROWS + EVAL_ROWS, ["u2,a,9,tv,x," + "n" * 100, "u1,c,9,tv,x,inf"])
    result = _prepare(tmp_path, log)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"data.prepare: {log}:13: non-numeric value 'nnn") and "'price'" in message
    assert "n" * 81 not in message
    result = _prepare(tmp_path, log, "--skip_bad_records")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _metadata(tmp_path)["rows"]
    assert rows["read"] == {"input": 13} and rows["bad_records"] == {"input": 2}
    assert rows["train"] + rows["eval"] + sum(rows["eval_dropped"].values()) == 11
    assert any(message.startswith(f"{log}:14: non-numeric value 'inf'")
               for message in _metadata(tmp_path)["bad_record_messages"])


def test_a_number_beyond_float32_or_not_a_number_is_a_bad_record_at_its_line(tmp_path):
    # 1e300 once made exit 0 with std inf in metadata.json and every standardised value 0.
    log = _write(tmp_path / "log.csv", TRAIN_ROWS + EVAL_ROWS, ["u2,a,9,tv,x,1e300", "u1,c,9,tv,x,-nan"])
    result = _prepare(tmp_path, log)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"data.prepare: {log}:13: value '1e300' in the numeric context column 'price' is "
                              "beyond float32") and "3.403e+38" in message
    result = _prepare(tmp_path, log, "--skip_bad_records")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _metadata(tmp_path)["rows"]["bad_records"] == {"input": 2}
    assert any(message.startswith(f"{log}:14: non-numeric value '-nan'")
               for message in _metadata(tmp_path)["bad_record_messages"])
    price = _metadata(tmp_path)["context_columns"][-1]
    train_prices = np.arange(1, 9, dtype=np.float64)
    assert (price["mean"], price["std"]) == pytest.approx((train_prices.mean(), train_prices.std()))


def test_large_numbers_standardise_finitely_and_held_out_overflow_is_counted(tmp_path):
    # Training prices near float32's largest, then ones that differ in the eighth digit: both standardise finitely.
    big = [row[:5] + (f"{3.4e38 * (index + 1) / 8 * (-1) ** index:.6e}",) for index, row in enumerate(TRAIN_ROWS)]
    result = _prepare(tmp_path, _write(tmp_path / "log.csv", big + EVAL_ROWS))
    assert result.returncode == 0, result.stderr[-2000:]
    price = _metadata(tmp_path)["context_columns"][-1]
    train_prices = np.array([float(row[5]) for row in big])
    assert (price["mean"], price["std"]) == pytest.approx((train_prices.mean(), train_prices.std()), rel=1e-12)
    assert np.isfinite(price["std"]) and price["overflowing_eval_values"] == 0
    close = [row[:5] + (f"{1 + (index % 2) * 1e-7}",) for index, row in enumerate(TRAIN_ROWS)]
    eval_rows = EVAL_ROWS[:2] + [EVAL_ROWS[2][:5] + ("3e38",)]  # 3e38 is some 6e45 standard deviations out
    result = _prepare(tmp_path, _write(tmp_path / "log.csv", close + eval_rows), "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    price = _metadata(tmp_path)["context_columns"][-1]
    assert price["overflowing_eval_values"] == 1  # held-out values beyond float32 once standardised: the mean
    held_out = records.read_all(corpus.PreparedCorpus.load(str(tmp_path / "out")).eval_files)
    assert np.isfinite(held_out["price"]).all() and sorted(held_out["price"].tolist())[1] == 0.0


def test_a_numeric_column_with_one_value_in_every_training_row_is_refused(tmp_path):
    constant = [row[:5] + ("2.5",) for row in TRAIN_ROWS]
    result = _prepare(tmp_path, _write(tmp_path / "log.csv", constant + EVAL_ROWS))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "data.prepare: numeric context column 'price': every training row has the value 2.5, so its standardised "
        "value is 0 for every row and tells the model nothing; drop it from --numeric_context_columns")
    assert not (tmp_path / "out").exists()


def test_the_schema_file_declares_context_columns_and_bad_declarations_are_refused(tmp_path):
    schema = {"user_column": "user", "item_column": "item", "timestamp_column": "time",
              "context_columns": ["device"], "numeric_context_columns": ["price"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    result = run_module("data.prepare", f"--schema={tmp_path / 'schema.json'}",
                        f"--input={_write(tmp_path / 'log.csv', TRAIN_ROWS + EVAL_ROWS)}",
                        f"--output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [entry["name"] for entry in _metadata(tmp_path)["context_columns"]] == ["device", "price"]
    with pytest.raises(SchemaError, match="multi_valued_columns"):
        Schema("user", "item", numeric_context_columns=("price",), multi_valued_columns=("price",))
    with pytest.raises(SchemaError, match="'history'.*serving input name"):
        Schema("user", "item", context_columns=("history",))
    with pytest.raises(SchemaError, match="more than one role"):
        Schema("user", "item", context_columns=("device",), user_feature_columns=("device",))
