"""Classic baselines beside the model, NumPy only: item-to-item transitions from the last item (sparse counts,
any catalogue size), and EASE^R and item-kNN for catalogues whose dense item x item matrix fits in memory.

Inputs. Training interactions are parallel [n] int arrays (user_ids, item_ids[, timestamps]), item ids in
[0, num_items). Queries read what the model's query reads: the user's training items strictly before the
held-out row, as histories [q, L] item ids newest first, -1 padded (trainers.held_out.HeldOut.history's
layout); the transitions read only the newest one (column 0).

Ranking, as retrieval.metrics ranks: score descending, ties to the lower item id; excluded ids (rows of
exclude_ids [q, e], -1 padded: a user's seen items, the `<oov>` bucket) are never returned while k other items
remain.
"""

from typing import Optional

import numpy as np

PAD = -1
MAX_DENSE_ITEMS = 20_000  # EASE / item-kNN: a 20,000^2 float64 matrix is 3.2 GB, and EASE holds two at once
CHUNK_ELEMENTS = 1 << 22  # entries of one [rows, columns] working block (32 MB at 8 bytes)


def top_k_of_scores(scores: np.ndarray, k: int, exclude_ids: Optional[np.ndarray] = None) -> np.ndarray:
    """The exact top-k item ids of each row of scores, excluded ids at -inf.

    Args:
      scores: [q, num_items] float; k: 1 <= k <= num_items.
      exclude_ids: [q, e] int item ids never to return (-1 pads), or None. Excluded items come last, by id,
        and only when fewer than k items remain (as metrics.exact_top_k).
    Returns:
      [q, k] int64 ids, best first; equal scores go to the lower id.
    """
    scores = np.array(scores, copy=True)
    num_queries, num_items = scores.shape
    if not 1 <= k <= num_items:
        raise ValueError(f"k={k} must be between 1 and the number of items {num_items}")
    if exclude_ids is not None:
        rows, columns = np.nonzero(exclude_ids >= 0)
        scores[rows, exclude_ids[rows, columns]] = -np.inf
    # Select exactly k per row without a full sort: everything above the k-th largest value, then the
    # lowest-id items tied with it (a partition alone picks an arbitrary one among ties).
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # [q, 1]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    ids = np.nonzero(chosen)[1].reshape(num_queries, k)  # ascending id within each row
    order = np.argsort(-np.take_along_axis(scores, ids, axis=1), axis=1, kind="stable")  # stable: ties by id
    return np.take_along_axis(ids, order, axis=1).astype(np.int64)


def _check_ids(name: str, ids: np.ndarray, bound: int) -> np.ndarray:
    """ids as int64, refused unless each lies in [0, bound)."""
    ids = np.asarray(ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= bound):
        raise ValueError(f"{name} must lie in [0, {bound}); got values in [{ids.min()}, {ids.max()}]")
    return ids


