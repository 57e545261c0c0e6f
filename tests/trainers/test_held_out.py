"""Held-out queries of warm and cold users: histories before the held-out rows, context, the OOV bucket never
ranked, and the cold users' metrics beside their own most-popular baseline."""

import dataclasses
import json

import numpy as np
import pytest

from data import corpus as corpus_lib
from data import history, records
from trainers import baselines, held_out
from trainers.run_data import RunData
from trainers.run_config import DataConfig, ModelConfig, RunConfig

PAD = history.PAD
DAY = 86_400
MONDAY = 1_700_438_400  # 2023-11-20 00:00 UTC, a Monday
NUM_ITEMS = 8


def _write_corpus(directory, train, evaluation, item_keys=None, validation=()):
    """train / evaluation / validation: [(user, item, time)]; item_keys: the vocabulary (with `<oov>` for the
    OOV test); no validation rows: a corpus without a validation split."""
    splits = [("train", train), ("eval", evaluation)] + ([("validation", list(validation))] if validation else [])
    for split, rows in splits:
        columns = {name: np.array(column, np.int64) for name, column in zip(("user_id", "item_id", "timestamp"),
                                                                              zip(*rows))}
        records.write_interactions(str(directory), split, columns, num_shards=1)
    counts = np.bincount([item for _, item, _ in train], minlength=NUM_ITEMS)
    np.save(directory / "item_counts.npy", counts.astype(np.int64))
    if item_keys:
        (directory / corpus_lib.ITEM_VOCABULARY).write_text(
            "key\tid\tcount\n" + "".join(f"{key}\t{i}\t{counts[i]}\n" for i, key in enumerate(item_keys)))
    num_users = 1 + max(user for user, _, _ in train + evaluation)
    corpus_lib.write_metadata(str(directory), num_items=NUM_ITEMS, num_users=num_users, num_train=len(train),
                              num_eval=len(evaluation), eval_per_user=1,
                              **({"num_validation": len(validation), "validation_per_user": 1} if validation else {}))
    return corpus_lib.PreparedCorpus.load(str(directory))


def _config(query_features, history_length=3, cold_users=0.0, seed=0):
    return RunConfig(seed=seed, data=DataConfig(history_length=history_length, cold_users=cold_users),
                     model=ModelConfig(query_features=query_features))


# Users 0 and 1 (warm): training rows at 00:00, 01:00, 02:00 on Monday; user 1 holds out two items on Wednesday
# from 12:00.
TRAIN = [(0, 1, MONDAY), (0, 2, MONDAY + 3600), (0, 3, MONDAY + 7200),
         (1, 4, MONDAY), (1, 5, MONDAY + 3600)]
EVAL = [(0, 6, MONDAY + 2 * DAY + 12 * 3600), (1, 7, MONDAY + 2 * DAY + 12 * 3600),
        (1, 3, MONDAY + 2 * DAY + 12 * 3600 + 60)]


def test_warm_queries_see_the_training_history_before_the_first_held_out_row_and_its_moment(tmp_path):
    corpus = _write_corpus(tmp_path, TRAIN, EVAL)
    queries = held_out.load_held_out(RunData.of(corpus, _config(("history", "context"), history_length=2)))
    np.testing.assert_array_equal(queries.user_ids, [0, 1])
    np.testing.assert_array_equal(queries.history, [[3, 2], [5, 4]])  # newest first, cut at history_length
    np.testing.assert_array_equal(queries.relevant_ids, [[6, PAD], [7, 3]])
    np.testing.assert_array_equal(queries.context["hour_of_day"], [12, 12])
    np.testing.assert_array_equal(queries.context["day_of_week"], [2, 2])  # Wednesday
    assert queries.cold is None and set(queries.features()) == {"user_id", "history", "hour_of_day", "day_of_week"}
    user_id_only = held_out.load_held_out(RunData.of(corpus))
    assert user_id_only.history is None and user_id_only.context is None and set(user_id_only.features()) == {"user_id"}


