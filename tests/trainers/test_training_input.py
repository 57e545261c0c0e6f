"""The training input of a history model: histories and cold users as the trainer feeds them, under each
strategy."""

import json

import numpy as np
import pytest

from data import history, records
from tests.conftest import TINY_CORPUS, run_module
from trainers import model_builder, training_input
from trainers.run_data import RunData
from trainers.event_reader import read_scalars
from trainers.run_config import DataConfig, ModelConfig, RunConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    config = RunConfig(seed=7, data=DataConfig(num_items=500, num_users=200, num_interactions=8000,
                                               cache_dir=str(tmp_path_factory.mktemp("cache"))))
    return model_builder.load_corpus(config), config


def _history_config(config, **data):
    return RunConfig(seed=config.seed, data=DataConfig(**{**vars(config.data), **data}),
                     model=ModelConfig(query_features=("history", "context")))


def test_batches_carry_each_rows_history_and_no_cold_user(corpus):
    corpus, config = corpus
    config = _history_config(config, history_length=5, cold_users=0.25)
    data = RunData.of(corpus, config)
    cold = data.cold_user_ids
    assert len(cold) == 50
    source = training_input.TrainingInput.of_run(data)
    assert source.columns is data.train_columns, "the run's one in-memory training split"
    train = records.read_all(corpus.train_files)
    warm = ~np.isin(train["user_id"], cold)
    batch = next(iter(source.batches().take(1)))
    assert not np.isin(batch["user_id"].numpy(), cold).any()
    expected = history.histories_before(train["user_id"][warm], train["item_id"][warm], train["timestamp"][warm],
                                        batch["user_id"].numpy(), batch["timestamp"].numpy(), 5)
    np.testing.assert_array_equal(batch["history"].numpy(), expected)
    assert set(batch) >= {"history", "hour_of_day", "day_of_week"}


def test_the_corpus_training_sees_under_cold_users(corpus):
    corpus, config = corpus
    config = _history_config(config, cold_users=0.25)
    view = RunData.of(corpus, config).warm_corpus
    train = records.read_all(corpus.train_files)
    warm = ~np.isin(train["user_id"], history.cold_user_ids(corpus.num_users, 0.25, config.seed))
    assert view.num_train == warm.sum() < corpus.num_train
    np.testing.assert_array_equal(view.item_counts, np.bincount(train["item_id"][warm], minlength=corpus.num_items))


def test_latest_histories_are_each_users_last_training_items(corpus):
    corpus, config = corpus
    config = _history_config(config, history_length=4, cold_users=0.25)
    data = RunData.of(corpus, config)
    latest = training_input.latest_histories(data)
    train = records.read_all(corpus.train_files)
    assert latest.shape == (corpus.num_users, 4)
    cold = data.cold_user_ids
    assert np.all(latest[cold] == history.PAD), "cold users have no training history"
    user = int(np.setdiff1d(np.arange(corpus.num_users), cold)[0])
    mine = train["user_id"] == user
    newest_first = train["item_id"][mine][np.lexsort((-train["item_id"][mine], -train["timestamp"][mine]))]
    np.testing.assert_array_equal(latest[user], newest_first[:4])


TINY = [*TINY_CORPUS, "--epochs=1", "--steps_per_epoch=12", "--log_every_steps=1", "--projector_items=0",
        "--noexport", "--query_features=history,context"]


@pytest.mark.slow
def test_history_model_on_two_mirrored_replicas_gives_the_default_losses(tmp_path):
    losses = {}
    for strategy in ("default", "mirrored"):
        model_dir = tmp_path / strategy
        result = run_module("trainers.train", f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}", *TINY,
                            f"--strategy={strategy}", *(["--cpu_replicas=2"] if strategy == "mirrored" else []))
        assert result.returncode == 0, result.stderr[-3000:]
        losses[strategy] = [value for _, value in read_scalars(str(model_dir / "tensorboard" / "train"))["batch_loss"]]
    np.testing.assert_allclose(losses["mirrored"], losses["default"], rtol=1e-4)


@pytest.mark.slow
def test_history_model_under_parameter_server_reads_the_sharded_item_table(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    model_dir = tmp_path / "ps"
    command = [sys.executable, "scripts/launch_local_cluster.py", "--workers=1", "--ps=2", "--",
               "--strategy=parameter_server", f"--model_dir={model_dir}", f"--cache_dir={tmp_path / 'cache'}",
               *TINY, "--num_ps_shards=2", "--cold_users=0.1", "--share_item_embeddings"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    summary = json.loads((model_dir / "run_summary.json").read_text())
    assert summary["strategy"] == "parameter_server" and len(summary["item_table"]["shards"]) == 2
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics) == {"split", "model", "most_popular", "item_transitions", "cold_users", "validation"}
    assert metrics["split"] == "test" and "cold_users" in metrics["validation"]  # cold users on both splits
    assert metrics["model"]["recall_at_100"] > 0 and metrics["cold_users"]["model"]["recall_at_100"] > 0
