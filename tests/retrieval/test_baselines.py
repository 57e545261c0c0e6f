"""retrieval/baselines.py: each baseline against a log small enough to work out by hand (the expected counts,
matrix entries, similarities and rankings are derived in the comments), plus the ranking rule of
retrieval.metrics (ties to the lower id, exclusions) on random data."""

import numpy as np
import pytest

from retrieval import baselines, metrics

# Transitions log, rows (user, item, timestamp) in a scrambled input order:
#   user 0: (2, t30) (0, t10) (1, t20) -> by time 0, 1, 2: pairs 0->1, 1->2
#   user 1: (1, t20) (0, t10)          -> 0, 1: pair 0->1
#   user 2: (1, t5) (3, t6)            -> 1, 3: pair 1->3
#   user 3: (2, t7) (0, t7)            -> same second, input order 2, 0: pair 2->0
# Counts: 0->1: 2, 1->2: 1, 1->3: 1, 2->0: 1. Popularity: item 0: 3, item 1: 3, item 2: 2, item 3: 1, so the
# popularity order is 0, 1 (tied at 3: the lower id first), 2, 3.
TRANSITION_LOG = np.array([[0, 2, 30], [0, 0, 10], [0, 1, 20], [1, 1, 20], [1, 0, 10], [2, 1, 5], [2, 3, 6],
                           [3, 2, 7], [3, 0, 7]])


def _transitions():
    users, items, times = TRANSITION_LOG.T
    return baselines.ItemTransitions().fit(users, items, times, num_items=4)


def test_transitions_count_consecutive_pairs_sparse():
    model = _transitions()
    np.testing.assert_array_equal(model.popularity, [3, 3, 2, 1])
    np.testing.assert_array_equal(model.popularity_order, [0, 1, 2, 3])
    # CSR rows: 0 -> [1 (2)]; 1 -> [2 (1), 3 (1)], tied counts by popularity (2 beats 3); 2 -> [0 (1)]; 3 -> [].
    np.testing.assert_array_equal(model.offsets, [0, 1, 3, 4, 4])
    np.testing.assert_array_equal(model.targets, [1, 2, 3, 0])
    np.testing.assert_array_equal(model.counts, [2, 1, 1, 1])


def test_transitions_rank_followers_then_popularity():
    # last 0: its follower 1, then the popular rest 0, 2, 3. last 1: followers 2, 3 (tie broken by popularity),
    # then 0, 1. last 3 never had a follower and -1 is an empty history: both fall back to popularity.
    top = _transitions().top_k(np.array([0, 1, 3, -1]), k=4)
    np.testing.assert_array_equal(top, [[1, 0, 2, 3], [2, 3, 0, 1], [0, 1, 2, 3], [0, 1, 2, 3]])


def test_transitions_exclusion():
    model = _transitions()
    # last 1 without item 2: follower 3, then 0, 1. last 0 without 1 and 0: 2, 3.
    top = model.top_k(np.array([1, 0]), k=2, exclude_ids=np.array([[2, -1], [1, 0]]))
    np.testing.assert_array_equal(top, [[3, 0], [2, 3]])
    # Only item 3 is left: the other slots say "no item" (-1).
    np.testing.assert_array_equal(model.top_k(np.array([0]), 3, np.array([[0, 1, 2]])), [[3, -1, -1]])


def test_transitions_equal_a_dense_two_key_ranking(monkeypatch):
    """On a random log, the sparse top-k equals top_k_of_scores of count * n + (n - 1 - popularity rank), in
    query chunks of a few rows (the chunk bound made tiny)."""
    rng = np.random.default_rng(3)
    num_items, num_rows = 40, 600
    users, items = rng.integers(0, 50, num_rows), rng.integers(0, num_items, num_rows)
    times = rng.integers(0, 90, num_rows)
    model = baselines.ItemTransitions().fit(users, items, times, num_items)
    last_items, exclude_ids = rng.integers(-1, num_items, 30), rng.integers(-1, num_items, (30, 6))
    dense = np.zeros([30, num_items])
    order = np.lexsort((times, users))  # the pairs again, by a plain loop over the sorted log
    for previous, following in zip(order[:-1], order[1:]):
        if users[previous] == users[following]:
            dense[last_items == items[previous], items[following]] += 1
    rank = np.empty(num_items, np.int64)
    rank[np.argsort(-np.bincount(items, minlength=num_items), kind="stable")] = np.arange(num_items)
    expected = baselines.top_k_of_scores(dense * num_items + (num_items - 1 - rank), 10, exclude_ids)
    monkeypatch.setattr(baselines, "CHUNK_ELEMENTS", 100)  # 100 // (3 * 10 + 3 * 6) = 2 queries per chunk
    np.testing.assert_array_equal(model.top_k(last_items, 10, exclude_ids), expected)


