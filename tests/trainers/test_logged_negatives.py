"""Logged negatives as a user meets them: a CSV log with a column of items shown and not chosen, prepared with
`python -m data.prepare --negative_column`, trained on with `python -m trainers.train --logged_negative_weight`."""

import json

import numpy as np
import pytest

from tests.conftest import run_module

NUM_USERS, NUM_ITEMS, PER_USER = 100, 200, 12


def _write_log(path):
    """Each row shows up to 4 other items (some of them keys never in the log, 'gone<k>'), as a '|' list."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, NUM_ITEMS + 1)
    lines = ["user,item,time,shown"]
    for user in range(NUM_USERS):
        for time in range(PER_USER):
            item = int(rng.choice(NUM_ITEMS, p=popularity / popularity.sum()))
            shown = [f"item{key}" for key in rng.integers(NUM_ITEMS, size=int(rng.integers(5)))]
            if time % 5 == 0:
                shown.append(f"gone{time}")
            lines.append(f"user{user},item{item},{1_700_000_000 + time},{'|'.join(shown)}")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_a_log_with_shown_items_prepares_and_trains(tmp_path):
    _write_log(tmp_path / "log.csv")
    corpus_dir = tmp_path / "corpus"
    prepared = run_module(
        "data.prepare", f"--input={tmp_path / 'log.csv'}", f"--output_dir={corpus_dir}", "--user_column=user",
        "--item_column=item", "--timestamp_column=time", "--negative_column=shown",
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    metadata = json.loads((corpus_dir / "metadata.json").read_text())
    counts = metadata["logged_negatives"]
    assert counts["column"] == "shown"
    assert counts["read"] == counts["kept"] + sum(counts["dropped"].values())
    assert counts["kept"] > 0 and counts["dropped"]["unseen_item"] > 0 and counts["dropped"]["own_item"] > 0
    assert 1 <= metadata["max_negatives"] <= 5

    trained = run_module(
        "trainers.train", f"--data={corpus_dir}", f"--model_dir={tmp_path / 'run'}", "--num_sampled=10",
        "--batch_size=32", "--epochs=1", "--eval_top_k=10", "--projector_items=0", "--noexport", "--logged_negative_weight=2",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Traceback" not in trained.stderr
    assert (tmp_path / "run" / "run_summary.json").exists()


def test_the_trainers_batches_hand_the_model_negative_ids(tmp_path):
    from data import corpus, prepare
    from data.schema import Schema
    from trainers.training_input import TrainingInput

    _write_log(tmp_path / "log.csv")
    schema = Schema(user_column="user", item_column="item", timestamp_column="time", negative_column="shown")
    prepare.prepare(str(tmp_path / "log.csv"), schema, str(tmp_path / "corpus"))
    prepared = corpus.PreparedCorpus.load(str(tmp_path / "corpus"))
    width = json.loads((tmp_path / "corpus" / "metadata.json").read_text())["max_negatives"]
    negatives = TrainingInput(prepared.train_files, 32, 1, seed=0).first_batch()["negative_ids"]
    assert negatives.shape == (32, width) and negatives.dtype.name == "int64"
    assert (negatives.numpy() >= -1).all() and (negatives.numpy() < prepared.num_items).all()
