import datetime

import numpy as np
import pytest

from data import history, splits

PAD = history.PAD


def _columns(rows):
    """[(user, item, time), ...] -> three int64 columns."""
    return tuple(np.array(column, np.int64) for column in zip(*rows))


# User 7 logs items 2 and 3 at the same second; user 9's rows are out of time order in the file.
LOG = [(7, 1, 10), (7, 2, 20), (7, 3, 20), (7, 4, 30), (9, 5, 20), (9, 6, 5)]


def test_hand_worked_histories_with_ties():
    user, item, time = _columns(LOG)
    expected = [
        [PAD, PAD, PAD],  # user 7's first
        [1, PAD, PAD],  # item 2 does not see item 3, logged the same second
        [1, PAD, PAD],  # ... nor item 3 item 2, whatever the file order
        [3, 2, 1],  # ties among earlier items: larger id first
        [6, PAD, PAD],  # user 9's earlier row comes later in the file
        [PAD, PAD, PAD],
    ]
    np.testing.assert_array_equal(history.training_histories(user, item, time, history_length=3), expected)
    np.testing.assert_array_equal(history.training_histories(user, item, time, history_length=2)[3], [3, 2])
    assert history.training_histories(user, item, time, history_length=0).shape == (6, 0)


def test_histories_do_not_depend_on_row_order():
    user, item, time = _columns(LOG)
    permutation = np.random.default_rng(0).permutation(len(LOG))
    shuffled = history.training_histories(user[permutation], item[permutation], time[permutation], history_length=1)
    # history_length=1 truncates inside user 7's tie at t=20: the kept item must not depend on file order.
    np.testing.assert_array_equal(shuffled, history.training_histories(user, item, time, history_length=1)[permutation])


def test_hand_worked_eval_rows_see_training_items_before_them():
    user, item, time = _columns(LOG)
    eval_user, eval_time = np.array([7, 7, 9, 8]), np.array([25, 20, 100, 50])
    expected = [[3, 2, 1, PAD], [1, PAD, PAD, PAD], [5, 6, PAD, PAD], [PAD] * 4]  # user 8 has no training rows
    np.testing.assert_array_equal(history.histories_before(user, item, time, eval_user, eval_time, 4), expected)


def _brute_force_histories(log_user, log_item, log_time, query_user, query_time, history_length):
    """One query at a time: the user's log rows strictly before, newest first, ties by larger item first."""
    histories = np.full((len(query_user), history_length), PAD, np.int64)
    for row, (user, time) in enumerate(zip(query_user, query_time)):
        earlier = (log_user == user) & (log_time < time)
        newest_first = np.lexsort((-log_item[earlier], -log_time[earlier]))
        items = log_item[earlier][newest_first][:history_length]
        histories[row, : len(items)] = items
    return histories


def _random_log(rng, num_rows, num_users=60, num_times=40, num_items=None):
    """Few distinct times so that ties are common; num_items=None makes every row's item unique (item = row)."""
    user = rng.integers(0, num_users, num_rows)
    time = rng.integers(0, num_times, num_rows) * 1000
    item = np.arange(num_rows) if num_items is None else rng.integers(0, num_items, num_rows)
    return user, item.astype(np.int64), time


@pytest.mark.parametrize("history_length", [1, 5, 50])
def test_random_log_matches_brute_force_reference(history_length):
    rng = np.random.default_rng(history_length)
    user, item, time = _random_log(rng, 3000, num_items=300)
    np.testing.assert_array_equal(
        history.training_histories(user, item, time, history_length),
        _brute_force_histories(user, item, time, user, time, history_length),
    )


def test_random_log_histories_hold_only_strictly_earlier_rows_of_the_user_newest_first():
    """Items are unique per row here, so each history entry names the row it came from."""
    rng = np.random.default_rng(1)
    user, item, time = _random_log(rng, 5000)
    history_length = 20
    histories = history.training_histories(user, item, time, history_length)  # [n, L]
    present = histories != PAD
    source = np.where(present, histories, 0)  # [n, L] the log row each entry came from (item = row)
    assert not np.any(present & (source == np.arange(len(user))[:, None])), "a row saw its own target"
    assert np.all(~present | (user[source] == user[:, None])), "a row saw another user's item"
    assert np.all(~present | (time[source] < time[:, None])), "a row saw an item of its own time or later"
    source_time = np.where(present, time[source], -1)  # times are >= 0
    assert np.all(np.diff(source_time, axis=1) <= 0), "history not newest first"
    assert np.all(present[:, :-1] | ~present[:, 1:]), "padding only at the end"
    # And every earlier row of the user is there, up to history_length.
    num_earlier = np.array([np.sum((user == u) & (time < t)) for u, t in zip(user, time)])
    np.testing.assert_array_equal(present.sum(axis=1), np.minimum(num_earlier, history_length))


def test_random_eval_rows_see_only_earlier_training_items():
    rng = np.random.default_rng(2)
    user, item, time = _random_log(rng, 4000)
    is_eval = rng.random(len(user)) < 0.2
    train, held = ~is_eval, is_eval
    histories = history.histories_before(user[train], item[train], time[train], user[held], time[held], 10)
    present = histories != PAD
    assert np.all(~present | train[np.where(present, histories, 0)]), "an eval row saw a held-out item"
    np.testing.assert_array_equal(
        histories, _brute_force_histories(user[train], item[train], time[train], user[held], time[held], 10)
    )


