import dataclasses
import hashlib
import json

import numpy as np
import pytest

from data import builtin, corpus, history, pipeline, records, synthetic

SMALL = synthetic.SyntheticConfig(num_items=3000, num_users=400, num_interactions=20_000, num_topics=20, seed=3)
# Fixed tastes, position timestamps and no validation split: the corpus of the generator before taste drift,
# sessions and the validation split.
SMALL_WITHOUT_DRIFT = dataclasses.replace(SMALL, taste_drift=0.0, session_timestamps=False, validation_per_user=0)


def test_same_seed_same_corpus_other_seed_differs():
    first, second = synthetic.generate(SMALL), synthetic.generate(SMALL)
    np.testing.assert_array_equal(first.train.item_id, second.train.item_id)
    other = synthetic.generate(synthetic.SyntheticConfig(**{**SMALL.__dict__, "seed": 4}))
    assert not np.array_equal(first.train.item_id[:1000], other.train.item_id[:1000])


def test_ids_are_ranked_by_training_frequency_and_popularity_is_zipfian():
    generated = synthetic.generate(SMALL)
    counts = np.bincount(generated.train.item_id, minlength=SMALL.num_items)
    np.testing.assert_array_equal(counts, generated.item_counts)
    assert np.all(np.diff(counts) <= 0), "id 0 must be the most frequent, counts non-increasing"
    # Zipfian head: the top 1% of items carry far more than 1% of the interactions.
    assert counts[: SMALL.num_items // 100].sum() / counts.sum() > 0.15


def test_held_out_is_each_users_last_interaction_and_sizes_add_up():
    generated = synthetic.generate(SMALL)
    assert len(generated.train) + len(generated.validation) + len(generated.eval) == SMALL.num_interactions
    np.testing.assert_array_equal(np.unique(generated.eval.user_id), np.arange(SMALL.num_users))
    last_train_time = np.zeros(SMALL.num_users, np.int64)
    np.maximum.at(last_train_time, generated.train.user_id, generated.train.timestamp)
    assert np.all(generated.eval.timestamp > last_train_time[generated.eval.user_id])


def test_tastes_are_learnable_users_repeat_their_topics():
    """A user's held-out item shares a topic with their history far more often than chance would give."""
    generated = synthetic.generate(SMALL)
    train_items_by_user = {}
    for user, item in zip(generated.train.user_id, generated.train.item_id):
        train_items_by_user.setdefault(user, set()).add(item)
    seen = np.mean([item in train_items_by_user[user] for user, item in zip(generated.eval.user_id, generated.eval.item_id)])
    shuffled = np.random.default_rng(0).permutation(generated.eval.item_id)
    seen_by_chance = np.mean([item in train_items_by_user[user] for user, item in zip(generated.eval.user_id, shuffled)])
    assert seen > seen_by_chance + 0.05


def test_bad_config_names_the_setting():
    with pytest.raises(ValueError, match="num_interactions"):
        synthetic.generate(synthetic.SyntheticConfig(num_users=100, num_interactions=10))
    with pytest.raises(ValueError, match="taste_drift"):
        synthetic.generate(dataclasses.replace(SMALL, taste_drift=1.5))


def _digest(generated):
    digest = hashlib.sha256()
    for column in (*generated.train, *generated.eval, generated.item_counts):
        digest.update(np.ascontiguousarray(column, np.int64).tobytes())
    return digest.hexdigest()[:16]


def test_without_drift_the_corpus_is_the_one_before_drift_and_sessions():
    """Digest of SMALL_WITHOUT_DRIFT's train, eval and item_counts as drawn by the generator at commit 57f8c1a,
    before taste_drift and session_timestamps existed: caches and results of that corpus stay valid."""
    assert _digest(synthetic.generate(SMALL_WITHOUT_DRIFT)) == "30edf804c1dac613"


def _top_topic(topics, num_topics):
    """[m, k] topic ids, num_topics where there is none -> [m] the most frequent topic of each row."""
    counts = np.zeros((len(topics), num_topics + 1), np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(topics)), topics.shape[1]), topics.ravel()), 1)
    return counts[:, :num_topics].argmax(axis=1)


def _held_out_topic_accuracies(config, num_recent=10):
    """How often the held-out item's topic is the top topic of (the user's last num_recent training items, all of
    the user's training items)."""
    generated = synthetic.generate(config)
    train, held_out, item_topic = generated.train, generated.eval, generated.item_topic
    recent = history.histories_before(
        train.user_id, train.item_id, train.timestamp, held_out.user_id, held_out.timestamp, num_recent
    )
    recent_topics = np.where(recent != history.PAD, item_topic[np.maximum(recent, 0)], config.num_topics)
    user_topic = train.user_id * config.num_topics + item_topic[train.item_id]
    user_topic_counts = np.bincount(user_topic, minlength=config.num_users * config.num_topics)
    all_time_top_topic = user_topic_counts.reshape(config.num_users, config.num_topics).argmax(axis=1)  # [users]
    held_out_topic = item_topic[held_out.item_id]
    recent_accuracy = np.mean(_top_topic(recent_topics, config.num_topics) == held_out_topic)
    all_time_accuracy = np.mean(all_time_top_topic[held_out.user_id] == held_out_topic)
    return recent_accuracy, all_time_accuracy


