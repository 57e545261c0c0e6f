"""Training input: every row once per epoch, exact resume from a step, shards that add up to the global batch."""

import numpy as np
import pytest

from data import history, pipeline, records

NUM_ROWS, BATCH = 1000, 64


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    columns = {
        "user_id": np.arange(NUM_ROWS, dtype=np.int64),  # row number, so batches say which rows they hold
        "item_id": rng.integers(0, 50, NUM_ROWS).astype(np.int64),
        "timestamp": np.arange(NUM_ROWS, dtype=np.int64),
    }
    return records.write_interactions(str(directory), "train", columns, num_shards=4)


def _rows(dataset, steps):
    return [batch["user_id"].numpy() for batch in dataset.take(steps)]


@pytest.mark.parametrize("max_in_memory_bytes", [pipeline.MAX_IN_MEMORY_BYTES, 0], ids=["in_memory", "streaming"])
def test_resume_at_a_step_gives_the_same_batches(files, max_in_memory_bytes):
    steps_per_epoch = NUM_ROWS // BATCH  # 15: step 20 is inside the second epoch
    kwargs = dict(seed=3, repeat=True, max_in_memory_bytes=max_in_memory_bytes, shuffle_buffer=300)
    whole = _rows(pipeline.training_dataset(files, BATCH, **kwargs), 2 * steps_per_epoch)
    resumed = _rows(pipeline.training_dataset(files, BATCH, start_step=20, **kwargs), 2 * steps_per_epoch - 20)
    assert len(resumed) == len(whole[20:]) == 2 * steps_per_epoch - 20  # every batch after step 20 compared
    for expected, got in zip(whole[20:], resumed):
        np.testing.assert_array_equal(expected, got)
    other_seed = _rows(pipeline.training_dataset(files, BATCH, **{**kwargs, "seed": 4}), 1)
    assert not np.array_equal(whole[0], other_seed[0])


def test_in_memory_epoch_is_a_permutation_and_epochs_differ(files):
    steps_per_epoch = NUM_ROWS // BATCH
    batches = _rows(pipeline.training_dataset(files, BATCH, seed=1, repeat=True), 2 * steps_per_epoch)
    first, second = np.concatenate(batches[:steps_per_epoch]), np.concatenate(batches[steps_per_epoch:])
    assert len(np.unique(first)) == len(first) == steps_per_epoch * BATCH  # no row twice within an epoch
    assert not np.array_equal(first, second)
    assert abs(np.mean(first) - NUM_ROWS / 2) < 60  # drawn from the whole split, not its start
    one_pass = _rows(pipeline.training_dataset(files, BATCH, seed=1, repeat=False), 100)
    assert len(one_pass) == steps_per_epoch


def test_shards_add_up_to_the_global_batch(files):
    global_batches = _rows(pipeline.training_dataset(files, BATCH, seed=5, repeat=True), 3)
    shards = [_rows(pipeline.training_dataset(files, BATCH, seed=5, repeat=True, num_shards=2, shard_index=index), 3)
              for index in range(2)]
    for step in range(3):
        assert len(shards[0][step]) == BATCH // 2
        np.testing.assert_array_equal(np.concatenate([shards[0][step], shards[1][step]]), global_batches[step])
    with pytest.raises(ValueError, match="batch_size=63"):
        pipeline.training_dataset(files, 63, num_shards=2)


# Histories and time features in the batches (data.pipeline.QueryInputs).


@pytest.fixture(scope="module")
def timed_log(tmp_path_factory):
    """A log whose items are unique per row (item = row number), so a history entry names the row it came from;
    few distinct times per user, so ties are common."""
    rng = np.random.default_rng(5)
    num_rows = 2000
    columns = {
        "user_id": rng.integers(0, 40, num_rows).astype(np.int64),
        "item_id": np.arange(num_rows, dtype=np.int64),
        "timestamp": (1_600_000_000 + rng.integers(0, 60, num_rows) * 3_700).astype(np.int64),
    }
    directory = tmp_path_factory.mktemp("timed")
    return columns, records.write_interactions(str(directory), "train", columns, num_shards=4)


def _query_inputs(columns, history_length=6, **kwargs):
    log = history.history_log(columns["user_id"], columns["item_id"], columns["timestamp"])
    return pipeline.QueryInputs(log, history_length, time_features=True, **kwargs)


@pytest.mark.parametrize("max_in_memory_bytes", [pipeline.MAX_IN_MEMORY_BYTES, 0], ids=["in_memory", "streaming"])
def test_batch_histories_hold_no_target_and_no_later_item(timed_log, max_in_memory_bytes):
    columns, files = timed_log
    dataset = pipeline.training_dataset(files, 100, seed=1, max_in_memory_bytes=max_in_memory_bytes,
                                        shuffle_buffer=500, query_inputs=_query_inputs(columns))
    user, time = columns["user_id"], columns["timestamp"]
    for batch in dataset.take(5).as_numpy_iterator():
        histories, rows = batch["history"], batch["item_id"]  # item = row number
        assert histories.shape == (100, 6)
        present = histories != history.PAD
        source = np.where(present, histories, 0)
        assert not np.any(present & (source == rows[:, None])), "a row's history holds its own target"
        assert np.all(~present | (time[source] < time[rows][:, None])), "a history holds an item of its time or later"
        assert np.all(~present | (user[source] == user[rows][:, None])), "a history holds another user's item"
        expected = history.histories_before(user, columns["item_id"], time, user[rows], time[rows], 6)
        np.testing.assert_array_equal(histories, expected)
        np.testing.assert_array_equal(batch["hour_of_day"], history.hour_of_day(time[rows]))
        np.testing.assert_array_equal(batch["day_of_week"], history.day_of_week(time[rows]))


def test_rows_of_several_positives_see_the_history_before_their_earliest(timed_log):
    columns, files = timed_log
    dataset = pipeline.training_dataset(files, 20, seed=1, num_true=3, shuffle_buffer=500,
                                        query_inputs=_query_inputs(columns))
    time = columns["timestamp"]
    for batch in dataset.take(3).as_numpy_iterator():
        rows = batch["item_id"]  # [20, 3]
        present = batch["history"] != history.PAD
        source = np.where(present, batch["history"], 0)
        earliest = time[rows].min(axis=1)
        assert np.all(~present | (time[source] < earliest[:, None])), "a history holds a target of its row"


@pytest.mark.parametrize("max_in_memory_bytes", [pipeline.MAX_IN_MEMORY_BYTES, 0], ids=["in_memory", "streaming"])
def test_excluded_users_never_reach_a_batch(timed_log, max_in_memory_bytes):
    columns, files = timed_log
    excluded = np.array([3, 7, 11], np.int64)
    query_inputs = _query_inputs(columns, excluded_users=excluded)
    dataset = pipeline.training_dataset(files, 100, seed=2, repeat=True, max_in_memory_bytes=max_in_memory_bytes,
                                        shuffle_buffer=500, query_inputs=query_inputs)
    users = np.concatenate([batch["user_id"] for batch in dataset.take(40).as_numpy_iterator()])
    assert len(users) == 4000 and not np.isin(users, excluded).any()
    assert set(np.unique(users)) == set(np.unique(columns["user_id"])) - set(excluded.tolist())