def test_cold_user_queries_hold_out_the_last_and_give_the_earlier_items():
    # User 1 has four interactions (two held out); user 2 two, fewer than eval_per_user + 1 (no rows).
    rows = [(1, 12, 3), (2, 20, 1), (1, 10, 1), (1, 13, 4), (2, 21, 2), (1, 11, 2)]
    user, item, time = _columns(rows)
    cold = history.cold_user_queries(user, item, time, eval_per_user=2, history_length=3)
    np.testing.assert_array_equal(cold.rows, [0, 3])
    # The later held-out row does not see the earlier held-out one: both see the user's kept items only.
    np.testing.assert_array_equal(cold.history, [[11, 10, PAD], [11, 10, PAD]])


def test_cold_user_queries_on_a_random_log():
    rng = np.random.default_rng(3)
    user, item, time = _random_log(rng, 3000, num_users=200)
    cold = history.cold_user_queries(user, item, time, eval_per_user=2, history_length=8)
    is_eval = splits.held_out(user, time, "last", 2)
    np.testing.assert_array_equal(cold.rows, np.flatnonzero(is_eval))
    kept = ~is_eval
    expected = _brute_force_histories(user[kept], item[kept], time[kept], user[cold.rows], time[cold.rows], 8)
    np.testing.assert_array_equal(cold.history, expected)


def test_bad_columns_say_what_is_wrong():
    with pytest.raises(ValueError, match="one length"):
        history.training_histories(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="item ids must be >= 0"):
        history.training_histories(np.zeros(2), np.array([0, -1]), np.zeros(2))
    with pytest.raises(ValueError, match="history_length"):
        history.training_histories(np.zeros(2), np.zeros(2), np.zeros(2), history_length=-1)


def test_empty_log_and_empty_queries():
    empty = np.zeros(0, np.int64)
    no_log = history.histories_before(empty, empty, empty, np.array([1]), np.array([5]), history_length=2)
    np.testing.assert_array_equal(no_log, [[PAD, PAD]])
    assert history.training_histories(empty, empty, empty, 4).shape == (0, 4)


def _utc(*fields):
    return int(datetime.datetime(*fields, tzinfo=datetime.timezone.utc).timestamp())


def test_hour_and_day_of_week_on_known_dates():
    moments = {
        _utc(2021, 1, 1, 0, 0, 0): (0, 4),  # a Friday
        _utc(2024, 2, 29, 13, 45, 10): (13, 3),  # leap day, a Thursday
        _utc(2000, 1, 2, 23, 59, 59): (23, 6),  # a Sunday
        _utc(2023, 10, 2, 7, 0, 0): (7, 0),  # a Monday: Monday = 0
        -1: (23, 2),  # 1969-12-31 23:59:59, a Wednesday: floor division before 1970
    }
    timestamps = np.array(list(moments))
    np.testing.assert_array_equal(history.hour_of_day(timestamps), [hour for hour, _ in moments.values()])
    np.testing.assert_array_equal(history.day_of_week(timestamps), [day for _, day in moments.values()])


def test_hour_and_day_of_week_agree_with_datetime():
    timestamps = np.random.default_rng(4).integers(-(10**9), 4 * 10**9, 500)
    moments = [datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc) for t in timestamps]
    np.testing.assert_array_equal(history.hour_of_day(timestamps), [moment.hour for moment in moments])
    np.testing.assert_array_equal(history.day_of_week(timestamps), [moment.weekday() for moment in moments])


@pytest.mark.parametrize("history_length", [1, 7, 50])
def test_sorted_history_log_gives_the_same_histories(history_length):
    rng = np.random.default_rng(10 + history_length)
    user, item, time = _random_log(rng, 3000, num_items=300)
    log = history.history_log(user, item, time)
    np.testing.assert_array_equal(
        history.histories_from_log(log, user, time, history_length),
        history.training_histories(user, item, time, history_length),
    )
    # Queries at times and of users the log never saw (user 999 has no rows: an empty history).
    query_user, query_time = rng.integers(0, 1000, 500), rng.integers(-5, 50_000, 500)
    np.testing.assert_array_equal(
        history.histories_from_log(log, query_user, query_time, history_length),
        history.histories_before(user, item, time, query_user, query_time, history_length),
    )


def test_cold_user_ids_are_a_seeded_share_of_users():
    cold = history.cold_user_ids(1000, 0.1, seed=4)
    assert len(cold) == 100 and len(np.unique(cold)) == 100 and np.all(np.diff(cold) > 0)
    assert 0 <= cold.min() and cold.max() < 1000
    np.testing.assert_array_equal(cold, history.cold_user_ids(1000, 0.1, seed=4))
    assert not np.array_equal(cold, history.cold_user_ids(1000, 0.1, seed=5))
    assert len(history.cold_user_ids(1000, 0.0, seed=4)) == 0
    with pytest.raises(ValueError, match="cold_users"):
        history.cold_user_ids(1000, 1.0, seed=4)