def test_drift_recent_items_predict_the_held_out_topic_better_than_all_time_tastes():
    recent, all_time = _held_out_topic_accuracies(SMALL)  # about 0.66 and 0.41
    assert recent > all_time + 0.15, (recent, all_time)


def test_without_drift_all_time_tastes_predict_as_well_as_recent_items():
    recent, all_time = _held_out_topic_accuracies(SMALL_WITHOUT_DRIFT)  # about 0.72 and 0.73
    assert all_time > 0.5 and recent < all_time + 0.03, (recent, all_time)


def test_item_topic_is_the_topic_items_were_drawn_under():
    """Without popularity noise, a user draws from at most 2 x max_user_topics topics (first and second taste)."""
    generated = synthetic.generate(dataclasses.replace(SMALL, popularity_noise=0.0))
    assert generated.item_topic.shape == (SMALL.num_items,)
    pairs = np.unique(np.stack([generated.train.user_id, generated.item_topic[generated.train.item_id]]), axis=1)
    topics_per_user = np.bincount(pairs[0], minlength=SMALL.num_users)
    assert topics_per_user.max() <= 2 * SMALL.max_user_topics
    assert topics_per_user.max() > SMALL.max_user_topics, "drift adds topics to some users"


def test_session_timestamps_are_seconds_in_evening_sessions_days_apart():
    generated = synthetic.generate(SMALL)
    log = generated.train
    assert np.all(log.timestamp >= synthetic.FIRST_DAY)
    same_user = log.user_id[1:] == log.user_id[:-1]
    gaps = np.diff(log.timestamp)[same_user]  # seconds between a user's consecutive training interactions
    assert gaps.min() >= 1, "a user's timestamps strictly increase"
    assert 0.7 < np.mean(gaps < 15 * 60) < 0.95, "most within a session, minutes apart"
    assert 0.05 < np.mean(gaps > 12 * 3600) < 0.3, "sessions on different days"
    evening = np.isin(history.hour_of_day(log.timestamp), np.arange(16, 24))
    assert np.mean(evening) > 0.5, "users lean to the evening (hours 16-23 UTC)"
    assert np.all(np.bincount(history.day_of_week(log.timestamp), minlength=7) > 0.1 * len(log))


def test_cache_round_trip_and_pipeline(tmp_path):
    prepared = builtin.prepare(SMALL, str(tmp_path))
    again = builtin.prepare(SMALL, str(tmp_path))
    assert prepared.directory == again.directory
    # One validation row per user (SyntheticConfig's default), apart from train and from the eval (test) rows.
    assert (prepared.num_train, prepared.num_validation, prepared.num_eval) == (19_200, 400, 400)
    validation_columns = records.read_all(prepared.validation_files)
    np.testing.assert_array_equal(np.sort(validation_columns["user_id"]), np.arange(400))
    generated = synthetic.generate(SMALL)
    last_train_time = np.zeros(400, np.int64)
    np.maximum.at(last_train_time, generated.train.user_id, generated.train.timestamp)
    first_eval_time = np.full(400, np.iinfo(np.int64).max)
    np.minimum.at(first_eval_time, generated.eval.user_id, generated.eval.timestamp)
    validation_time = generated.validation.timestamp[np.argsort(generated.validation.user_id)]
    assert np.all(last_train_time < validation_time) and np.all(validation_time < first_eval_time)
    np.testing.assert_array_equal(generated.item_counts, np.bincount(generated.train.item_id, minlength=3000))
    # validation_per_user=0 is the corpus of before, under the cache name of before (old caches stay valid).
    assert builtin.cache_key(SMALL_WITHOUT_DRIFT) == "synthetic-" + hashlib.sha256(json.dumps(
        {k: v for k, v in dataclasses.asdict(SMALL_WITHOUT_DRIFT).items() if k != "validation_per_user"},
        sort_keys=True).encode()).hexdigest()[:12]
    assert builtin.cache_key(SMALL) != builtin.cache_key(dataclasses.replace(SMALL, validation_per_user=0))
    assert not [name for name in (tmp_path).iterdir() if name.name.startswith(".staging")]
    eval_columns = records.read_all(prepared.eval_files)
    generated = synthetic.generate(SMALL)
    assert sorted(eval_columns["item_id"].tolist()) == sorted(generated.eval.item_id.tolist())
    batches = list(pipeline.training_dataset(prepared.train_files, 1000, seed=1).as_numpy_iterator())
    assert len(batches) == 19 and batches[0]["user_id"].shape == (1000,)
    with pytest.raises(corpus.CorpusError, match="metadata.json"):
        corpus.PreparedCorpus.load(str(tmp_path))
