import numpy as np
import pytest

from data import builtin, corpus, pipeline, records, synthetic

SMALL = synthetic.SyntheticConfig(num_items=3000, num_users=400, num_interactions=20_000, num_topics=20, seed=3)


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
    assert len(generated.train) + len(generated.eval) == SMALL.num_interactions
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


def test_cache_round_trip_and_pipeline(tmp_path):
    prepared = builtin.prepare(SMALL, str(tmp_path))
    again = builtin.prepare(SMALL, str(tmp_path))
    assert prepared.directory == again.directory
    assert (prepared.num_train, prepared.num_eval) == (19_600, 400)
    assert not [name for name in (tmp_path).iterdir() if name.name.startswith(".staging")]
    eval_columns = records.read_all(prepared.eval_files)
    generated = synthetic.generate(SMALL)
    assert sorted(eval_columns["item_id"].tolist()) == sorted(generated.eval.item_id.tolist())
    batches = list(pipeline.training_dataset(prepared.train_files, 1000, seed=1).as_numpy_iterator())
    assert len(batches) == 19 and batches[0]["user_id"].shape == (1000,)
    with pytest.raises(corpus.CorpusError, match="metadata.json"):
        corpus.PreparedCorpus.load(str(tmp_path))
