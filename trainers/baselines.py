"""The classic baselines the trainer reports beside the model, on the model's own held-out queries and protocol
(trainers.held_out: exact top-K, --exclude_seen, never the `<oov>` bucket):

    most_popular       the most frequent training items, for everyone
    item_transitions   what followed the query's last training item in training (retrieval.baselines), ties and
                       the rest by popularity: the first-order sequential baseline a history model must beat

Each is named as in metrics.json and as its TensorBoard run (tensorboard/<name>). EASE^R and item-kNN, which need a
dense item x item matrix, are in scripts/compare_tfrs.py for catalogues that small.
"""

from typing import Dict, Sequence

import numpy as np

from data import records
from retrieval import baselines
from trainers import held_out as held_out_lib
from trainers.run_data import RunData

NAMES = ("most_popular", "item_transitions")
LABELS = {"most_popular": "most-popular", "item_transitions": "item-to-item"}  # the report's column heads


def evaluate(data: RunData, queries: held_out_lib.HeldOut, ks: Sequence[int]) -> Dict[str, Dict[str, float]]:
    """{baseline name: its metrics (warm, and COLD + name for cold users)} on the queries: most-popular by the
    counts training saw (data.warm_corpus), the transitions of the training split (fit_transitions)."""
    transitions = fit_transitions(data)
    return {
        "most_popular": held_out_lib.popularity_baseline(data.warm_corpus.item_counts, queries, ks),
        "item_transitions": held_out_lib.for_both_groups(lambda group: _transitions_metrics(transitions, group, ks),
                                                         queries),
    }


def fit_transitions(data: RunData) -> baselines.ItemTransitions:
    """Item-to-item counts of the training split (every user's rows). With histories written into the records
    (logs of any size) the pairs are (history[0], item) of each record, counted batch by batch (O(distinct pairs)
    memory); otherwise the split is in memory at the trainer's scale: the run's (RunData.train_columns), its rows
    in the files' order (ties in time are pairs in that order), ordered by user and time."""
    corpus = data.corpus
    popularity = np.asarray(corpus.item_counts, np.int64)
    if corpus.history_length is None:
        train = data.train_columns_in_file_order()
        return baselines.ItemTransitions().fit(train["user_id"], train["item_id"], train["timestamp"],
                                               corpus.num_items)
    keys, counts = np.zeros([0], np.int64), np.zeros([0], np.int64)
    for batch in records.read_batches(corpus.train_files):
        previous = batch[records.HISTORY][:, 0]  # [b] the row's user's newest earlier training item, or PAD
        has_previous = previous >= 0
        batch_keys, batch_counts = np.unique(previous[has_previous] * corpus.num_items +
                                             batch["item_id"][has_previous], return_counts=True)
        keys, counts = baselines.merge_pair_counts(keys, counts, batch_keys, batch_counts)
    return baselines.ItemTransitions().fit_pair_counts(keys // corpus.num_items, keys % corpus.num_items, counts,
                                                       popularity)


def _transitions_metrics(transitions: baselines.ItemTransitions, queries: held_out_lib.HeldOut,
                         ks: Sequence[int]) -> Dict[str, float]:
    top_ids = transitions.top_k(queries.last_items, max(ks), queries.exclude_ids())
    top_ids = np.where(top_ids < 0, transitions.num_items, top_ids)  # an empty slot (all else excluded) finds nothing
    return held_out_lib.both_protocols(top_ids, queries.relevant_ids, ks)

