"""Logged negatives (data.prepare --negative_column) from a CSV log to the training batches: keys mapped to ids,
the unusable ones dropped and counted, dense -1 padded in memory and streaming alike, bad records named."""

import json

import numpy as np
import pytest

from data import corpus, pipeline, prepare, records
from data.readers import DataError
from data.schema import Schema

SCHEMA = Schema(user_column="user", item_column="item", timestamp_column="time", negative_column="shown")


def _log(path, num_users=30, seed=0):
    """Each user: 5 rows of items from 'a'..'h' (the last one held out), each showing 0-3 other keys, some of
    them never an item ('zz'), some the row's own item. Returns (path, {(user, time): (item, [shown keys])})."""
    rng = np.random.default_rng(seed)
    lines, rows = ["user,item,time,shown"], {}
    for user in range(num_users):
        for time in range(5):
            item = "abcdefgh"[int(rng.integers(8))]
            shown = [str(key) for key in rng.choice(list("abcdefgh") + ["zz"], int(rng.integers(4)))]
            if time == 2:
                shown.append(item)
            lines.append(f"user{user},{item},{time},{'|'.join(shown)}")
            rows[(f"user{user}", time)] = (item, shown)
    path.write_text("\n".join(lines) + "\n")
    return str(path), rows


def _expected(prepared, rows, columns):
    """[n, max_negatives] the negative ids the log's keys map to for each prepared row, -1 padded."""
    id_of = {key: index for index, key in enumerate(prepared.item_keys)}
    expected = []
    for user, item_id, time in zip(columns["user_id"], columns["item_id"], columns["timestamp"]):
        _, shown = rows[(prepared.user_keys[user], int(time))]
        ids = [id_of[key] for key in shown if key in id_of and id_of[key] != item_id]
        expected.append(ids)
    width = max(map(len, expected))
    return np.array([ids + [-1] * (width - len(ids)) for ids in expected], np.int64)


def test_prepared_batches_carry_each_rows_keys_as_ids_padded(tmp_path):
    path, rows = _log(tmp_path / "log.csv")
    summary = prepare.prepare(path, SCHEMA, str(tmp_path / "out"), num_shards=2)
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    with open(tmp_path / "out" / "metadata.json") as file:
        metadata = json.load(file)
    counts = metadata["logged_negatives"]
    assert counts == summary.logged_negatives and counts["column"] == "shown"
    assert counts["read"] == counts["kept"] + sum(counts["dropped"].values())
    assert counts["dropped"]["unseen_item"] > 0 and counts["dropped"]["own_item"] >= 30  # every time-2 row
    assert "logged negatives ('shown')" in summary.report()

    train = records.read_all(prepared.train_files)
    expected = _expected(prepared, rows, train)
    assert metadata["max_negatives"] == train["negative_ids"].shape[1] >= expected.shape[1]
    width = metadata["max_negatives"]
    padded = np.pad(expected, [(0, 0), (0, width - expected.shape[1])], constant_values=-1)
    np.testing.assert_array_equal(train["negative_ids"], padded)
    assert (train["negative_ids"] >= 0).sum() + (records.read_all(prepared.eval_files)["negative_ids"] >= 0).sum() \
        == counts["kept"]

    # A batch in memory and a streamed one hold the rows' own lists.
    for max_in_memory_bytes in (pipeline.MAX_IN_MEMORY_BYTES, 0):
        batch = next(iter(pipeline.training_dataset(prepared.train_files, 16, seed=1,
                                                    max_in_memory_bytes=max_in_memory_bytes)))
        assert batch["negative_ids"].shape == (16, width) and batch["negative_ids"].dtype.name == "int64"
        by_row = {(u, t): tuple(n) for u, t, n in zip(train["user_id"], train["timestamp"], train["negative_ids"])}
        for user, time, negatives in zip(*(batch[name].numpy() for name in ("user_id", "timestamp", "negative_ids"))):
            assert tuple(negatives) == by_row[(user, time)]


def test_rows_of_several_positives_put_their_lists_side_by_side(tmp_path):
    path, _ = _log(tmp_path / "log.csv")
    prepare.prepare(path, SCHEMA, str(tmp_path / "out"), num_shards=2)
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    width = records.max_negatives(prepared.train_files)
    batch = next(iter(pipeline.training_dataset(prepared.train_files, 4, seed=1, num_true=2)))
    assert batch["negative_ids"].shape == (4, 2 * width)


def test_corpus_without_the_column_has_no_negative_ids(tmp_path):
    path, _ = _log(tmp_path / "log.csv")
    plain = Schema(user_column="user", item_column="item", timestamp_column="time")
    prepare.prepare(path, plain, str(tmp_path / "out"), num_shards=2)
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    with open(tmp_path / "out" / "metadata.json") as file:
        assert "max_negatives" not in json.load(file)
    assert "negative_ids" not in records.read_all(prepared.train_files)
    for max_in_memory_bytes in (pipeline.MAX_IN_MEMORY_BYTES, 0):
        batch = next(iter(pipeline.training_dataset(prepared.train_files, 16, seed=1,
                                                    max_in_memory_bytes=max_in_memory_bytes)))
        assert "negative_ids" not in batch


def test_an_empty_key_among_the_negatives_names_file_and_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,time,shown\nu1,a,1,b\nu1,b,2,\nu2,a,3,b||c\nu2,b,4,a\n")
    with pytest.raises(DataError, match=rf"^{path}:4: empty key in column 'shown'$"):
        prepare.prepare(str(path), SCHEMA, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    summary = prepare.prepare(str(path), SCHEMA, str(tmp_path / "out"), skip_bad_records=True)
    assert summary.bad_records.count == 1 and summary.logged_negatives["read"] == 2  # u1's 'b' and u2's 'a'
