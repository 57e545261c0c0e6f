"""Held-out evaluation of a trained model: the held-out queries, the model's exact full-corpus metrics, the
most-popular baseline on the same queries, and the report a user reads. The top-K engine itself is the
library's (retrieval.metrics).

Queries. Warm users (every user with held-out rows, but the cold ones): one query per user, with the user's
training history strictly before her first held-out interaction and that interaction's context (its time
features and its values of the corpus's context columns), when the model reads them. Cold users (--cold_users,
kept wholly out of training): one query per held-out interaction, each user's last eval_per_user interactions
(the corpus's split), with the user's other items before it as its history (data.history.cold_user_queries)
and the interaction's own context; their metrics are named COLD + name ("cold_users/recall_at_100" in
TensorBoard), and the baselines (trainers.baselines) are computed for each group under the same names
(TensorBoard shows each as a run of its own, tensorboard/<baseline>, so each chart overlays model and
baselines). No ranking holds the `<oov>` bucket.

Splits. The queries come from one of the corpus's held-out splits (`split`): "validation" (validation-*.tfrecord,
each user's last training rows; model selection reads it: the per-epoch curves, --keep_best, early stopping),
whose histories, last items and seen items are the training rows before them, or "test" (eval-*.tfrecord; read
once, for the final report, metrics.json and the baselines), whose histories, last items and seen items are the
training and validation rows before them: the model is chosen without the validation rows, but asked at test
time with everything that happened before the test row. A corpus without a validation split (older corpora,
data.prepare without --validation_per_user, --eval_input) has only "test", which model selection then reads too,
with a warning (selection_split).
"""

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from data import history, records
from data.corpus import PreparedCorpus
from data.pipeline import time_feature_columns
from retrieval import metrics
from trainers.run_data import RunData

COLD = "cold_users/"  # the prefix of the cold users' metrics
VALIDATION, TEST = "validation", "test"  # the held-out splits' names, in metrics.json, TensorBoard and the report
SPLITS = (VALIDATION, TEST)


def selection_split(corpus: PreparedCorpus) -> str:
    """The split model selection reads: "validation" when the corpus has one, else "test"."""
    return VALIDATION if corpus.has_validation else TEST


def split_files(corpus: PreparedCorpus, split: str):
    """(the split's held-out files, the files of the rows before them: their histories and seen items)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {', '.join(SPLITS)}")
    if split == VALIDATION:
        if not corpus.has_validation:
            raise ValueError(f"{corpus.directory}: no validation split; prepare it with --validation_per_user")
        return corpus.validation_files, corpus.train_files
    return corpus.eval_files, corpus.train_files + corpus.validation_files
QUERY_CHUNK = 8192  # queries embedded per call of the query tower


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """Evaluation queries: one row per warm user with held-out items (per held-out row for cold users)."""

    user_ids: np.ndarray  # [num_queries] int64
    relevant_ids: np.ndarray  # [num_queries, r] int64, -1 padded
    seen_ids: Optional[np.ndarray] = None  # [num_queries, s] int64 training items of each user, -1 padded
    history: Optional[np.ndarray] = None  # [num_queries, L] int64 items before the query, newest first, -1 padded
    # {hour_of_day, day_of_week, <context column>: [num_queries] (multi-valued: [num_queries, n])} of its row
    context: Optional[Dict[str, np.ndarray]] = None
    oov_item_id: Optional[int] = None  # never ranked
    cold: Optional["HeldOut"] = None  # the cold users' queries
    # [num_queries] int64 the user's newest training item strictly before the query's row (-1: none), which the
    # item-to-item baseline reads whatever the model reads
    last_items: Optional[np.ndarray] = None

    def features(self, rows: slice = slice(None)) -> Dict[str, np.ndarray]:
        """The query tower's inputs of some queries: user_id, and history and context when held."""
        features = {"user_id": self.user_ids[rows]}
        if self.history is not None:
            features["history"] = self.history[rows]
        features.update({name: values[rows] for name, values in (self.context or {}).items()})
        return features

    def exclude_ids(self) -> Optional[np.ndarray]:
        """[num_queries, e] ids no ranking may hold (the user's seen items, the OOV bucket), -1 padded, or None."""
        if self.oov_item_id is None:
            return self.seen_ids
        oov = np.full([len(self.user_ids), 1], self.oov_item_id, np.int64)
        return oov if self.seen_ids is None else np.concatenate([self.seen_ids, oov], axis=1)


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


