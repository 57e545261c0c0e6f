"""Exact full-corpus retrieval metrics: recall@K, NDCG@K and MRR from a chunked top-K over every item.

`exact_top_k` scores every query against every item with matrix multiplies, one item chunk at a time, and
keeps a running top-K, so memory is bounded by [query_chunk, item_chunk] whatever the corpus size.

Ranking order everywhere: score descending, then item id ascending (ties go to the lower id), which is what a
stable NumPy argsort of -scores gives.
"""

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

# Columns per group of the two-stage top-k. tf.math.top_k over a million columns costs about as much as the
# matmul; a max over groups of 32 is a cheap streaming reduction and leaves top_k 32x fewer columns.
GROUP_SIZE = 32


def top_k_two_stage(scores: tf.Tensor, k: int, group_size: int = GROUP_SIZE):
    """Exact top-k of each row, ties to the lower column, in two cheap stages.

    Stage 1 takes the max of each group of `group_size` adjacent columns and the k groups with the highest
    maxima (ties to the lower group); stage 2 runs top_k over the k * group_size columns of those groups, laid
    out in column order. Exact, ties included: if a true top-k column c sat in an unchosen group, each of the k
    chosen groups would hold a column that beats c (a higher score, or the same score at a lower column since
    the group comes first), so c would not be in the top k.

    Args:
      scores: [rows, columns] float; k: static int, 1 <= k <= columns.
    Returns:
      (values [rows, k], columns [rows, k] int32), best first.
    """
    num_rows = tf.shape(scores)[0]
    num_columns = tf.shape(scores)[1]
    num_groups = (num_columns + group_size - 1) // group_size
    if scores.shape[1] is not None and scores.shape[1] <= k * group_size:
        return tf.math.top_k(scores, k, sorted=True)  # one group per answer: nothing to prune
    padding = num_groups * group_size - num_columns
    padded = tf.pad(scores, [[0, 0], [0, padding]], constant_values=-np.inf)  # pads sit last, lose every tie
    groups = tf.reshape(padded, [num_rows, num_groups, group_size])
    _, best_groups = tf.math.top_k(tf.reduce_max(groups, axis=2), tf.minimum(k, num_groups), sorted=False)
    best_groups = tf.sort(best_groups, axis=1)  # column order, so top_k's stable ties pick the lower column
    candidates = tf.reshape(tf.gather(groups, best_groups, batch_dims=1), [num_rows, -1])
    values, positions = tf.math.top_k(candidates, k, sorted=True)
    columns = tf.gather(best_groups, positions // group_size, batch_dims=1) * group_size + positions % group_size
    return values, columns


ITEM_CHUNK = 131_072  # items scored per matrix product by exact_top_k and exact_top_k_of_chunks


def _mask_excluded(scores, exclude_ids, start):
    """Sets scores[row, id - start] to -inf for every excluded id inside this chunk.

    scores [q, chunk]; exclude_ids [q, e] int64, -1 padded. A scatter of q * e entries, never a [q, e, chunk]
    comparison.
    """
    local = exclude_ids - start
    inside = (local >= 0) & (local < tf.cast(tf.shape(scores)[1], tf.int64)) & (exclude_ids >= 0)
    pairs = tf.where(inside)  # [m, 2] (row, column of exclude_ids)
    columns = tf.gather_nd(local, pairs)
    indices = tf.stack([pairs[:, 0], columns], axis=1)
    updates = tf.fill(tf.shape(columns), tf.constant(-np.inf, scores.dtype))
    return tf.tensor_scatter_nd_update(scores, indices, updates)


def _chunk_top_k(queries, chunk_items, k: int, start, exclude_ids):
    """The top-min(k, chunk) (scores [q, .], ids [q, .] int64) of queries [q, dim] among the items of one chunk
    [chunk, dim], whose first id is start (excluded ids masked)."""
    scores = tf.matmul(queries, chunk_items, transpose_b=True)  # [q, chunk]
    if exclude_ids is not None:
        scores = _mask_excluded(scores, exclude_ids, start)
    chunk_scores, columns = top_k_two_stage(scores, min(k, chunk_items.shape[0]))
    return chunk_scores, tf.cast(columns, tf.int64) + start


def _merge_top_k(best_scores, best_ids, chunk_scores, chunk_ids, k: int):
    """The running top-k with a later chunk's (higher ids, so top_k's stable ties keep ids ascending)."""
    merged_scores = tf.concat([best_scores, chunk_scores], axis=1)
    merged_ids = tf.concat([best_ids, chunk_ids], axis=1)
    best_scores, positions = tf.math.top_k(merged_scores, min(k, merged_scores.shape[1]), sorted=True)
    return best_scores, tf.gather(merged_ids, positions, batch_dims=1)


def _top_k_of_chunks(queries, items, k: int, item_chunk_size: int, exclude_ids):
    """queries [q, dim], items [n, dim], exclude_ids [q, e] (-1 padded) or None -> (scores [q, k], ids [q, k]).

    A Python loop over item chunks: the chunk bounds are static, so every slice, matmul and top-k has a static
    shape inside one tf.function trace.
    """
    num_items = items.shape[0]
    best_scores, best_ids = None, None
    for start in range(0, num_items, item_chunk_size):
        chunk_scores, chunk_ids = _chunk_top_k(queries, items[start : start + item_chunk_size], k, start, exclude_ids)
        if best_scores is None:
            best_scores, best_ids = chunk_scores, chunk_ids
            continue
        best_scores, best_ids = _merge_top_k(best_scores, best_ids, chunk_scores, chunk_ids, k)
    return best_scores, best_ids


def top_k_function(item_embeddings: tf.Tensor, k: int, item_chunk_size: int = ITEM_CHUNK, exclude: bool = False):
    """A tf.function (queries [q, dim][, exclude_ids [q, e] int64]) -> (scores [q, k], ids [q, k] int64).

    The exact top-k over `item_embeddings` [num_items, dim], captured as a constant or variable. The brute-force
    index and the exported SavedModel serve through it.
    """
    num_items = int(item_embeddings.shape[0])
    if not 1 <= k <= num_items:
        raise ValueError(f"k={k} must be between 1 and the corpus size {num_items}")
    dim = int(item_embeddings.shape[1])
    query_spec = tf.TensorSpec([None, dim], item_embeddings.dtype)
    if exclude:

        @tf.function(input_signature=[query_spec, tf.TensorSpec([None, None], tf.int64)])
        def top_k(queries, exclude_ids):
            return _top_k_of_chunks(queries, item_embeddings, k, item_chunk_size, exclude_ids)

    else:

        @tf.function(input_signature=[query_spec])
        def top_k(queries):
            return _top_k_of_chunks(queries, item_embeddings, k, item_chunk_size, None)

    return top_k


def exact_top_k(
    query_embeddings,
    item_embeddings,
    k: int,
    query_chunk_size: int = 256,
    item_chunk_size: int = ITEM_CHUNK,
    exclude_ids: Optional[np.ndarray] = None,
):
    """Exact top-k items by dot product for every query.

    Args:
      query_embeddings: [num_queries, dim]; item_embeddings: [num_items, dim].
      k: number of items to return per query, at most num_items.
      exclude_ids: optional [num_queries, e] int item ids never to return (-1 pads), e.g. training items.
        Excluded items score -inf; they are returned only when fewer than k items remain.
    Returns:
      (scores [num_queries, k] float, ids [num_queries, k] int64) as NumPy, best first; ties go to the lower id.
    """
    item_embeddings = tf.convert_to_tensor(item_embeddings)
    query_embeddings = np.asarray(query_embeddings)
    top_k = top_k_function(item_embeddings, k, item_chunk_size, exclude=exclude_ids is not None)
    all_scores, all_ids = [], []
    for start in range(0, len(query_embeddings), query_chunk_size):
        queries = tf.constant(query_embeddings[start : start + query_chunk_size], item_embeddings.dtype)
        if exclude_ids is None:
            scores, ids = top_k(queries)
        else:
            scores, ids = top_k(queries, tf.constant(np.asarray(exclude_ids[start : start + query_chunk_size], np.int64)))
        all_scores.append(scores.numpy())
        all_ids.append(ids.numpy())
    if not all_scores:
        return np.zeros([0, k], np.float32), np.zeros([0, k], np.int64)
    return np.concatenate(all_scores), np.concatenate(all_ids)


# exact_top_k_of_chunks' steps, traced once per shape (a full or last chunk of items or queries) and k, and kept
# across calls (held-out evaluation runs after every epoch).
_chunk_top_k_function = tf.function(_chunk_top_k)
_merge_top_k_function = tf.function(_merge_top_k)


def exact_top_k_of_chunks(query_embeddings, item_chunks, k: int, query_chunk_size: int = 256,
                          exclude_ids: Optional[np.ndarray] = None):
    """exact_top_k over item embeddings given as consecutive chunks instead of one [num_items, dim] tensor.

    item_chunks: an iterable of [n_i, dim] arrays or tensors, in id order, every one of ITEM_CHUNK rows but the
    last (a generator may compute each from the item tower when asked). Only one chunk is held at a time, so
    ranking a 10M-item corpus never needs its 2.56 GB of embeddings at once (and not twice, as concatenating
    them does). Each query chunk goes through the same per-chunk top-k and merge as exact_top_k, at the same
    shapes, so the scores and ids equal exact_top_k's over the concatenated items.
    Returns (scores [num_queries, k], ids [num_queries, k] int64) as NumPy, best first; ties go to the lower id.
    """
    query_embeddings = np.asarray(query_embeddings)
    if not len(query_embeddings):
        return np.zeros([0, k], np.float32), np.zeros([0, k], np.int64)
    starts = range(0, len(query_embeddings), query_chunk_size)
    best = [None] * len(starts)
    num_items = 0
    for items in item_chunks:
        items = tf.convert_to_tensor(items)
        if num_items % ITEM_CHUNK:
            raise ValueError(f"item chunks of {ITEM_CHUNK} rows expected before the last one")
        start = tf.constant(num_items, tf.int64)
        for index, query_start in enumerate(starts):
            queries = tf.constant(query_embeddings[query_start : query_start + query_chunk_size], items.dtype)
            excluded = None
            if exclude_ids is not None:
                excluded = tf.constant(np.asarray(exclude_ids[query_start : query_start + query_chunk_size], np.int64))
            scores, ids = _chunk_top_k_function(queries, items, k, start, excluded)
            best[index] = (scores, ids) if best[index] is None else _merge_top_k_function(*best[index], scores, ids, k)
        num_items += int(items.shape[0])
    if not 1 <= k <= num_items:
        raise ValueError(f"k={k} must be between 1 and the corpus size {num_items}")
    return (np.concatenate([scores.numpy() for scores, _ in best]),
            np.concatenate([ids.numpy() for _, ids in best]))


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
