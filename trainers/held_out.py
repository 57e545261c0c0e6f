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
    return metrics.ranking_metrics(top_ids, held_out.relevant_ids, ks)


def popularity_baseline(item_counts: np.ndarray, held_out: HeldOut, ks: Sequence[int]) -> Dict[str, float]:
    """The same metrics for recommending the most frequent training items to everyone (minus the user's own
    training items when held_out has seen_ids, so both sides of the comparison follow one protocol)."""
    if held_out.seen_ids is not None:
        # Counts as one-dimensional "embeddings" scored by a query of 1: the exact top-k with its exclusion.
        counts = np.asarray(item_counts, np.float32)[:, np.newaxis]
        queries = np.ones([len(held_out.user_ids), 1], np.float32)
        _, top_ids = metrics.exact_top_k(queries, counts, max(ks), exclude_ids=held_out.seen_ids)
        return metrics.ranking_metrics(top_ids, held_out.relevant_ids, ks)
    top = np.argsort(-np.asarray(item_counts), kind="stable")[: max(ks)]
    top_ids = np.broadcast_to(top, (len(held_out.user_ids), len(top)))
    return metrics.ranking_metrics(top_ids, held_out.relevant_ids, ks)


def report(model_metrics: Dict[str, float], baseline_metrics: Dict[str, float], ks: Sequence[int]) -> str:
    """The table the trainer prints: recall@K of the model beside the most-popular baseline, and their ratio."""
    lines = [f"{'held-out metric':<16}{'model':>10}{'most-popular':>14}{'ratio':>8}"]
    for k in ks:
        name = f"recall_at_{k}"
        model_value, baseline_value = model_metrics[name], baseline_metrics[name]
        ratio = model_value / baseline_value if baseline_value else math.inf
        lines.append(f"{f'recall@{k}':<16}{model_value:>10.4f}{baseline_value:>14.4f}{ratio:>7.2f}x")
    return "\n".join(lines)