# Dense log: X (users x items) = u0 {0, 1} (item 0 logged twice: still one), u1 {0, 1}, u2 {1, 2}, so
#   G = X^T X = [[2, 2, 0], [2, 3, 1], [0, 1, 1]].
DENSE_USERS = np.array([0, 0, 0, 1, 1, 2, 2])
DENSE_ITEMS = np.array([0, 1, 0, 0, 1, 1, 2])


def test_item_cooccurrence_is_binary_x_transpose_x(monkeypatch):
    monkeypatch.setattr(baselines, "CHUNK_ELEMENTS", 3)  # one user per chunk: the chunks' sum
    np.testing.assert_array_equal(baselines.item_cooccurrence(DENSE_USERS, DENSE_ITEMS, 3),
                                  [[2, 2, 0], [2, 3, 1], [0, 1, 1]])


def test_ease_weights_by_hand():
    # l2 = 1: G + I = [[3, 2, 0], [2, 4, 1], [0, 1, 2]], determinant 3 * 7 - 2 * 4 = 13, so
    # P = [[7, -4, 2], [-4, 6, -3], [2, -3, 8]] / 13 and B_ij = -P_ij / P_jj:
    #   column 0 (P_00 = 7/13): B_10 = 4/7, B_20 = -2/7; column 1 (6/13): B_01 = 2/3, B_21 = 1/2;
    #   column 2 (8/13): B_02 = -1/4, B_12 = 3/8.
    model = baselines.Ease(l2=1.0).fit(DENSE_USERS, DENSE_ITEMS, 3)
    np.testing.assert_allclose(model.weights, [[0, 2 / 3, -1 / 4], [4 / 7, 0, 3 / 8], [-2 / 7, 1 / 2, 0]], rtol=1e-6)


def test_ease_ranks_history_scores():
    model = baselines.Ease(l2=1.0).fit(DENSE_USERS, DENSE_ITEMS, 3)
    histories = np.array([[1, -1], [2, 0], [1, 1], [-1, -1]])
    # [1]: row B_1 = [4/7, 0, 3/8] -> 0, 2, 1. [2, 0]: B_2 + B_0 = [-2/7, 7/6, -1/4] -> 1, 2 (-0.25), 0 (-0.29).
    # [1, 1]: a repeated item counts once, as [1]. Empty: all zero, ties by id.
    np.testing.assert_allclose(model.scores(histories)[1], [-2 / 7, 7 / 6, -1 / 4], rtol=1e-6)
    np.testing.assert_array_equal(model.top_k(histories, 3), [[0, 2, 1], [1, 2, 0], [0, 2, 1], [0, 1, 2]])
    # [1] without item 0: 2, 1.
    np.testing.assert_array_equal(model.top_k(histories[:1], 2, np.array([[0]])), [[2, 1]])


def test_item_knn_cosine_with_shrink_by_hand():
    # |U_0| = 2, |U_1| = 3, |U_2| = 1; shrink 1: s_01 = 2 / (sqrt(2) sqrt(3) + 1) = 2 / 3.449 = 0.5798,
    # s_12 = 1 / (sqrt(3) + 1) = 0.3660, s_02 = 0 (no common user). Two neighbours each: all of them.
    model = baselines.ItemKnn(num_neighbours=2, shrink=1.0).fit(DENSE_USERS, DENSE_ITEMS, 3)
    s01, s12 = 2 / (np.sqrt(6) + 1), 1 / (np.sqrt(3) + 1)
    np.testing.assert_allclose(model.weights, [[0, s01, 0], [s01, 0, s12], [0, s12, 0]], rtol=1e-6)
    # [1]: [s01, 0, s12] -> 0, 2, 1.
    np.testing.assert_array_equal(model.top_k(np.array([[1]]), 3), [[0, 2, 1]])


