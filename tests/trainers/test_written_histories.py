"""A corpus whose records carry their histories (data.prepare --history_length, issue 20): the trainer streams
them and reads no split whole; the batches' histories are the ones it would look up; training, held-out evaluation
and export work; settings that would read the training split whole, or want longer histories, are refused."""

import json

import numpy as np
import pytest

from tests.conftest import run_module
from tests.trainers.test_export import _retrieve_rows

NUM_USERS, PER_USER, NUM_ITEMS = 200, 15, 120
WRITTEN = 8
PREPARE = ["--user_column=user", "--item_column=item", "--timestamp_column=time"]
TRAIN = ["--query_features=history", "--history_length=4", "--batch_size=128", "--num_sampled=60", "--epochs=6",
         "--steps_per_epoch=20", "--learning_rate=0.05", "--embedding_dim=16", "--eval_top_k=10",
         "--export_top_k=10", "--projector_items=0", "--seed=3"]


def _write_log(path):
    """Each user walks the items in order from a random start: the next item is the last one plus 1, which a
    history model learns and most-popular cannot."""
    rng = np.random.default_rng(0)
    lines = ["user,item,time"]
    for user in range(NUM_USERS):
        start = rng.integers(NUM_ITEMS)
        lines += [f"u{user},i{(start + step) % NUM_ITEMS},{1000 + step}" for step in range(PER_USER)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("written")
    _write_log(root / "log.csv")
    for name, extra in (("written", [f"--history_length={WRITTEN}"]), ("looked_up", [])):
        prepared = run_module("data.prepare", f"--input={root / 'log.csv'}", f"--output_dir={root / name}",
                              *PREPARE, *extra)
        assert prepared.returncode == 0, prepared.stderr[-3000:]
    return root


def test_streamed_batches_carry_the_histories_the_trainer_would_look_up(corpora):
    from data import corpus, history, pipeline, records

    prepared = corpus.PreparedCorpus.load(str(corpora / "written"))
    assert prepared.history_length == WRITTEN
    assert pipeline.read_in_memory(prepared.train_files) is None  # streamed, never read whole
    train = records.read_all(prepared.train_files)
    log = history.history_log(train["user_id"], train["item_id"], train["timestamp"])
    inputs = pipeline.QueryInputs(None, 4, written_history=True)
    batches = pipeline.training_dataset(prepared.train_files, 64, seed=1, query_inputs=inputs).take(5)
    for batch in batches.as_numpy_iterator():
        assert batch["history"].shape == (64, 4)
        np.testing.assert_array_equal(
            batch["history"], history.histories_from_log(log, batch["user_id"], batch["timestamp"], 4))
        assert (batch["history"][:, 0] >= 0).mean() > 0.8  # most rows have an earlier item


@pytest.mark.slow
def test_the_history_model_trains_evaluates_and_exports_on_written_histories(corpora, tmp_path):
    model_dir = tmp_path / "model"
    result = run_module("trainers.train", f"--data={corpora / 'written'}", f"--model_dir={model_dir}", *TRAIN)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["model"]["recall_at_10"] > 0.5, metrics
    assert metrics["model"]["recall_at_10"] > 4 * metrics["most_popular"]["recall_at_10"], metrics
    # The export queries a known user with their latest history (latest_history-*.tfrecord): the next item.
    export = sorted((model_dir / "export").iterdir())[-1]
    held_out = {}
    for line in (corpora / "log.csv").read_text().splitlines()[1:]:
        user, item, _ = line.split(",")
        held_out[user] = item  # each user's last row is the held-out one
    for user in ("u0", "u100"):  # a retrieve process each; the walk makes the next item easy (recall@10 ~ 1)
        assert held_out[user] in [row[2] for row in _retrieve_rows(f"--export_dir={export}", f"--user_id={user}")]


def test_a_longer_history_is_refused_at_the_command_line(corpora, tmp_path):
    result = run_module("trainers.train", f"--data={corpora / 'written'}", f"--model_dir={tmp_path / 'model'}",
                        *TRAIN, "--history_length=9")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "--history_length=9: this corpus was prepared with --history_length=8" in line, line
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("section, name, value, expected", [
    ("data", "cold_users", 0.1, "--cold_users=0.1 needs the training split read whole"),
    ("evaluation", "exclude_seen", True, "--exclude_seen=True needs the training split read whole"),
])
def test_settings_that_read_the_whole_split_are_refused(corpora, section, name, value, expected):
    """The same check as the command line's (trainers.checks.check_with_corpus runs it before reading anything)."""
    import dataclasses

    from data import corpus
    from trainers import checks, run_config

    config = run_config.RunConfig()
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, history_length=WRITTEN))
    config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{name: value})})
    with pytest.raises(ValueError, match=expected):
        checks.check_written_histories(corpus.PreparedCorpus.load(str(corpora / "written")), config)
