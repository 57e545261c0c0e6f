import numpy as np
import pytest

from retrieval import index, metrics


def _clustered(rng, count, centers):
    picks = rng.integers(0, len(centers), count)
    return (centers[picks] + 0.5 * rng.normal(size=(count, centers.shape[1]))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    """30,000 items and 300 queries of dim 32 around 300 topic centers, like trained embeddings."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(300, 32)).astype(np.float32)
    return _clustered(rng, 30_000, centers), _clustered(rng, 300, centers)


def test_brute_force_index_equals_exact_top_k(corpus):
    items, queries = corpus
    brute_force = index.build_index("brute_force", items, 50)
    scores, ids = index.search(brute_force, queries, batch_size=128)
    exact_scores, exact_ids = metrics.exact_top_k(queries, items, 50)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)
    assert index.index_recall(brute_force, items, queries, 50) == 1.0


def test_scann_recall_at_10_against_exact(corpus):
    items, queries = corpus
    scann = index.build_index("scann", items, 10)
    scores, ids = index.search(scann, queries)
    assert ids.shape == (300, 10) and ids.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-5), "best first"
    recall = index.index_recall(scann, items, queries, 10)
    assert 0.9 <= recall <= 1.0, recall


def test_recall_against_exact_by_hand():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approximate = np.array([[4, 3, 9, 9, 1], [0, 0, 0, 0, 5]])  # only the first K=4 columns count
    assert index.recall_against_exact(approximate, exact) == pytest.approx((2 / 4 + 0 / 4) / 2)


def test_bad_index_and_k():
    items = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="brute_force"):
        index.build_index("annoy", items, 3)
    with pytest.raises(ValueError, match="corpus size 5"):
        index.build_index("scann", items, 6)
    with pytest.raises(ValueError, match="corpus size 5"):
        index.build_index("brute_force", items, 6)
