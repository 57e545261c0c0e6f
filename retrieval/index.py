"""Top-K indexes over the item tower's embeddings of the whole corpus: exact brute force and ScaNN.

Both are tf.Modules built from item embeddings [num_items, dim] with one call, queries [q, dim] ->
(scores [q, k], ids [q, k] int64), best first, so either can sit inside a SavedModel. A SavedModel holding the
ScaNN index needs its custom ops: the loading process must `import scann` before `tf.saved_model.load`.
"""

import math
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from retrieval import metrics


class BruteForceIndex(tf.Module):
    """Exact top-k by dot product over every item (retrieval.metrics' chunked two-stage top-k).

    Deliberately not tfrs.layers.factorized_top_k.BruteForce: that one materialises [q, num_items] scores and
    runs top_k over all of them, several times slower on CPU (scripts/bench_eval.py, docs/bench_eval.md).
    """

    def __init__(self, item_embeddings, k: int, item_chunk_size: int = metrics.ITEM_CHUNK, name: str = "brute_force"):
        super().__init__(name=name)
        item_embeddings = tf.convert_to_tensor(item_embeddings)
        self.k = k
        self.item_embeddings = tf.Variable(item_embeddings, trainable=False, name="item_embeddings")
        self._top_k = metrics.top_k_function(self.item_embeddings, k, item_chunk_size)

    def __call__(self, queries):
        """queries [q, dim] -> (scores [q, k] float, ids [q, k] int64)."""
        return self._top_k(queries)


class ScaNNIndex(tf.Module):
    """Approximate top-k with ScaNN (tfrs.layers.factorized_top_k.ScaNN: tree + asymmetric hashing + reordering).

    Defaults follow ScaNN's guidance: about sqrt(num_items) leaves, searching 10% of them (more in small corpora,
    so that the searched leaves hold twice the reordering candidates), and exact reordering of the best
    `num_reordering_candidates` (10 k, at least 100).
    """

    def __init__(
        self,
        item_embeddings,
        k: int,
        num_leaves: Optional[int] = None,
        num_leaves_to_search: Optional[int] = None,
        num_reordering_candidates: Optional[int] = None,
        name: str = "scann",
    ):
        super().__init__(name=name)
        item_embeddings = tf.convert_to_tensor(item_embeddings, tf.float32)
        num_items = int(item_embeddings.shape[0])
        if not 1 <= k <= num_items:
            raise ValueError(f"k={k} must be between 1 and the corpus size {num_items}")
        num_leaves = num_leaves or max(1, min(num_items // 10, int(math.sqrt(num_items))))
        num_reordering_candidates = min(num_items, num_reordering_candidates or max(100, 10 * k))
        # The searched leaves must hold well over the reordering candidates, or small corpora lose recall.
        covering = math.ceil(2 * num_reordering_candidates * num_leaves / num_items)
        num_leaves_to_search = num_leaves_to_search or min(num_leaves, max(1, num_leaves // 10, covering))
        self.k = k
        self.layer = tfrs.layers.factorized_top_k.ScaNN(
            k=k,
            num_leaves=num_leaves,
            num_leaves_to_search=num_leaves_to_search,
            num_reordering_candidates=num_reordering_candidates,
        )
        self.layer.index(item_embeddings, tf.range(num_items, dtype=tf.int64))

    @tf.function
    def __call__(self, queries):
        """queries [q, dim] -> (scores [q, k] float, ids [q, k] int64)."""
        return self.layer(queries, k=self.k)


def build_index(kind: str, item_embeddings, k: int) -> tf.Module:
    """'brute_force' or 'scann' index over item embeddings [num_items, dim]."""
    if kind == "brute_force":
        return BruteForceIndex(item_embeddings, k)
    if kind == "scann":
        return ScaNNIndex(item_embeddings, k)
    raise ValueError(f"index {kind!r}: expected 'brute_force' or 'scann'")


def search(index: tf.Module, query_embeddings, batch_size: int = 256):
    """Runs the index over queries [num_queries, dim] in batches -> (scores, ids) NumPy [num_queries, k]."""
    query_embeddings = np.asarray(query_embeddings, np.float32)
    scores, ids = [], []
    for start in range(0, len(query_embeddings), batch_size):
        batch_scores, batch_ids = index(tf.constant(query_embeddings[start : start + batch_size]))
        scores.append(batch_scores.numpy())
        ids.append(batch_ids.numpy())
    return np.concatenate(scores), np.concatenate(ids)


def recall_against_exact(approximate_ids, exact_ids) -> float:
    """Recall@K of an index: the mean fraction of each query's exact top-K ids it returned.

    approximate_ids [q, >= K], exact_ids [q, K] (K = exact_ids.shape[1]).
    """
    approximate_ids = np.asarray(approximate_ids)
    exact_ids = np.asarray(exact_ids)
    k = exact_ids.shape[1]
    found = [len(np.intersect1d(got[:k], want)) for got, want in zip(approximate_ids, exact_ids)]
    return float(np.mean(found) / k)


def index_recall(index: tf.Module, item_embeddings, query_embeddings, k: int) -> float:
    """Recall@k of `index` against exact top-k for queries [q, dim] over item embeddings [num_items, dim]."""
    _, exact_ids = metrics.exact_top_k(query_embeddings, item_embeddings, k)
    _, index_ids = search(index, query_embeddings)
    return recall_against_exact(index_ids, exact_ids)