def test_item_knn_keeps_each_items_top_neighbours():
    # shrink 0: s_01 = 2 / sqrt(6) = 0.8165, s_12 = 1 / sqrt(3) = 0.5774. One neighbour: item 0 keeps 1, item 1
    # keeps 0 (0.82 > 0.58), item 2 keeps 1.
    model = baselines.ItemKnn(num_neighbours=1).fit(DENSE_USERS, DENSE_ITEMS, 3)
    s01, s12 = 2 / np.sqrt(6), 1 / np.sqrt(3)
    np.testing.assert_allclose(model.weights, [[0, s01, 0], [s01, 0, 0], [0, s12, 0]], rtol=1e-6)
    # [1]: only 0 scores -> 0, then 1, 2 by id (item 2 pruned from 1's list). [0, 2]: item 1 gets s01 + s12.
    np.testing.assert_allclose(model.scores(np.array([[0, 2]])), [[0, s01 + s12, 0]], rtol=1e-6)
    np.testing.assert_array_equal(model.top_k(np.array([[1, -1], [0, 2], [-1, -1]]), 3),
                                  [[0, 1, 2], [1, 0, 2], [0, 1, 2]])


def test_item_knn_neighbour_ties_go_to_the_lower_id():
    # u0 {0, 1}, u1 {0, 2}: s_01 = s_02 = 1 / sqrt(2); item 0 keeps one neighbour: 1, the lower id.
    model = baselines.ItemKnn(num_neighbours=1).fit(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 2]), 3)
    np.testing.assert_allclose(model.weights[0], [0, 1 / np.sqrt(2), 0], rtol=1e-6)
    np.testing.assert_array_equal(model.top_k(np.array([[0]]), 3), [[1, 0, 2]])


@pytest.mark.parametrize("model", [baselines.Ease(l2=10.0, max_items=3), baselines.ItemKnn(5, max_items=3)])
def test_dense_baselines_refuse_large_catalogues(model):
    with pytest.raises(ValueError, match="num_items=4 is above max_items=3"):
        model.fit(DENSE_USERS, DENSE_ITEMS, num_items=4)
    with pytest.raises(ValueError, match="num_items=20001 is above max_items=20000"):
        baselines.Ease(l2=10.0).fit(DENSE_USERS, DENSE_ITEMS, num_items=20_001)  # refused before any matrix


def test_top_k_of_scores_by_hand():
    scores = np.array([[1.0, 3.0, 3.0, 2.0]])
    np.testing.assert_array_equal(baselines.top_k_of_scores(scores, 3), [[1, 2, 3]])  # 3, 3 tie: lower id first
    np.testing.assert_array_equal(baselines.top_k_of_scores(scores, 3, np.array([[2, -1]])), [[1, 3, 0]])
    # One item left: the excluded ones follow, by id, as metrics.exact_top_k returns them.
    np.testing.assert_array_equal(baselines.top_k_of_scores(scores, 2, np.array([[0, 1, 2]])), [[3, 0]])


def test_top_k_of_scores_equals_the_trainers_exact_top_k():
    """Small-integer scores (ties everywhere) ranked by metrics.exact_top_k as queries x identity items."""
    rng = np.random.default_rng(5)
    scores = rng.integers(-3, 4, size=(25, 60)).astype(np.float32)
    exclude_ids = rng.integers(-1, 60, size=(25, 8))
    _, expected = metrics.exact_top_k(scores, np.eye(60, dtype=np.float32), 20, exclude_ids=exclude_ids)
    np.testing.assert_array_equal(baselines.top_k_of_scores(scores, 20, exclude_ids), expected)