def test_cold_users_are_queried_per_held_out_row_with_their_other_items(tmp_path):
    rng = np.random.default_rng(0)
    train = [(user, int(rng.integers(NUM_ITEMS)), MONDAY + 60 * step) for user in range(40) for step in range(4)]
    evaluation = [(user, int(rng.integers(NUM_ITEMS)), MONDAY + DAY) for user in range(40)]
    corpus = _write_corpus(tmp_path, train, evaluation)
    config = _config(("history",), history_length=3, cold_users=0.25)
    queries = held_out.load_held_out(RunData.of(corpus, config), exclude_seen=True)
    cold_ids = history.cold_user_ids(40, 0.25, 0)
    assert len(cold_ids) == 10 and not np.isin(queries.user_ids, cold_ids).any()
    cold = queries.cold
    np.testing.assert_array_equal(cold.user_ids, cold_ids)  # one held-out row each, the last by time
    by_user = {user: [item for u, item, _ in train if u == user] for user in cold_ids.tolist()}
    for row, user in enumerate(cold.user_ids.tolist()):
        assert cold.relevant_ids[row, 0] == [item for u, item, _ in evaluation if u == user][0]
        np.testing.assert_array_equal(cold.history[row], by_user[user][::-1][:3])
        assert set(cold.seen_ids[row][cold.seen_ids[row] >= 0].tolist()) == set(by_user[user])


class _LastItem:
    """A stand-in model: one-hot item embeddings, the query the one-hot of the history's most recent item."""

    class _Items:
        @staticmethod
        def embed_all():
            return np.eye(NUM_ITEMS, dtype=np.float32)

    item_tower = _Items()

    @staticmethod
    def query_embeddings(features):
        one_hot = np.eye(NUM_ITEMS, dtype=np.float32)[features["history"][:, 0]]
        return type("Tensor", (), {"numpy": lambda self: one_hot})()


def test_cold_metrics_sit_beside_their_own_baseline_and_oov_is_never_ranked(tmp_path):
    keys = ["<oov>", "a", "b", "c", "d", "e", "f", "g"]  # id 0, the most frequent, is the OOV bucket
    train = [(user, item, MONDAY + step) for user in range(8) for step, item in enumerate([0, 0, 0, 1, 1])]
    train += [(user, user % 4 + 4, MONDAY + 10) for user in range(8)]  # each user's latest item ...
    evaluation = [(user, user % 4 + 4, MONDAY + DAY) for user in range(8)]  # ... is held out again
    corpus = _write_corpus(tmp_path, train, evaluation, item_keys=keys)
    config = _config(("history",), history_length=8, cold_users=0.5, seed=1)
    data = RunData.of(corpus, config)
    queries = held_out.load_held_out(data)
    assert corpus.oov_item_id == 0, "from the vocabulary: this metadata.json has no oov_item_id"
    assert queries.oov_item_id == 0 and queries.cold.oov_item_id == 0 and len(queries.cold.user_ids) == 4
    model_metrics = held_out.evaluate(_LastItem(), queries, ks=[1, 3])
    results = baselines.evaluate(data, queries, ks=[1, 3])
    baseline = results["most_popular"]
    assert model_metrics["recall_at_1"] == 1.0 and model_metrics["cold_users/recall_at_1"] == 1.0
    assert baseline["recall_at_1"] == 0.0 and baseline["cold_users/recall_at_1"] == 0.0
    # Nothing followed a user's latest item (user % 4 + 4) in training: transitions fall back on popularity.
    assert results["item_transitions"]["recall_at_1"] == 0.0
    document = held_out.metrics_document(model_metrics, results)
    assert set(document) == {"split", "model", "most_popular", "item_transitions", "cold_users"}
    assert document["split"] == "test" and "validation" not in document and "keep_best" not in document
    assert set(document["cold_users"]) == {"model", "most_popular", "item_transitions"}
    assert document["cold_users"]["model"]["mrr"] == 1.0 and "cold_users/mrr" not in document["model"]
    assert set(baseline) == set(model_metrics)  # one tag name each in TensorBoard's eval and baseline runs
    text = held_out.report(model_metrics, results, [1, 3], baselines.LABELS)
    assert "cold users" in text and "NDCG@3" in text and "MRR" in text and "item-to-item" in text
    # The most popular item is the OOV bucket: popularity's first item is the next one.
    first = held_out._popularity(corpus.item_counts, dataclasses.replace(queries, relevant_ids=np.ones((4, 1))), [1])
    assert first["recall_at_1"] == 1.0