def load_held_out(data: RunData, max_users: int = 0, exclude_seen: bool = False, split: str = TEST) -> HeldOut:
    """Groups the held-out split `split` ("test": eval-*.tfrecord; "validation") of data.corpus by user (the first
    max_users users by id when max_users > 0).

    With exclude_seen, also each user's items before the split (training; for "test" training and validation),
    which evaluation then never ranks (the usual protocol when users do not re-consume items). data.config (a
    RunConfig; None: a user-id model without cold users): the histories and time features its query tower reads;
    data.cold_user_ids: the cold users, whose queries go to `cold`. The training rows are data's (read once per
    run), and only when needed: never for records that carry their histories, without exclude_seen or cold users.
    """
    corpus, config = data.corpus, data.config
    features = config.model.query_features if config is not None else ("user_id",)
    history_length = config.data.history_length if config is not None else 0
    cold_ids = data.cold_user_ids
    evaluation = records.read_all(split_files(corpus, split)[0])
    warm = _rows_of(evaluation, ~np.isin(evaluation["user_id"], cold_ids))
    unique_users, groups = _group_by_user(warm)
    if max_users:
        unique_users, groups = unique_users[:max_users], groups[:max_users]
    written = corpus.history_length is not None  # the eval records carry their histories: no training split
    needs_before = exclude_seen or len(cold_ids) or not written  # (without written histories, the last items)
    before, before_file_rows = _rows_before(data, split) if needs_before else (None, None)
    seen_ids = None
    if exclude_seen:
        _, seen = _group_by_user(before, unique_users)
        seen_ids = metrics.pad_ragged([np.unique(items) for items in seen])
    first_rows = _first_rows(warm, unique_users)  # [q] each user's first held-out row
    query_history, last_items = _warm_histories(unique_users, warm["timestamp"][first_rows],
                                                warm["history"][first_rows] if written else None, before,
                                                "history" in features, history_length)
    context_names = [column.name for column in corpus.context_columns]
    context = _context(warm, first_rows, context_names) if "context" in features else None
    cold = None
    if len(cold_ids):
        cold_rows = _cold_rows(before, before_file_rows, evaluation, cold_ids,
                               ["user_id", "item_id", "timestamp", *context_names])
        cold = _cold_held_out(cold_rows, _held_out_per_user(corpus, split), history_length,
                              context_names if "context" in features else None, exclude_seen, corpus.oov_item_id)
    return HeldOut(unique_users, metrics.pad_ragged(groups), seen_ids, query_history, context, corpus.oov_item_id,
                   cold, last_items)


def _rows_before(data: RunData, split: str):
    """({name: [n]} the rows before the split's: the run's training split (RunData.train_columns, read once per
    run) and, before the test split, the validation split after it; [n] int64 each row's position in the files'
    order, records.read_all(split_files(corpus, split)[1])'s)."""
    train, train_rows = data.train_columns, data.train_file_rows
    later_files = split_files(data.corpus, split)[1][len(data.corpus.train_files):]
    if not later_files:
        return train, train_rows
    later = records.read_all(later_files)
    rows = np.concatenate([train_rows, len(train_rows) + np.arange(len(later["user_id"]), dtype=np.int64)])
    return {name: np.concatenate([train[name], later[name]]) for name in train}, rows


def _warm_histories(users: np.ndarray, moment: np.ndarray, written: Optional[np.ndarray], before,
                    with_history: bool, history_length: int):
    """(the queries' histories [q, history_length] when the model reads one, else None; [q] each query's newest
    item before its moment, -1 for none): from the histories written into its first held-out record ([q, N]; None:
    none), or looked up in the rows before the split."""
    if written is not None:
        return (written[:, :history_length] if with_history else None), written[:, 0]
    log = history.history_log(before["user_id"], before["item_id"], before["timestamp"])
    if with_history:
        query_history = history.histories_from_log(log, users, moment, history_length)
        return query_history, query_history[:, 0]  # newest first
    return None, history.histories_from_log(log, users, moment, 1)[:, 0]


