import numpy as np

from data import splits


def test_last_split_holds_out_each_users_latest_and_keeps_short_histories_in_train():
    user = np.array([0, 0, 0, 1, 1, 2, 0, 1])
    timestamp = np.array([5, 1, 9, 3, 3, 7, 2, 1])
    is_eval = splits.held_out(user, timestamp, "last", eval_per_user=1)
    # user 0: time 9 (row 2); user 1: times 3, 3 tie -> the later row (4); user 2 has one interaction: train.
    np.testing.assert_array_equal(np.flatnonzero(is_eval), [2, 4])
    two = splits.held_out(user, timestamp, "last", eval_per_user=2)
    np.testing.assert_array_equal(np.flatnonzero(two), [0, 2, 3, 4])
    for u in np.unique(user[two]):  # nothing held out is older than what the user trains on
        assert timestamp[two & (user == u)].min() >= timestamp[~two & (user == u)].max()


def test_random_split_is_seeded_and_per_user():
    rng = np.random.default_rng(0)
    user = rng.integers(0, 50, 2000)
    timestamp = np.arange(2000)
    first = splits.held_out(user, timestamp, "random", eval_per_user=3, seed=1)
    np.testing.assert_array_equal(first, splits.held_out(user, timestamp, "random", eval_per_user=3, seed=1))
    assert not np.array_equal(first, splits.held_out(user, timestamp, "random", eval_per_user=3, seed=2))
    np.testing.assert_array_equal(np.bincount(user[first], minlength=50), 3)
    assert not np.array_equal(first, splits.held_out(user, timestamp, "last", eval_per_user=3))


def test_validation_is_each_users_last_training_rows_and_short_users_keep_theirs():
    # user 0: times 1, 4, 4, 9 (rows 0, 1, 5, 2); user 1: 2, 3 (rows 3, 4); user 2: one row (6).
    user = np.array([0, 0, 0, 1, 1, 0, 2])
    timestamp = np.array([1, 4, 9, 2, 3, 4, 5])
    is_eval = splits.held_out(user, timestamp, "last", eval_per_user=1)
    np.testing.assert_array_equal(np.flatnonzero(is_eval), [2, 4])  # user 0's time 9, user 1's time 3
    one = splits.validation(user, timestamp, is_eval, 1)
    # user 0's training times 1, 4, 4: the tie goes by file order, row 5 is the later; user 1 keeps its one
    # training row (row 3), user 2 its only row (6): too few to give one up.
    np.testing.assert_array_equal(np.flatnonzero(one), [5])
    two = splits.validation(user, timestamp, is_eval, 2)
    np.testing.assert_array_equal(np.flatnonzero(two), [1, 5])  # user 0 keeps row 0 in train
    assert not splits.validation(user, timestamp, is_eval, 0).any()
    assert not (one & is_eval).any() and not (two & is_eval).any()