class ItemTransitions:
    """Item-to-item transitions: what followed the query's last item in training, most often first.

    fit counts each consecutive pair (a -> b) of a user's training items, ordered by (timestamp, input order),
    and holds them sparse, CSR-style: O(distinct pairs) memory, never num_items^2. A query scores the items
    that followed its last item by that count; ties, items that never followed it and queries with no history
    go by training popularity (then the lower id), so every query gets a full top-k.

    After fit: num_items; popularity [n] int64 training interactions per item; popularity_order [n] the items
    by (popularity desc, id asc); offsets [n + 1] int64, the followers of item a being
    targets[offsets[a]:offsets[a + 1]] with their counts [p], each source's followers ranked by (count desc,
    popularity desc, id asc).
    """

    def fit(self, user_ids, item_ids, timestamps, num_items: int) -> "ItemTransitions":
        """[n] columns of the training interactions (any row order) -> self."""
        users, times = np.asarray(user_ids, np.int64), np.asarray(timestamps, np.int64)
        items = _check_ids("item_ids", item_ids, num_items)
        order = np.lexsort((times, users))  # lexsort is stable: equal (user, time) keep input order
        users, items_in_order = users[order], items[order]
        consecutive = users[1:] == users[:-1]
        pair_keys, counts = np.unique(items_in_order[:-1][consecutive] * num_items + items_in_order[1:][consecutive],
                                      return_counts=True)
        popularity = np.bincount(items, minlength=num_items)
        return self.fit_pair_counts(pair_keys // num_items, pair_keys % num_items, counts, popularity)

    def fit_pair_counts(self, sources, followers, counts, popularity) -> "ItemTransitions":
        """From counted pairs: sources [p] -> followers [p] seen counts [p] times (each pair once), and popularity
        [num_items] the training interactions per item. For logs read in parts (`merge_pair_counts`)."""
        num_items = len(popularity)
        sources = _check_ids("sources", sources, num_items)
        followers = _check_ids("followers", followers, num_items)
        counts = np.asarray(counts, np.int64)
        self.num_items = num_items
        self.popularity = np.asarray(popularity, np.int64)
        self.popularity_order = np.argsort(-self.popularity, kind="stable")
        popularity_rank = np.empty(num_items, np.int64)
        popularity_rank[self.popularity_order] = np.arange(num_items)
        ranked = np.lexsort((popularity_rank[followers], -counts, sources))
        self.targets, self.counts = followers[ranked], counts[ranked]
        self._padded_targets = np.append(self.targets, PAD)  # a gather index past the end reads the pad
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(sources, minlength=num_items))]).astype(np.int64)
        return self

    def top_k(self, last_items, k: int, exclude_ids: Optional[np.ndarray] = None) -> np.ndarray:
        """last_items [q] int (-1: no history), exclude_ids [q, e] (-1 padded) or None -> ids [q, k] int64.

        Never builds [q, num_items]: each query's answer lies among the first k + e followers of its last item
        (at most e of them excluded) and, when those run out, the most popular items, so a chunk of queries
        works on [chunk, 3k + 3e] candidates. A slot is -1 only when fewer than k items are not excluded.
        """
        if not 1 <= k <= self.num_items:
            raise ValueError(f"k={k} must be between 1 and the number of items {self.num_items}")
        last_items = np.asarray(last_items, np.int64)
        _check_ids("last_items", last_items[last_items >= 0], self.num_items)
        width = 3 * k + 3 * (0 if exclude_ids is None else exclude_ids.shape[1])
        chunk = max(1, CHUNK_ELEMENTS // width)
        answers = [self._chunk_top_k(last_items[start : start + chunk], k,
                                     None if exclude_ids is None else np.asarray(exclude_ids[start : start + chunk]))
                   for start in range(0, len(last_items), chunk)]
        return np.concatenate(answers) if answers else np.zeros([0, k], np.int64)

    def _followers(self, last_items: np.ndarray, window: int):
        """([q, window] the first followers of each last item in rank order, -1 padded; [q, window] bool held)."""
        has_last = last_items >= 0
        source = np.maximum(last_items, 0)
        start = self.offsets[source]
        length = np.where(has_last, self.offsets[source + 1] - start, 0)
        held = np.arange(window) < length[:, np.newaxis]
        positions = np.where(held, start[:, np.newaxis] + np.arange(window), len(self.targets))
        return self._padded_targets[positions], held

    def _chunk_top_k(self, last_items: np.ndarray, k: int, exclude_ids: Optional[np.ndarray]) -> np.ndarray:
        """top_k of one chunk of queries: followers, then popularity fill, minus excluded and repeated items."""
        num_queries, num_excluded = len(last_items), 0 if exclude_ids is None else exclude_ids.shape[1]
        window = k + num_excluded
        followers, held = self._followers(last_items, window)
        # The fill loses at most the window's items and the excluded ones, so 2k + 2e popular items leave k.
        popular = self.popularity_order[: 2 * k + 2 * num_excluded]
        fill = np.broadcast_to(popular, (num_queries, len(popular)))
        candidates = np.concatenate([followers, fill], axis=1)  # [q, w] in rank order
        row_keys = np.arange(num_queries, dtype=np.int64)[:, np.newaxis] * self.num_items
        keys = row_keys + candidates  # (query, item) as one int64, for set membership by sorting
        keep = np.concatenate([held, ~np.isin(keys[:, window:], keys[:, :window][held])], axis=1)
        if exclude_ids is not None:
            keep &= ~np.isin(keys, (row_keys + exclude_ids)[exclude_ids >= 0])
        position = np.cumsum(keep, axis=1)
        rows, columns = np.nonzero(keep & (position <= k))
        top = np.full([num_queries, k], PAD, np.int64)
        top[rows, position[rows, columns] - 1] = candidates[rows, columns]
        return top


def merge_pair_counts(pair_keys, counts, more_keys, more_counts):
    """(keys, counts) of two countings of pairs (int64 keys source * num_items + follower, each once per counting)
    added up, each key once, sorted: O(distinct pairs), whatever the log's length."""
    keys, positions = np.unique(np.concatenate([pair_keys, more_keys]), return_inverse=True)
    return keys, np.bincount(positions, weights=np.concatenate([counts, more_counts])).astype(np.int64)


def item_cooccurrence(user_ids, item_ids, num_items: int) -> np.ndarray:
    """G = X^T X [num_items, num_items] float64 of the binary user x item matrix X of the interactions [n].

    X is never built whole: users go in chunks of a dense [chunk, num_items] block. A repeated (user, item)
    counts once (X is binary). Counts are exact: float32 sums of at most 2^22 / num_items ones per chunk.
    """
    items = _check_ids("item_ids", item_ids, num_items)
    pair_keys = np.unique(np.asarray(user_ids, np.int64) * num_items + items)
    _, user_rows = np.unique(pair_keys // num_items, return_inverse=True)  # users renumbered 0, 1, ...
    user_rows, pair_items = user_rows.reshape(-1), pair_keys % num_items
    gram = np.zeros([num_items, num_items], np.float64)
    chunk = max(1, CHUNK_ELEMENTS // num_items)
    num_users = int(user_rows[-1]) + 1 if len(user_rows) else 0
    for first in range(0, num_users, chunk):  # a loop over user chunks, not interactions
        low, high = np.searchsorted(user_rows, [first, first + chunk])
        block = np.zeros([chunk, num_items], np.float32)
        block[user_rows[low:high] - first, pair_items[low:high]] = 1.0
        gram += block.T @ block
    return gram


def history_matrix(histories: np.ndarray, num_items: int) -> np.ndarray:
    """histories [q, L] item ids, -1 padded -> [q, num_items] float32 binary x_u (a repeated item counts once,
    as in X)."""
    histories = np.asarray(histories, np.int64)
    rows, slots = np.nonzero(histories >= 0)
    items = _check_ids("history items", histories[rows, slots], num_items)
    matrix = np.zeros([len(histories), num_items], np.float32)
    matrix[rows, items] = 1.0
    return matrix


def _check_dense_size(name: str, num_items: int, max_items: int) -> None:
    if num_items > max_items:
        gigabytes = num_items**2 * 8 / 1e9
        raise ValueError(f"{name} needs a dense item x item matrix: num_items={num_items} is above max_items="
                         f"{max_items} ({gigabytes:.1f} GB per float64 matrix); use ItemTransitions for this "
                         f"catalogue, or raise max_items if the memory is there")


class _ItemItem:
    """A dense item x item weight matrix W [n, n]: a query scores x_u W, x_u its history as a binary vector."""

    name = "item-item"

    def __init__(self, max_items: int = MAX_DENSE_ITEMS):
        self.max_items = max_items
        self.weights = None  # [num_items, num_items] float32 after fit

    def fit(self, user_ids, item_ids, num_items: int):
        """[n] training interactions -> self (the size checked before any matrix is built)."""
        _check_dense_size(self.name, num_items, self.max_items)
        return self.fit_cooccurrence(item_cooccurrence(user_ids, item_ids, num_items))

    def fit_cooccurrence(self, gram: np.ndarray):
        """gram: [n, n] X^T X (item_cooccurrence), shared by fits of several settings -> self."""
        _check_dense_size(self.name, gram.shape[0], self.max_items)
        self.weights = self._weights(np.asarray(gram, np.float64)).astype(np.float32)
        return self

    def scores(self, histories: np.ndarray) -> np.ndarray:
        """histories [q, L] newest first, -1 padded -> [q, num_items] float32 x_u W."""
        return history_matrix(histories, self.weights.shape[0]) @ self.weights

    def top_k(self, histories: np.ndarray, k: int, exclude_ids: Optional[np.ndarray] = None) -> np.ndarray:
        """histories [q, L], exclude_ids [q, e] (-1 padded) or None -> ids [q, k] int64, in query chunks."""
        chunk = max(1, CHUNK_ELEMENTS // self.weights.shape[0])
        answers = [top_k_of_scores(self.scores(histories[start : start + chunk]), k,
                                   None if exclude_ids is None else exclude_ids[start : start + chunk])
                   for start in range(0, len(histories), chunk)]
        return np.concatenate(answers) if answers else np.zeros([0, k], np.int64)


class Ease(_ItemItem):
    """EASE^R (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", 2019).

    P = (X^T X + l2 I)^-1 and B = I - P / diag(P) column-wise: B_ij = -P_ij / P_jj off the diagonal, B_jj = 0,
    the closed form of min ||X - XB||^2 + l2 ||B||^2 subject to diag(B) = 0. Peak memory two [n, n] float64.
    """

    name = "EASE"

    def __init__(self, l2: float, max_items: int = MAX_DENSE_ITEMS):
        if not l2 > 0:
            raise ValueError(f"l2={l2}; EASE needs l2 > 0 (X^T X alone is singular for most logs)")
        super().__init__(max_items)
        self.l2 = l2

    def _weights(self, gram: np.ndarray) -> np.ndarray:
        regularised = gram.copy()
        regularised[np.diag_indices_from(regularised)] += self.l2
        inverse = np.linalg.inv(regularised)
        del regularised
        weights = inverse / -np.diag(inverse)[np.newaxis, :]  # column j divided by -P_jj
        np.fill_diagonal(weights, 0.0)
        return weights


class ItemKnn(_ItemItem):
    """Item-based top-N (Deshpande and Karypis 2004): cosine similarity of item columns of X with a shrink term,

        s_ij = |U_i and U_j| / (sqrt(|U_i|) sqrt(|U_j|) + shrink),   s_ii = 0,

    each item keeping its num_neighbours most similar items (ties to the lower id); a query scores item j by
    the sum of s_hj over its history items h that keep j.
    """

    name = "item-kNN"

    def __init__(self, num_neighbours: int, shrink: float = 0.0, max_items: int = MAX_DENSE_ITEMS):
        if num_neighbours < 1 or shrink < 0:
            raise ValueError(f"num_neighbours={num_neighbours}, shrink={shrink}; expected >= 1 and >= 0")
        super().__init__(max_items)
        self.num_neighbours, self.shrink = num_neighbours, shrink

    def _weights(self, gram: np.ndarray) -> np.ndarray:
        norms = np.sqrt(np.diag(gram))
        denominator = np.outer(norms, norms) + self.shrink
        similarity = np.divide(gram, denominator, out=np.zeros_like(gram), where=denominator > 0)
        np.fill_diagonal(similarity, -np.inf)  # never its own neighbour
        num_items = len(similarity)
        keep = min(self.num_neighbours, num_items - 1)
        weights = np.zeros_like(similarity)
        chunk = max(1, CHUNK_ELEMENTS // num_items)
        for first in range(0, num_items, chunk):  # rows in chunks bound top_k_of_scores' working memory
            rows = np.arange(first, min(first + chunk, num_items))[:, np.newaxis]
            if keep:
                neighbours = top_k_of_scores(similarity[rows[:, 0]], keep)
                weights[rows, neighbours] = similarity[rows, neighbours]
        return weights