def _cold_rows(before, before_file_rows: np.ndarray, evaluation, cold_ids: np.ndarray, names: Sequence[str]):
    """{name: [m]} of `names`: the cold users' rows before the split, then theirs of the split, each part in its
    files' order (which breaks the held-out choice's ties, data.splits.held_out)."""
    is_cold = np.isin(before["user_id"], cold_ids)
    rows = np.flatnonzero(is_cold)[np.argsort(before_file_rows[is_cold], kind="stable")]
    held = np.isin(evaluation["user_id"], cold_ids)
    return {name: np.concatenate([before[name][rows], evaluation[name][held]]) for name in names}


def _cold_held_out(rows, eval_per_user: int, history_length: int, context_names: Optional[Sequence[str]],
                   exclude_seen: bool, oov: Optional[int]) -> HeldOut:
    """One query per held-out interaction of the cold users' rows {user_id, item_id, timestamp, <context>: [n]}:
    the user's last eval_per_user ones, each with the user's other items before it and its own context (of
    context_names; None: no context) (rows of the OOV bucket left out)."""
    queries = history.cold_user_queries(rows["user_id"], rows["item_id"], rows["timestamp"], eval_per_user,
                                        max(history_length, 1))
    keep = rows["item_id"][queries.rows] != (-1 if oov is None else oov)
    query_rows, query_history = queries.rows[keep], queries.history[keep][:, :history_length]
    user_ids = rows["user_id"][query_rows]
    seen_ids = None
    if exclude_seen:
        kept = np.ones(len(rows["user_id"]), bool)
        kept[queries.rows] = False
        _, seen = _group_by_user(_rows_of(rows, kept), user_ids)
        seen_ids = metrics.pad_ragged([np.unique(items) for items in seen])
    context = _context(rows, query_rows, context_names) if context_names is not None else None
    return HeldOut(user_ids, rows["item_id"][query_rows][:, np.newaxis], seen_ids, query_history, context, oov,
                   last_items=queries.history[keep][:, 0])


def _rows_of(columns: Dict[str, np.ndarray], mask: np.ndarray) -> Dict[str, np.ndarray]:
    return {name: values[mask] for name, values in columns.items()}


def _first_rows(columns, user_ids: np.ndarray) -> np.ndarray:
    """[len(user_ids)] int64: the row of each user's earliest timestamp in the columns (user_ids all present)."""
    order = np.lexsort((columns["timestamp"], columns["user_id"]))
    users, first = np.unique(columns["user_id"][order], return_index=True)
    return order[first][np.searchsorted(users, user_ids)]


def _context(columns, rows: np.ndarray, context_names: Sequence[str]) -> Dict[str, np.ndarray]:
    """The time features of the rows' timestamps and the rows' values of the context columns context_names."""
    context = {name: values.numpy() for name, values in time_feature_columns(columns["timestamp"][rows]).items()}
    return {**context, **{name: columns[name][rows] for name in context_names}}


def _held_out_per_user(corpus: PreparedCorpus, split: str) -> int:
    """The held-out interactions per user of the corpus's split (metadata.json's eval_per_user or
    validation_per_user; 1 for the built-in corpus's test split)."""
    return (corpus.validation_per_user if split == VALIDATION else corpus.eval_per_user) or 1


def evaluate(model, held_out: HeldOut, ks: Sequence[int]) -> Dict[str, float]:
    """Exact full-corpus metrics of the model's top-max(ks) for every held-out query (and, named COLD + name,
    for every cold-user query).

    Works for a model built under a tf.distribute strategy: the towers are called outside any replica context.
    """
    return for_both_groups(lambda queries: _evaluate_queries(model, queries, ks), held_out)


