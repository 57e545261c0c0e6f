"""Held-out evaluation of a two-tower model over the whole corpus, next to a most-popular baseline."""

import dataclasses
from typing import Dict, Sequence

import numpy as np

from data import records
from data.corpus import PreparedCorpus
from retrieval import metrics


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Evaluation queries: one row per user with held-out items."""

    user_ids: np.ndarray  # [num_queries] int64
    relevant_ids: np.ndarray  # [num_queries, r] int64, -1 padded


def load_held_out(corpus: PreparedCorpus, max_users: int = 0) -> HeldOut:
    """Groups the eval split by user (the first max_users users by id when max_users > 0)."""
    columns = records.read_all(corpus.eval_files)
    order = np.lexsort((columns["timestamp"], columns["user_id"]))
    user_ids = columns["user_id"][order]
    item_ids = columns["item_id"][order]
    unique_users, starts = np.unique(user_ids, return_index=True)
    groups = np.split(item_ids, starts[1:])
    if max_users:
        unique_users, groups = unique_users[:max_users], groups[:max_users]
    return HeldOut(unique_users, metrics.pad_ragged(groups))


def evaluate(model, held_out: HeldOut, ks: Sequence[int]) -> Dict[str, float]:
    """Exact full-corpus metrics of the model's top-max(ks) for every held-out user."""
    item_embeddings = model.item_tower.embed_all()
    query_embeddings = model.query_tower(held_out.user_ids).numpy()
    _, top_ids = metrics.exact_top_k(query_embeddings, item_embeddings, max(ks))
    return metrics.ranking_metrics(top_ids, held_out.relevant_ids, ks)


def popularity_baseline(item_counts: np.ndarray, held_out: HeldOut, ks: Sequence[int]) -> Dict[str, float]:
    """The same metrics for recommending the most frequent training items to everyone."""
    top = np.argsort(-np.asarray(item_counts), kind="stable")[: max(ks)]
    top_ids = np.broadcast_to(top, (len(held_out.user_ids), len(top)))
    return metrics.ranking_metrics(top_ids, held_out.relevant_ids, ks)
