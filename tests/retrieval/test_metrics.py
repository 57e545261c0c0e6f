import numpy as np
import pytest

from retrieval import metrics


def _numpy_reference(queries, items, k, exclude=None):
    scores = queries @ items.T
    if exclude is not None:
        for row, ids in enumerate(exclude):
            scores[row, ids[ids >= 0]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("item_chunk_size", [7, 64, 1000])
def test_exact_top_k_equals_numpy_over_chunks(item_chunk_size):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(37, 8)).astype(np.float32)
    items = rng.normal(size=(203, 8)).astype(np.float32)
    scores, ids = metrics.exact_top_k(queries, items, 15, query_chunk_size=10, item_chunk_size=item_chunk_size)
    reference_scores, reference_ids = _numpy_reference(queries, items, 15)
    np.testing.assert_allclose(scores, reference_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ids, reference_ids)


def test_exclusion_and_ties():
    queries = np.ones((2, 2), np.float32)
    items = np.array([[1, 0], [0, 1], [1, 1], [1, 1], [0, 0]], np.float32)  # items 2 and 3 tie, 0 and 1 tie
    exclude = np.array([[2, -1], [-1, -1]])
    scores, ids = metrics.exact_top_k(queries, items, 3, item_chunk_size=2, exclude_ids=exclude)
    np.testing.assert_allclose(scores, [[2, 1, 1], [2, 2, 1]])
    assert ids[0, 0] == 3 and set(ids[0, 1:]) == {0, 1}
    assert set(ids[1, :2]) == {2, 3}
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