def for_both_groups(metrics_of: Callable[[HeldOut], Dict[str, float]], held_out: HeldOut) -> Dict[str, float]:
    """metrics_of(queries) of the warm queries and, named COLD + name, of the cold users' queries when there are."""
    results = metrics_of(held_out)
    if held_out.cold is not None and len(held_out.cold.user_ids):
        results.update({COLD + name: value for name, value in metrics_of(held_out.cold).items()})
    return results


def _item_chunks(item_tower):
    """The item tower's embeddings of every item, metrics.ITEM_CHUNK rows at a time, computed as they are ranked
    (Tower.embed_chunks): ranking never holds all of them, which at 10M x 64 are 2.56 GB, 5 GB while embed_all
    concatenated them, and raised the trainer's peak memory for good (its allocator keeps what it once held).
    A stand-in tower with only embed_all is sliced."""
    if hasattr(item_tower, "embed_chunks"):
        yield from item_tower.embed_chunks(metrics.ITEM_CHUNK)
        return
    items = item_tower.embed_all()
    for start in range(0, int(items.shape[0]), metrics.ITEM_CHUNK):
        yield items[start : start + metrics.ITEM_CHUNK]


def _evaluate_queries(model, held_out: HeldOut, ks: Sequence[int]) -> Dict[str, float]:
    chunks = []
    for start in range(0, len(held_out.user_ids), QUERY_CHUNK):
        features = held_out.features(slice(start, start + QUERY_CHUNK))
        if hasattr(model, "query_embeddings"):
            chunks.append(model.query_embeddings(features).numpy())
        else:
            chunks.append(model.query_tower(features["user_id"]).numpy())
    query_embeddings = np.concatenate(chunks).astype(np.float32)
    _, top_ids = metrics.exact_top_k_of_chunks(query_embeddings, _item_chunks(model.item_tower), max(ks),
                                               exclude_ids=held_out.exclude_ids())
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
    training items when held_out has seen_ids, so both sides of the comparison follow one protocol; never the
    OOV bucket), for the warm queries and, named COLD + name, the cold ones."""
    return for_both_groups(lambda queries: _popularity(item_counts, queries, ks), held_out)


def _popularity(item_counts: np.ndarray, held_out: HeldOut, ks: Sequence[int]) -> Dict[str, float]:
    exclude_ids = held_out.exclude_ids()
    if exclude_ids is not None:
        # Counts as one-dimensional "embeddings" scored by a query of 1: the exact top-k with its exclusion.
        counts = np.asarray(item_counts, np.float32)[:, np.newaxis]
        queries = np.ones([len(held_out.user_ids), 1], np.float32)
        _, top_ids = metrics.exact_top_k(queries, counts, max(ks), exclude_ids=exclude_ids)
        return both_protocols(top_ids, held_out.relevant_ids, ks)
    top = np.argsort(-np.asarray(item_counts), kind="stable")[: max(ks)]
    top_ids = np.broadcast_to(top, (len(held_out.user_ids), len(top)))
    return both_protocols(top_ids, held_out.relevant_ids, ks)


def split_cold(values: Dict[str, float]):
    """(warm metrics, cold metrics without the COLD prefix; empty without cold users) of evaluate's results."""
    warm = {name: value for name, value in values.items() if not name.startswith(COLD)}
    cold = {name[len(COLD):]: value for name, value in values.items() if name.startswith(COLD)}
    return warm, cold