def test_item_transitions_rank_what_followed_the_last_training_item(tmp_path):
    # Users 0-3 train on 1, 2, 3 and hold out 4; users 4-7 train on 1, 2 and hold out 3. Pairs: 1 -> 2 eight times,
    # 2 -> 3 four times. Users 4-7 (last item 2) get 3 first: found. Nothing followed 3, so users 0-3 get
    # popularity (1 and 2 eight times each, 1 the lower id): not found. Popularity finds no one at K=1.
    train = [(user, item, MONDAY + step) for user in range(8) for step, item in enumerate([1, 2, 3][: 3 - user // 4])]
    evaluation = [(user, 4 if user < 4 else 3, MONDAY + DAY) for user in range(8)]
    corpus = _write_corpus(tmp_path, train, evaluation)
    data = RunData.of(corpus)
    queries = held_out.load_held_out(data)  # a user-id model's queries: the baselines read the last items
    np.testing.assert_array_equal(queries.last_items, [3, 3, 3, 3, 2, 2, 2, 2])
    results = baselines.evaluate(data, queries, ks=[1, 2])
    assert results["item_transitions"]["recall_at_1"] == 0.5 and results["most_popular"]["recall_at_1"] == 0.0
    assert results["item_transitions"]["recall_at_2"] == 0.5  # users 0-3: popularity's 1, 2; never 4


def test_metrics_document_without_cold_users_is_as_before():
    document = held_out.metrics_document({"recall_at_10": 0.5}, {"most_popular": {"recall_at_10": 0.1}})
    assert document == {"split": "test", "model": {"recall_at_10": 0.5}, "most_popular": {"recall_at_10": 0.1}}
    json.dumps(document)
    chosen = {"metric": "recall_at_10", "epoch": 2, "split": "validation"}
    document = held_out.metrics_document({"recall_at_10": 0.5}, {}, validation_metrics={"recall_at_10": 0.6},
                                         keep_best=chosen)
    assert document == {"split": "test", "model": {"recall_at_10": 0.5}, "validation": {"model": {"recall_at_10": 0.6}},
                        "keep_best": chosen}
    text = held_out.report({"recall_at_10": 0.5, "top_k_accuracy_at_10": 0.5}, {}, [10], split="test",
                           keep_best={**chosen, "split": "test"})
    assert text.startswith("held-out metric (test split)") and "on the test split (no validation split" in text


def test_validation_queries_read_training_rows_and_test_queries_training_and_validation_rows(tmp_path):
    # User 0 trains on 1, 2, validates on 3, is tested on 6; user 1 trains on 4, validates on 5, is tested on 7.
    train = [(0, 1, MONDAY), (0, 2, MONDAY + 60), (1, 4, MONDAY)]
    validation = [(0, 3, MONDAY + DAY), (1, 5, MONDAY + DAY)]
    test = [(0, 6, MONDAY + 2 * DAY), (1, 7, MONDAY + 2 * DAY)]
    corpus = _write_corpus(tmp_path, train, test, validation=validation)
    assert held_out.selection_split(corpus) == "validation"
    config = _config(("history",), history_length=3)
    chosen_on = held_out.load_held_out(RunData.of(corpus, config), exclude_seen=True, split="validation")
    np.testing.assert_array_equal(chosen_on.relevant_ids, [[3], [5]])
    np.testing.assert_array_equal(chosen_on.history, [[2, 1, PAD], [4, PAD, PAD]])
    np.testing.assert_array_equal(chosen_on.last_items, [2, 4])
    np.testing.assert_array_equal(chosen_on.seen_ids, [[1, 2], [4, PAD]])
    tested = held_out.load_held_out(RunData.of(corpus, config), exclude_seen=True)  # split="test", the default
    np.testing.assert_array_equal(tested.relevant_ids, [[6], [7]])
    np.testing.assert_array_equal(tested.history, [[3, 2, 1], [5, 4, PAD]])
    np.testing.assert_array_equal(tested.last_items, [3, 5])  # the item-to-item baseline's query
    np.testing.assert_array_equal(tested.seen_ids, [[1, 2, 3], [4, 5, PAD]])
    without = _write_corpus(tmp_path / "old", train, test) if (tmp_path / "old").mkdir() is None else None
    assert held_out.selection_split(without) == "test"
    with pytest.raises(ValueError, match="no validation split"):
        held_out.load_held_out(RunData.of(without), split="validation")
