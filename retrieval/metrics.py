"""Exact full-corpus retrieval metrics: recall@K, NDCG@K and MRR from a chunked top-K over every item.

`exact_top_k` scores every query against every item with matrix multiplies, one item chunk at a time, and
keeps a running top-K, so memory is bounded by [query_chunk, item_chunk] whatever the corpus size.
"""

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf


@tf.function(reduce_retracing=True)
def _top_k_of_chunks(queries, items, k, item_chunk_size, exclude_ids):
    """queries [q, dim], items [n, dim], exclude_ids [q, e] (-1 padded) -> (scores [q, k], ids [q, k] int64)."""
    num_items = tf.shape(items)[0]
    num_queries = tf.shape(queries)[0]
    best_scores = tf.fill([num_queries, k], tf.constant(-np.inf, queries.dtype))
    best_ids = tf.fill([num_queries, k], tf.constant(-1, tf.int64))
    num_chunks = (num_items + item_chunk_size - 1) // item_chunk_size
    for chunk in tf.range(num_chunks):
        start = chunk * item_chunk_size
        chunk_items = items[start : start + item_chunk_size]
        scores = tf.matmul(queries, chunk_items, transpose_b=True)  # [q, chunk]
        chunk_ids = tf.range(start, start + tf.shape(chunk_items)[0], dtype=tf.int64)
        if exclude_ids is not None:
            excluded = tf.reduce_any(tf.equal(exclude_ids[:, :, tf.newaxis], chunk_ids[tf.newaxis, tf.newaxis, :]), 1)
            scores = tf.where(excluded, tf.constant(-np.inf, scores.dtype), scores)
        chunk_k = tf.minimum(k, tf.shape(scores)[1])
        top_scores, top_positions = tf.math.top_k(scores, chunk_k, sorted=False)
        merged_scores = tf.concat([best_scores, top_scores], axis=1)
        merged_ids = tf.concat([best_ids, tf.gather(chunk_ids, top_positions)], axis=1)
        best_scores, positions = tf.math.top_k(merged_scores, k, sorted=True)
        best_ids = tf.gather(merged_ids, positions, batch_dims=1)
    return best_scores, best_ids


def exact_top_k(
    query_embeddings,
    item_embeddings,
    k: int,
    query_chunk_size: int = 1024,
    item_chunk_size: int = 262_144,
    exclude_ids: Optional[np.ndarray] = None,
):
    """Exact top-k items by dot product for every query.

    Args:
      query_embeddings: [num_queries, dim]; item_embeddings: [num_items, dim].
      k: number of items to return per query, at most num_items.
      exclude_ids: optional [num_queries, e] int item ids never to return (-1 pads), e.g. training items.
    Returns:
      (scores [num_queries, k] float, ids [num_queries, k] int64) as NumPy, best first. Ties keep the lower id
      of the earlier chunk first (tf.math.top_k is stable within a chunk).
    """
    item_embeddings = tf.convert_to_tensor(item_embeddings)
    num_items = int(item_embeddings.shape[0])
    if not 1 <= k <= num_items:
        raise ValueError(f"k={k} must be between 1 and the corpus size {num_items}")
    query_embeddings = np.asarray(query_embeddings)
    all_scores, all_ids = [], []
    for start in range(0, len(query_embeddings), query_chunk_size):
        queries = tf.constant(query_embeddings[start : start + query_chunk_size], item_embeddings.dtype)
        excluded = None
        if exclude_ids is not None:
            excluded = tf.constant(np.asarray(exclude_ids[start : start + query_chunk_size], np.int64))
        scores, ids = _top_k_of_chunks(queries, item_embeddings, tf.constant(k), tf.constant(item_chunk_size), excluded)
        all_scores.append(scores.numpy())
        all_ids.append(ids.numpy())
    if not all_scores:
        return np.zeros([0, k], np.float32), np.zeros([0, k], np.int64)
    return np.concatenate(all_scores), np.concatenate(all_ids)


def pad_ragged(rows: Sequence[np.ndarray], pad: int = -1) -> np.ndarray:
    """A list of 1-D id arrays -> [len(rows), max_len] int64, padded with `pad`."""
    width = max((len(row) for row in rows), default=0)
    padded = np.full([len(rows), max(width, 1)], pad, dtype=np.int64)
    for index, row in enumerate(rows):
        padded[index, : len(row)] = row
    return padded


def ranking_metrics(top_ids: np.ndarray, relevant_ids: np.ndarray, ks: Sequence[int]) -> Dict[str, float]:
    """Mean recall@K, hit_rate@K, NDCG@K and MRR over queries.

    Args:
      top_ids: [num_queries, max_k] ranked item ids (best first).
      relevant_ids: [num_queries, r] held-out item ids per query, -1 padded; every row holds at least one.
      ks: cut-offs, each at most max_k.
    Returns:
      {"recall_at_10": ..., "hit_rate_at_10": ..., "ndcg_at_10": ..., "mrr": ...}. recall@K = |top K and
      relevant| / |relevant|; NDCG@K with binary gains and the ideal ranking of min(|relevant|, K) hits; MRR is
      the reciprocal rank of the first hit within max_k (0 if none).
    """
    top_ids = np.asarray(top_ids)
    relevant_ids = np.asarray(relevant_ids)
    valid = relevant_ids >= 0
    num_relevant = valid.sum(axis=1)
    if np.any(num_relevant == 0):
        raise ValueError("every query needs at least one relevant item")
    hits = np.zeros(top_ids.shape, dtype=bool)
    for column in range(relevant_ids.shape[1]):  # r is small: held-out items per user
        hits |= (top_ids == relevant_ids[:, column : column + 1]) & valid[:, column : column + 1]
    discounts = 1.0 / np.log2(np.arange(2, top_ids.shape[1] + 2))
    results = {}
    for k in ks:
        if k > top_ids.shape[1]:
            raise ValueError(f"cut-off {k} exceeds the {top_ids.shape[1]} ranked items per query")
        hits_k = hits[:, :k]
        results[f"recall_at_{k}"] = float(np.mean(hits_k.sum(axis=1) / num_relevant))
        results[f"hit_rate_at_{k}"] = float(np.mean(hits_k.any(axis=1)))
        dcg = (hits_k * discounts[:k]).sum(axis=1)
        ideal = np.cumsum(discounts[:k])[np.minimum(num_relevant, k) - 1]
        results[f"ndcg_at_{k}"] = float(np.mean(dcg / ideal))
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    results["mrr"] = float(np.mean(1.0 / first_hit))
    return results
