import numpy as np
import pytest
import tensorflow as tf

from retrieval import metrics


def _numpy_reference(queries, items, k, exclude=None):
    """Scores by NumPy, excluded items at -inf, ranked by score then id (a stable sort)."""
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    if exclude is not None:
        for row, ids in enumerate(exclude):
            scores[row, ids[ids >= 0]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def _tied_data(rng, num_queries, num_items, dim):
    """Small-integer embeddings: exact float32 scores with many ties, several across chunk and group borders."""
    queries = rng.integers(-2, 3, size=(num_queries, dim)).astype(np.float32)
    items = rng.integers(-2, 3, size=(num_items, dim)).astype(np.float32)
    return queries, items


@pytest.mark.parametrize("item_chunk_size", [13, 64, 1000, 131_072])
def test_exact_top_k_equals_numpy_with_ties(item_chunk_size):
    rng = np.random.default_rng(0)
    queries, items = _tied_data(rng, 37, 503, 3)  # 3 dims of {-2..2}: at most 125 distinct items, ties everywhere
    scores, ids = metrics.exact_top_k(queries, items, 15, query_chunk_size=10, item_chunk_size=item_chunk_size)
    reference_scores, reference_ids = _numpy_reference(queries, items, 15)
    np.testing.assert_array_equal(scores, reference_scores)
    np.testing.assert_array_equal(ids, reference_ids)


def test_exact_top_k_equals_numpy_on_gaussian_data():
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    items = rng.normal(size=(20_000, 16)).astype(np.float32)
    scores, ids = metrics.exact_top_k(queries, items, 100, item_chunk_size=6000)
    reference_scores, reference_ids = _numpy_reference(queries, items, 100)
    np.testing.assert_allclose(scores, reference_scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ids, reference_ids)


@pytest.mark.parametrize("group_size", [1, 4, 32])
def test_two_stage_top_k_is_exact_with_ties_and_ragged_groups(group_size):
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 6, size=(40, 1001)).astype(np.float32)  # 6 values over 1001 columns: heavy ties
    scores[0] = 5.0  # a row of one value: the answer is columns 0..k-1
    for k in (1, 7, 30):
        values, columns = metrics.top_k_two_stage(tf.constant(scores), k, group_size)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(columns.numpy(), order)
        np.testing.assert_array_equal(values.numpy(), np.take_along_axis(scores, order, axis=1))


def test_exclusion_equals_numpy_with_ties():
    rng = np.random.default_rng(3)
    queries, items = _tied_data(rng, 30, 500, 2)
    exclude = rng.integers(0, 500, size=(30, 40))
    exclude[rng.random(exclude.shape) < 0.3] = -1  # padding
    exclude[:, 0] = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, 0]  # always drop each row's best
    scores, ids = metrics.exact_top_k(queries, items, 20, query_chunk_size=8, item_chunk_size=97, exclude_ids=exclude)
    reference_scores, reference_ids = _numpy_reference(queries, items, 20, exclude)
    np.testing.assert_array_equal(ids, reference_ids)
    np.testing.assert_array_equal(scores, reference_scores)
    for row in range(30):
        assert not set(ids[row]) & set(exclude[row][exclude[row] >= 0])


def test_exclusion_and_ties_by_hand():
    queries = np.ones((2, 2), np.float32)
    items = np.array([[1, 0], [0, 1], [1, 1], [1, 1], [0, 0]], np.float32)  # items 2 and 3 tie, 0 and 1 tie
    exclude = np.array([[2, -1], [-1, -1]])
    scores, ids = metrics.exact_top_k(queries, items, 3, item_chunk_size=2, exclude_ids=exclude)
    np.testing.assert_allclose(scores, [[2, 1, 1], [2, 2, 1]])
    np.testing.assert_array_equal(ids, [[3, 0, 1], [2, 3, 0]])
    with pytest.raises(ValueError, match="corpus size"):
        metrics.exact_top_k(queries, items, 6)


def test_ranking_metrics_by_hand():
    top_ids = np.array([[5, 1, 2], [7, 8, 9], [3, 4, 5]])
    relevant = np.array([[1, -1], [6, -1], [5, 3]])
    result = metrics.ranking_metrics(top_ids, relevant, [1, 3])
    assert result["recall_at_1"] == pytest.approx((0 + 0 + 0.5) / 3)
    assert result["recall_at_3"] == pytest.approx((1 + 0 + 1) / 3)
    assert result["hit_rate_at_3"] == pytest.approx(2 / 3)
    ndcg_first = (1 / np.log2(3)) / 1.0
    ndcg_third = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert result["ndcg_at_3"] == pytest.approx((ndcg_first + 0 + ndcg_third) / 3)
    assert result["mrr"] == pytest.approx((1 / 2 + 0 + 1) / 3)


def _numpy_ranking_metrics(top_ids, relevant_sets, k):
    recall, ndcg, reciprocal = [], [], []
    for ranked, relevant in zip(top_ids, relevant_sets):
        gains = [1.0 if item in relevant else 0.0 for item in ranked]
        recall.append(sum(gains[:k]) / len(relevant))
        dcg = sum(gain / np.log2(rank + 2) for rank, gain in enumerate(gains[:k]))
        ideal = sum(1 / np.log2(rank + 2) for rank in range(min(len(relevant), k)))
        ndcg.append(dcg / ideal)
        reciprocal.append(next((1 / (rank + 1) for rank, gain in enumerate(gains) if gain), 0.0))
    return np.mean(recall), np.mean(ndcg), np.mean(reciprocal)


def test_metrics_of_exact_top_k_equal_numpy_brute_force():
    """End to end on random tied data with exclusion: top-k ids and the metrics both equal a NumPy loop."""
    rng = np.random.default_rng(4)
    queries, items = _tied_data(rng, 60, 300, 3)
    relevant_sets = [set(rng.choice(300, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(60)]
    relevant = metrics.pad_ragged([np.array(sorted(ids)) for ids in relevant_sets])
    exclude = metrics.pad_ragged([rng.choice(300, size=10, replace=False) for _ in range(60)])
    _, top_ids = metrics.exact_top_k(queries, items, 20, item_chunk_size=50, exclude_ids=exclude)
    _, reference_ids = _numpy_reference(queries, items, 20, exclude)
    np.testing.assert_array_equal(top_ids, reference_ids)
    result = metrics.ranking_metrics(top_ids, relevant, [5, 20])
    for k in (5, 20):
        recall, ndcg, mrr = _numpy_ranking_metrics(reference_ids, relevant_sets, k)
        assert result[f"recall_at_{k}"] == pytest.approx(recall)
        assert result[f"ndcg_at_{k}"] == pytest.approx(ndcg)
        assert result["mrr"] == pytest.approx(mrr)
    assert 0 < result["recall_at_20"] < 1