def metrics_document(model_metrics: Dict[str, float], baselines: Dict[str, Dict[str, float]], split: str = TEST,
                     validation_metrics: Optional[Dict[str, float]] = None,
                     keep_best: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """metrics.json: "split" (the split of these figures: "test"), {"model", <each baseline's name>} of the warm
    queries, and "cold_users": the same of the cold ones when the run kept users out of training. baselines:
    {name: metrics}, e.g. trainers.baselines.evaluate's. With a validation split, "validation": {"model"[,
    "cold_users": {"model"}]} of the chosen model on it; with --keep_best, "keep_best": {"metric", "epoch",
    "split"}: the split the epoch was chosen on."""
    model_warm, model_cold = split_cold(model_metrics)
    by_group = {name: split_cold(values) for name, values in baselines.items()}
    document: Dict[str, Any] = {"split": split, "model": model_warm,
                                **{name: warm for name, (warm, _) in by_group.items()}}
    if model_cold:
        document["cold_users"] = {"model": model_cold, **{name: cold for name, (_, cold) in by_group.items()}}
    if validation_metrics:
        validation_warm, validation_cold = split_cold(validation_metrics)
        document[VALIDATION] = {"model": validation_warm}
        if validation_cold:
            document[VALIDATION]["cold_users"] = {"model": validation_cold}
    if keep_best:
        document["keep_best"] = dict(keep_best)
    return document


# The report's rows: (metric name prefix, label); both name their averaging, as users compare them with others'.
PROTOCOLS = (("recall_at_", "recall@{k} per user"), ("top_k_accuracy_at_", "top-{k} accuracy per row"))


def report(model_metrics: Dict[str, float], baselines: Dict[str, Dict[str, float]], ks: Sequence[int],
           labels: Optional[Dict[str, str]] = None, split: str = TEST,
           validation_metrics: Optional[Dict[str, float]] = None, keep_best: Optional[Dict[str, Any]] = None) -> str:
    """The table the trainer prints: recall@K (the mean over held-out users) and top-K accuracy (the mean over
    held-out rows, TFRS's) of the model beside each baseline ({name: metrics}, columns headed labels[name]) and
    the model's ratio to the best of them; with cold users, the same table for them, with NDCG@K and MRR. Its
    titles name the split of the figures; below it, the epoch --keep_best chose and on which split
    (metrics_document's keep_best), and the chosen model's validation recall."""
    model_warm, model_cold = split_cold(model_metrics)
    by_group = {name: split_cold(values) for name, values in baselines.items()}
    heads = [(labels or {}).get(name, name) for name in baselines]
    lines = _table(f"held-out metric ({split} split)", model_warm, [warm for warm, _ in by_group.values()], heads,
                   ks, with_ranks=bool(model_cold))
    if model_cold:
        lines += _table(f"cold users ({split} split)", model_cold, [cold for _, cold in by_group.values()], heads,
                        ks, with_ranks=True)
    return "\n".join(lines + _selection_lines(ks, validation_metrics, keep_best))


def _selection_lines(ks: Sequence[int], validation_metrics, keep_best) -> List[str]:
    """The report's lines on model selection: which epoch --keep_best chose, on which split (a warning when it
    was the test split, whose figures it then flatters), and the chosen model's validation recall."""
    lines = []
    if keep_best:
        lines.append(f"epoch {keep_best['epoch']} chosen by --keep_best={keep_best['metric']} on the "
                     f"{keep_best['split']} split")
        if keep_best["split"] == TEST:
            lines[-1] += " (no validation split: the figures above flatter the model)"
    if validation_metrics:
        warm, _ = split_cold(validation_metrics)
        lines.append("validation split, the model chosen: " + "  ".join(
            f"recall@{k}={warm[f'recall_at_{k}']:.4f}" for k in ks))
    return lines


def _table(title: str, model_metrics, baseline_metrics, heads: Sequence[str], ks: Sequence[int], with_ranks: bool):
    """Rows of one group: label, the model, each baseline, and the model's ratio to the best baseline."""
    rows = [(f"{prefix}{k}", label.format(k=k)) for prefix, label in PROTOCOLS for k in ks]
    if with_ranks:
        rows += [(f"ndcg_at_{k}", f"NDCG@{k}") for k in ks] + [("mrr", "MRR")]
    widths = [max(len(head) + 2, 10) for head in heads]
    lines = [f"{title:<28}{'model':>10}" + "".join(f"{head:>{width}}" for head, width in zip(heads, widths))
             + f"{'vs best':>9}"]
    for name, label in rows:
        model_value = model_metrics[name]
        values = [metrics_of[name] for metrics_of in baseline_metrics]
        best = max(values, default=0.0)
        ratio = model_value / best if best else math.inf
        lines.append(f"{label:<28}{model_value:>10.4f}" + "".join(f"{value:>{width}.4f}" for value, width
                                                                 in zip(values, widths)) + f"{ratio:>8.2f}x")
    return lines
