"""What a run derives from its corpus, once (trainers.run_data): the cold users, the corpus as training sees it,
the training split read from disk at most once per run, whoever asks for it (issue 21)."""

import json

import numpy as np
import pytest

from data import history, pipeline, records
from tests.conftest import TINY_CORPUS
from trainers import model_builder, train_flags
from trainers.run_data import RunData


def _config(*flags):
    from absl import flags as absl_flags

    flag_values = absl_flags.FlagValues()
    train_flags.define_flags(flag_values)
    flag_values(["train", *TINY_CORPUS, *flags])
    return train_flags.config_from_flags(flag_values)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return model_builder.load_corpus(_config(f"--cache_dir={tmp_path_factory.mktemp('cache')}"))


def test_the_training_split_is_read_once_and_serves_every_order(corpus, monkeypatch):
    reads = _count_reads(monkeypatch)
    data = RunData.of(corpus, _config("--cold_users=0.2", "--query_features=history"))
    assert not reads, "nothing is read before it is asked for"
    in_memory = data.in_memory_columns()
    expected = pipeline.read_in_memory(corpus.train_files)
    assert {name: values.tolist() for name, values in in_memory.items()} == {
        name: values.tolist() for name, values in expected.items()}
    as_read = records.read_all(corpus.train_files)
    reads.clear()
    in_file_order = data.train_columns_in_file_order()
    for name in ("user_id", "item_id", "timestamp"):
        np.testing.assert_array_equal(in_file_order[name], as_read[name])
    np.testing.assert_array_equal(data.train_columns["item_id"], as_read["item_id"][data.train_file_rows])
    cold = history.cold_user_ids(corpus.num_users, 0.2, 7)
    np.testing.assert_array_equal(data.cold_user_ids, cold)
    warm = ~np.isin(as_read["user_id"], cold)
    assert data.warm_corpus.num_train == warm.sum() < corpus.num_train == data.corpus.num_train
    np.testing.assert_array_equal(data.warm_corpus.item_counts,
                                  np.bincount(as_read["item_id"][warm], minlength=corpus.num_items))
    assert data.with_config(None).train_columns is data.train_columns  # another config, the same one read
    assert not reads, "every view above came from the one read"


def test_without_cold_users_the_corpus_is_the_files_and_nothing_is_read(corpus, monkeypatch):
    reads = _count_reads(monkeypatch)
    data = RunData.of(corpus, _config())
    assert data.warm_corpus is corpus and len(data.cold_user_ids) == 0
    assert data.in_memory_columns(num_true=2) is None  # it streams: nothing read for it
    assert not reads


def test_what_breaks_ties_by_the_files_order_still_sees_it(tmp_path):
    """The in-memory split is sorted (by user, time, item); the cold users' held-out choice and the item
    transitions break ties in time by the files' order, as when each read the files themselves."""
    from tests.trainers.test_held_out import MONDAY, _config as held_out_config, _write_corpus
    from trainers import baselines, held_out

    # Each user: item 1, then 5 and 3 at one moment (in that file order), then one held-out row, 6.
    train = [(user, item, MONDAY + step) for user in range(8) for step, item in ((0, 1), (1, 5), (1, 3))]
    evaluation = [(user, 6, MONDAY + 10) for user in range(8)]
    corpus = _write_corpus(tmp_path, train, evaluation)  # eval_per_user=1
    data = RunData.of(corpus, held_out_config(("history",), cold_users=0.5, seed=1))
    np.testing.assert_array_equal(data.train_columns["item_id"][:3], [1, 3, 5])  # sorted: 3 before 5
    as_read = records.read_all(corpus.train_files)
    transitions = baselines.fit_transitions(data)
    expected = baselines.baselines.ItemTransitions().fit(as_read["user_id"], as_read["item_id"],
                                                         as_read["timestamp"], corpus.num_items)
    np.testing.assert_array_equal(transitions.targets, expected.targets)  # 1 -> 5 -> 3, not 1 -> 3 -> 5
    np.testing.assert_array_equal(transitions.counts, expected.counts)
    # Two held out per cold user (metadata.json's eval_per_user=2, the eval split holding one each): the eval row
    # and, of the tied pair, the later in the files: 3, never 5.
    (tmp_path / "two").mkdir()
    _write_corpus(tmp_path / "two", train, evaluation)
    metadata = json.loads((tmp_path / "two" / "metadata.json").read_text())
    (tmp_path / "two" / "metadata.json").write_text(json.dumps({**metadata, "eval_per_user": 2}))
    two = type(corpus).load(str(tmp_path / "two"))
    cold = held_out.load_held_out(RunData.of(two, data.config)).cold
    assert sorted(cold.relevant_ids[:, 0].tolist()) == [3] * 4 + [6] * 4  # 4 cold users x 2 held-out rows


@pytest.mark.slow
def test_a_run_reads_its_training_split_from_disk_once(tmp_path, monkeypatch):
    """Training input, the validation and test queries (histories, seen items, cold users), the baselines and
    the export's latest histories: one read of the training files in the whole run, in process."""
    import tensorflow as tf

    from trainers import distribute, train

    model_dir = tmp_path / "model"
    config = _config(f"--cache_dir={tmp_path / 'cache'}", "--epochs=2", "--steps_per_epoch=5", "--log_every_steps=5",
                     "--query_features=history", "--history_length=5", "--cold_users=0.1", "--exclude_seen",
                     "--keep_best=recall_at_10", "--projector_items=10", "--export_top_k=10")
    corpus = model_builder.load_corpus(config)  # generated before anything is counted
    assert corpus.has_validation
    reads = _count_reads(monkeypatch)
    train.run_task(tf, config, str(model_dir), distribute.tf_config_from_environment(), "default")
    train_reads = [paths for paths in reads if set(paths) & set(corpus.train_files)]
    assert train_reads == [corpus.train_files], reads
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert {"cold_users", "validation", "item_transitions"} <= set(metrics)
    summary = json.loads((model_dir / "run_summary.json").read_text())
    assert summary["export"]["path"].endswith("1")


def _count_reads(monkeypatch):
    """[the paths of every records.read_batches call] from now on: read_all reads through it, as do the
    streamed passes."""
    reads = []
    read_batches = records.read_batches

    def counted(paths, *args, **kwargs):
        reads.append(list(paths))
        return read_batches(paths, *args, **kwargs)

    monkeypatch.setattr(records, "read_batches", counted)
    return reads
