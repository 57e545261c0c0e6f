"""Held-out evaluation of a trained model: the held-out queries, the model's exact full-corpus metrics, the
most-popular baseline on the same queries, and the report a user reads. The top-K engine itself is the
library's (retrieval.metrics)."""

import dataclasses
import math
from typing import Dict, Optional, Sequence

import numpy as np

from data import records
from data.corpus import PreparedCorpus
from retrieval import metrics


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Evaluation queries: one row per user with held-out items."""

    user_ids: np.ndarray  # [num_queries] int64
    relevant_ids: np.ndarray  # [num_queries, r] int64, -1 padded
    seen_ids: Optional[np.ndarray] = None  # [num_queries, s] int64 training items of each user, -1 padded


def _group_by_user(columns, user_ids: Optional[np.ndarray] = None):
    """(users, [item ids per user]) ordered by user id then timestamp; only `user_ids` when given."""
    order = np.lexsort((columns["timestamp"], columns["user_id"]))
    users = columns["user_id"][order]
    items = columns["item_id"][order]
    unique_users, starts = np.unique(users, return_index=True)
    groups = np.split(items, starts[1:]) if len(users) else []
    if user_ids is None:
        return unique_users, groups
    by_user = dict(zip(unique_users.tolist(), groups))
    empty = np.zeros([0], np.int64)
    return user_ids, [by_user.get(user, empty) for user in user_ids.tolist()]


def load_held_out(corpus: PreparedCorpus, max_users: int = 0, exclude_seen: bool = False) -> HeldOut:
    """Groups the eval split by user (the first max_users users by id when max_users > 0).

    With exclude_seen, also each user's training items, which evaluation then never ranks (the usual protocol
    when users do not re-consume items).
    """
    unique_users, groups = _group_by_user(records.read_all(corpus.eval_files))
    if max_users:
        unique_users, groups = unique_users[:max_users], groups[:max_users]
    seen_ids = None
    if exclude_seen:
        _, seen = _group_by_user(records.read_all(corpus.train_files), unique_users)
        seen_ids = metrics.pad_ragged([np.unique(items) for items in seen])
    return HeldOut(unique_users, metrics.pad_ragged(groups), seen_ids)


def evaluate(model, held_out: HeldOut, ks: Sequence[int]) -> Dict[str, float]:
    """Exact full-corpus metrics of the model's top-max(ks) for every held-out user.

    Works for a model built under a tf.distribute strategy: the towers are called outside any replica context.
    """
    item_embeddings = model.item_tower.embed_all()
    query_embeddings = model.query_tower(held_out.user_ids).numpy()
    _, top_ids = metrics.exact_top_k(query_embeddings, item_embeddings, max(ks), exclude_ids=held_out.seen_ids)
    return both_protocols(top_ids, held_out.relevant_ids, ks)


def top_k_accuracy(top_ids: np.ndarray, relevant_ids: np.ndarray, ks: Sequence[int]) -> Dict[str, float]:
    """top_k_accuracy_at_K: the share of held-out rows (user, item) whose item is in its user's top K.

    TFRS's factorized_top_k/top_K_categorical_accuracy (one query per held-out row). recall@K averages over users
    (the share of a user's held-out items found, then the mean over users), this over rows: a user with r held-out
    rows weighs r times, so the two differ when users hold out different numbers of rows. top_ids [queries, max_k];
    relevant_ids [queries, r] -1 padded (a user's repeated item is one row each).
    """
    matches = np.asarray(top_ids)[:, np.newaxis, :] == np.asarray(relevant_ids)[:, :, np.newaxis]  # [q, r, max_k]
    rank = np.where(matches.any(axis=2), matches.argmax(axis=2), np.iinfo(np.int64).max)  # [q, r], 0 = best
    valid = np.asarray(relevant_ids) >= 0
    return {f"top_k_accuracy_at_{k}": float(((rank < k) & valid).sum() / valid.sum()) for k in ks}


def both_protocols(top_ids: np.ndarray, relevant_ids: np.ndarray, ks: Sequence[int]) -> Dict[str, float]:
    """retrieval.metrics.ranking_metrics (per user, over the set of her held-out items: an item she holds out
    twice is found once, and counts once) and top_k_accuracy (per held-out row) of one ranking."""
    item_sets = metrics.pad_ragged([np.unique(row[row >= 0]) for row in np.asarray(relevant_ids)])
    return {**metrics.ranking_metrics(top_ids, item_sets, ks), **top_k_accuracy(top_ids, relevant_ids, ks)}


def popularity_baseline(item_counts: np.ndarray, held_out: HeldOut, ks: Sequence[int]) -> Dict[str, float]:
    """The same metrics for recommending the most frequent training items to everyone (minus the user's own
    training items when held_out has seen_ids, so both sides of the comparison follow one protocol)."""
    if held_out.seen_ids is not None:
        # Counts as one-dimensional "embeddings" scored by a query of 1: the exact top-k with its exclusion.
        counts = np.asarray(item_counts, np.float32)[:, np.newaxis]
        queries = np.ones([len(held_out.user_ids), 1], np.float32)
        _, top_ids = metrics.exact_top_k(queries, counts, max(ks), exclude_ids=held_out.seen_ids)
        return both_protocols(top_ids, held_out.relevant_ids, ks)
    top = np.argsort(-np.asarray(item_counts), kind="stable")[: max(ks)]
    top_ids = np.broadcast_to(top, (len(held_out.user_ids), len(top)))
    return both_protocols(top_ids, held_out.relevant_ids, ks)


# The report's rows: (metric name prefix, label); both name their averaging, as users compare them with others'.
PROTOCOLS = (("recall_at_", "recall@{k} per user"), ("top_k_accuracy_at_", "top-{k} accuracy per row"))


def report(model_metrics: Dict[str, float], baseline_metrics: Dict[str, float], ks: Sequence[int]) -> str:
    """The table the trainer prints: recall@K (the mean over held-out users) and top-K accuracy (the mean over
    held-out rows, TFRS's) of the model beside the most-popular baseline, and their ratio."""
    lines = [f"{'held-out metric':<28}{'model':>10}{'most-popular':>14}{'ratio':>8}"]
    for prefix, label in PROTOCOLS:
        for k in ks:
            name = f"{prefix}{k}"
            model_value, baseline_value = model_metrics[name], baseline_metrics[name]
            ratio = model_value / baseline_value if baseline_value else math.inf
            lines.append(f"{label.format(k=k):<28}{model_value:>10.4f}{baseline_value:>14.4f}{ratio:>7.2f}x")
    return "\n".join(lines)
