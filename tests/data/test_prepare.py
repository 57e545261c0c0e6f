"""data.prepare on small real files: ids by training count, OOV, leak-free splits, features, atomic output."""

import dataclasses
import json
import os

import numpy as np
import pytest

from data import corpus, prepare, records
from data.readers import DataError
from data.schema import Schema
from tests.conftest import run_module

SCHEMA = Schema(
    user_column="user",
    item_column="item",
    timestamp_column="time",
    item_feature_columns=("genres",),
    multi_valued_columns=("genres",),
)
GENRES = {"a": "x|y", "b": "y", "c": "", "d": "z", "e": "y|z"}


def _log(path, seed=0, num_users=40):
    """A log where item i of 'abcde' is drawn with weight 1 / (i + 1), each user's rows in random file order."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,time,genres"]
    for user in range(num_users):
        times = rng.permutation(6)
        for time in times:
            item = "abcde"[min(int(rng.zipf(1.6)) - 1, 4)]
            lines.append(f"user{user},{item},{time},{GENRES[item]}")
    path.write_text("\n".join(lines) + "\n")
    return str(path), lines[1:]


def _rows(files):
    columns = records.read_all(files)
    return set(zip(columns["user_id"].tolist(), columns["item_id"].tolist(), columns["timestamp"].tolist()))


def test_prepared_corpus_ranks_items_by_training_count_and_splits_without_leaks(tmp_path):
    path, lines = _log(tmp_path / "log.csv")
    summary = prepare.prepare(path, SCHEMA, str(tmp_path / "out"), num_shards=2)
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    train, held_out = _rows(prepared.train_files), _rows(prepared.eval_files)
    assert not train & held_out, "an eval interaction is also in train"
    assert len(train) + len(held_out) == len(lines) == summary.num_rows_read
    assert prepared.num_eval == len(held_out) == 40  # each user's last (time 5) interaction
    assert {time for _, _, time in held_out} == {5}
    # item_counts are the training counts of each id, non-increasing; the vocabulary file says the same.
    counts = np.bincount([item for _, item, _ in train], minlength=prepared.num_items)
    np.testing.assert_array_equal(counts, prepared.item_counts)
    assert np.all(np.diff(prepared.item_counts) <= 0)
    with open(os.path.join(prepared.directory, corpus.ITEM_VOCABULARY)) as file:
        vocabulary_counts = [int(line.split("\t")[2]) for line in file.read().splitlines()[1:]]
    assert vocabulary_counts == prepared.item_counts.tolist()
    # Users keep their own keys; the user of every row is the one in the log.
    by_key = {(f"{prepared.user_keys[u]}", prepared.item_keys[i], t) for u, i, t in train | held_out}
    assert by_key == {(user, item, int(time)) for user, item, time, _ in (line.split(",") for line in lines)}
    # The genre table holds each item's genres in the genre vocabulary's ids, -1 padded.
    table = prepared.item_features["genres"]
    genre_keys = [line.split("\t")[0] for line in
                  open(os.path.join(prepared.directory, "item_feature-0.tsv")).read().splitlines()[1:]]
    for item_id, key in enumerate(prepared.item_keys):
        assert [genre_keys[value] for value in table[item_id] if value >= 0] == [g for g in GENRES[key].split("|") if g]


def test_rare_items_fold_into_oov_and_their_eval_interactions_are_dropped(tmp_path):
    path, _ = _log(tmp_path / "log.csv")
    every = corpus.PreparedCorpus.load(prepare.prepare(path, SCHEMA, str(tmp_path / "all")).output_dir)
    summary = prepare.prepare(path, SCHEMA, str(tmp_path / "oov"), min_item_count=20)
    folded = corpus.PreparedCorpus.load(summary.output_dir)
    rare = [key for key, count in zip(every.item_keys, every.item_counts) if count < 20]
    assert rare and summary.num_items_folded == len(rare)
    assert folded.num_items == every.num_items - len(rare) + 1
    oov = folded.item_keys.index("<oov>")
    assert summary.oov_item_id == oov
    assert folded.item_counts[oov] == sum(c for c in every.item_counts if c < 20)
    assert np.all(np.diff(folded.item_counts) <= 0)
    assert np.all(folded.item_features["genres"][oov] == -1)
    assert oov not in {item for _, item, _ in _rows(folded.eval_files)}
    assert folded.num_eval == every.num_eval - summary.eval_dropped_oov


def test_failed_prepare_leaves_nothing_and_never_clobbers(tmp_path):
    path, _ = _log(tmp_path / "log.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(open(path).read() + "user1,,9,x\n")
    with pytest.raises(DataError, match=r"bad\.csv:242: empty key in column 'item'"):
        prepare.prepare(str(bad), SCHEMA, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "log.csv"], "no output and no staging dir"

    prepare.prepare(path, SCHEMA, str(tmp_path / "out"))
    before = sorted(os.listdir(tmp_path / "out"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare.prepare(path, SCHEMA, str(tmp_path / "out"))
    with pytest.raises(DataError):
        prepare.prepare(str(bad), SCHEMA, str(tmp_path / "out"), overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == before
    corpus.PreparedCorpus.load(str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "log.csv", "out"]


@pytest.mark.slow  # two fresh processes
def test_command_line_error_is_one_line_and_skip_bad_records_reports(tmp_path):
    path, _ = _log(tmp_path / "log.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(open(path).read().replace("user3,", "user3;", 1))
    flags = ["--user_column=user", "--item_column=item", "--timestamp_column=time", f"--input={bad}"]
    failed = run_module("data.prepare", *flags, f"--output_dir={tmp_path / 'out'}")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith(f"data.prepare: {bad}:")
    assert "missing column" in failed.stderr and not (tmp_path / "out").exists()
    skipped = run_module("data.prepare", *flags, f"--output_dir={tmp_path / 'out'}", "--skip_bad_records")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["num_bad_records"] == 1 and metadata["rows"]["bad_records"] == {"input": 1}
    assert metadata["bad_record_messages"][0].startswith(f"{bad}:") and "missing column" in metadata[
        "bad_record_messages"][0]
    assert corpus.PreparedCorpus.load(str(tmp_path / "out")).num_train + 40 == 239


def test_user_features_from_the_log_and_item_features_from_a_side_file(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item,time,plan\nann,a,1,free\nann,b,2,free\nbob,a,1,paid\nbob,b,2,paid\nbob,c,3,paid\n")
    catalogue = tmp_path / "items.csv"
    catalogue.write_text("item,genres,unused\na,x|y,0\nb,y,0\nz,x,0\n")
    schema = Schema(user_column="user", item_column="item", timestamp_column="time", user_feature_columns=("plan",),
                    item_feature_columns=("genres",), multi_valued_columns=("genres",))
    with pytest.raises(DataError, match=r"log\.csv:1: schema mismatch: .*\['genres'\]"):
        prepare.prepare(str(log), schema, str(tmp_path / "out"))  # genres are not in the log
    prepared = corpus.PreparedCorpus.load(
        prepare.prepare(str(log), schema, str(tmp_path / "out"), item_features_input=str(catalogue)).output_dir
    )
    # a and b take their genres from the catalogue (z, never rated, is not an item of the corpus).
    genres = prepared.item_features["genres"]
    assert [int((genres[prepared.item_keys.index(key)] >= 0).sum()) for key in ("a", "b")] == [2, 1]
    plans = prepared.user_features["plan"][:, 0]  # from the log
    assert plans[prepared.user_keys.index("ann")] != plans[prepared.user_keys.index("bob")]
    ids_only = Schema(user_column="user", item_column="item")
    plain = corpus.PreparedCorpus.load(prepare.prepare(str(log), ids_only, str(tmp_path / "plain")).output_dir)
    assert plain.item_features is None and plain.user_features is None


def test_weights_reach_the_training_batches(tmp_path):
    from data import pipeline

    log = tmp_path / "log.csv"
    rows = [f"u{user},i{(user + k) % 7},{k},{(user * 7 + k) % 5}" for user in range(6) for k in range(5)]
    log.write_text("user,item,time,stars\n" + "\n".join(rows) + "\n")
    schema = Schema(user_column="user", item_column="item", timestamp_column="time", weight_column="stars")
    prepared = corpus.PreparedCorpus.load(prepare.prepare(str(log), schema, str(tmp_path / "out")).output_dir)
    columns = records.read_all(prepared.train_files)
    stars = {(f"u{u}", f"i{(u + k) % 7}", k): float((u * 7 + k) % 5) for u in range(6) for k in range(5)}
    read = [stars[(prepared.user_keys[u], prepared.item_keys[i], t)] for u, i, t in
            zip(columns["user_id"], columns["item_id"], columns["timestamp"])]
    np.testing.assert_array_equal(columns["weight"], read)
    batch = next(iter(pipeline.training_dataset(prepared.train_files, 4, seed=0, num_true=2)))
    assert batch["weight"].shape == (4, 2)
    unweighted = records.read_all(corpus.PreparedCorpus.load(prepare.prepare(
        str(log), Schema(user_column="user", item_column="item"), str(tmp_path / "plain")).output_dir).train_files)
    np.testing.assert_array_equal(unweighted["weight"], 1.0)


def _rows_add_up(rows) -> bool:
    used = sum(rows.bad_records.values()) + rows.train + rows.eval + sum(rows.eval_dropped.values())
    return sum(rows.read.values()) == used


def test_every_row_read_is_accounted_for_by_reason(tmp_path):
    path, lines = _log(tmp_path / "log.csv")
    with open(path, "a") as file:  # a user whose held-out item is never in training, and two bad rows
        file.write("late,a,1,x\nlate,zzz,2,x\nlate,b,x,x\n\nlate,,3,x\n")
    summary = prepare.prepare(path, SCHEMA, str(tmp_path / "out"), min_item_count=20, skip_bad_records=True)
    rows = summary.rows
    assert rows.read == {"input": len(lines) + 4} and rows.bad_records == {"input": 2}  # the blank line is no row
    assert rows.eval_dropped["unseen_item"] == 1 and rows.eval_dropped["rare_item"] > 0
    assert rows.eval_dropped["unseen_user"] == 0  # a per-user split holds out only users with training rows
    assert _rows_add_up(rows) and summary.num_rows_read == len(lines) + 4
    assert summary.eval_dropped_oov == rows.eval_dropped["unseen_item"] + rows.eval_dropped["rare_item"]
    with open(tmp_path / "out" / "metadata.json") as file:
        metadata_rows = json.load(file)["rows"]
    assert metadata_rows == rows.metadata() and "validation" not in metadata_rows  # no split asked for


def test_eval_input_without_timestamps_comes_after_the_log(tmp_path):
    train, held_out = tmp_path / "train.csv", tmp_path / "held_out.csv"
    train.write_text("user,item\n" + "".join(f"u{row % 4},i{row % 6}\n" for row in range(24)))
    held_out.write_text("user,item\nu0,i1\nu1,i2\nnew,i3\n")
    schema = Schema(user_column="user", item_column="item")
    summary = prepare.prepare(str(train), schema, str(tmp_path / "out"), eval_input=str(held_out))
    assert (summary.rows.train, summary.rows.eval, summary.rows.eval_dropped["unseen_user"]) == (24, 2, 1)
    prepared = corpus.PreparedCorpus.load(summary.output_dir)
    train_times = records.read_all(prepared.train_files)["timestamp"]
    eval_times = records.read_all(prepared.eval_files)["timestamp"]
    assert sorted(train_times) == list(range(24)) and sorted(eval_times) == [24, 25]  # file order is time order
    with pytest.raises(DataError, match=r"^--eval_input .*nothing-\*\.csv: matches no files$"):
        prepare.prepare(str(train), schema, str(tmp_path / "other"), eval_input=str(tmp_path / "nothing-*.csv"))
    held_out.write_text("user,item\nnew,i3\n")
    with pytest.raises(DataError, match=r"no eval interactions left: every row was dropped \(.*1 user never in"):
        prepare.prepare(str(train), schema, str(tmp_path / "other"), eval_input=str(held_out))


# Each user's rows by time: the last is eval (test), the one before it validation (--validation_per_user=1).
#   u1: a b | c | d     u2: a | b | e     u3: a | c (one training row: kept in train, no validation row)
#   u4: b | z | a       u5: c d | e | a
# Training counts: a 3, b 2, c 1, d 1 (e, z none: the OOV bucket). Dropped for an item never in training: u2's
# eval e; u4's validation z and u5's validation e. Counting the validation rows would have made b 3 and c 2.
VALIDATION_LOG = """user,item,time
u1,a,1
u1,b,2
u1,c,3
u1,d,4
u2,a,1
u2,b,2
u2,e,3
u3,a,5
u3,c,6
u4,b,1
u4,z,2
u4,a,3
u5,c,1
u5,d,2
u5,e,3
u5,a,4
"""


def _keyed_rows(prepared, files):
    """{(user key, item key): history as item keys, newest first} of the records of files."""
    columns = records.read_all(files)
    return {(prepared.user_keys[user], prepared.item_keys[item]): [prepared.item_keys[i] for i in row if i >= 0]
            for user, item, row in zip(columns["user_id"], columns["item_id"], columns["history"])}


def test_validation_split_rows_drops_counts_and_histories(tmp_path):
    (tmp_path / "log.csv").write_text(VALIDATION_LOG)
    schema = Schema(user_column="user", item_column="item", timestamp_column="time")
    summary = prepare.prepare(str(tmp_path / "log.csv"), schema, str(tmp_path / "out"), history_length=3,
                              validation_per_user=1)
    rows = summary.rows
    assert (rows.train, rows.eval, rows.validation) == (7, 4, 2)
    assert rows.eval_dropped["unseen_item"] == 1 and rows.validation_dropped["unseen_item"] == 2
    assert sum(rows.read.values()) == 16 == 7 + 4 + 2 + 1 + 2
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["rows"] == rows.metadata() and metadata["num_validation"] == prepared.num_validation == 2
    assert prepared.has_validation and prepared.num_train == 7
    assert prepared.item_keys == ["a", "b", "c", "d", "<oov>"]
    np.testing.assert_array_equal(prepared.item_counts, [3, 2, 1, 1, 0])  # training rows only
    # A validation row's history: the training rows before it; a test row's: training and validation rows.
    assert _keyed_rows(prepared, prepared.validation_files) == {("u1", "c"): ["b", "a"], ("u2", "b"): ["a"]}
    assert _keyed_rows(prepared, prepared.eval_files) == {
        ("u1", "d"): ["c", "b", "a"], ("u3", "c"): ["a"], ("u4", "a"): ["b"], ("u5", "a"): ["d", "c"]}
    assert set(_keyed_rows(prepared, prepared.train_files)) == {
        ("u1", "a"), ("u1", "b"), ("u2", "a"), ("u3", "a"), ("u4", "b"), ("u5", "c"), ("u5", "d")}
    latest = records.read_latest_histories(prepared.directory, prepared.num_users, 3)
    latest_keys = {prepared.user_keys[user]: [prepared.item_keys[i] for i in row if i >= 0]
                   for user, row in enumerate(latest)}
    assert latest_keys == {"u1": ["c", "b", "a"], "u2": ["b", "a"], "u3": ["a"], "u4": ["b"], "u5": ["d", "c"]}


def test_old_corpus_without_validation_loads_with_none(tmp_path):
    (tmp_path / "log.csv").write_text(VALIDATION_LOG)
    schema = Schema(user_column="user", item_column="item", timestamp_column="time")
    prepare.prepare(str(tmp_path / "log.csv"), schema, str(tmp_path / "out"))
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "out"))
    assert prepared.validation_files == [] and not prepared.has_validation and prepared.num_validation == 0
    assert not list((tmp_path / "out").glob("validation-*"))
