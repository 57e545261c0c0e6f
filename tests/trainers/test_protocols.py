"""The report names its averaging: recall@K per held-out user and top-K accuracy per held-out row (TFRS's
factorized_top_k/top_K_categorical_accuracy), both in metrics.json, the printed report and trainers.evaluate's
JSON. They differ when users hold out different numbers of rows, as in a fixed published split."""

import json

import numpy as np
import pytest

from tests.conftest import run_module

NUM_USERS, NUM_ITEMS, PER_USER = 200, 300, 30
KS = (10, 50)


def write_split(directory):
    """train.csv and a fixed test.csv (--eval_input) in which user u holds out 1 + u % 4 rows: each user likes one
    of 6 item groups and picks from it by popularity."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 0.7
    group = np.arange(NUM_ITEMS) % 6
    files = {"train": ["user,item,time"], "test": ["user,item,time"]}
    for user in range(NUM_USERS):
        weights = np.where(group == user % 6, popularity, 0.05 * popularity)
        held_out = 1 + user % 4
        items = rng.choice(NUM_ITEMS, PER_USER + held_out, p=weights / weights.sum())
        for time, item in enumerate(items):
            files["train" if time < PER_USER else "test"].append(f"u{user},i{item},{1_700_000_000 + time}")
    directory.mkdir()
    for name, lines in files.items():
        (directory / f"{name}.csv").write_text("\n".join(lines) + "\n")


def _by_hand(top, eval_rows):
    """(recall@K per user, top-K accuracy per row) of one top-K list for everyone, computed here from scratch:
    the share of each user's distinct held-out items found, averaged over users; the share of rows found."""
    users, items = eval_rows["user_id"], eval_rows["item_id"]
    per_user = [np.isin(np.unique(items[users == user]), top).mean() for user in np.unique(users)]
    return float(np.mean(per_user)), float(np.isin(items, top).mean())


@pytest.mark.slow
def test_recall_per_user_and_top_k_accuracy_per_row_are_both_reported_and_labelled(tmp_path):
    write_split(tmp_path / "logs")
    corpus = tmp_path / "corpus"
    prepared = run_module(
        "data.prepare", f"--input={tmp_path / 'logs' / 'train.csv'}", f"--eval_input={tmp_path / 'logs' / 'test.csv'}",
        f"--output_dir={corpus}", "--user_column=user", "--item_column=item", "--timestamp_column=time",
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    model_dir = tmp_path / "model"
    trained = run_module(
        "trainers.train", f"--data={corpus}", f"--model_dir={model_dir}", "--num_sampled=100", "--batch_size=128",
        "--epochs=2", "--eval_top_k=10,50", "--export_top_k=10", "--projector_items=0", "--embedding_dim=16",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Traceback" not in trained.stderr
    metrics = json.loads((model_dir / "metrics.json").read_text())
    for side in ("model", "most_popular"):
        for k in KS:
            assert {f"recall_at_{k}", f"top_k_accuracy_at_{k}"} <= metrics[side].keys(), side
    for k in KS:
        assert f"recall@{k} per user" in trained.stdout and f"top-{k} accuracy per row" in trained.stdout

    # The most-popular baseline by hand: the K most frequent training items for everyone (ties by id, the order
    # data.prepare ranks them in), scored once per user and once per row.
    from data import records
    from trainers import model_builder, run_dir

    config, _ = run_dir.load_config(str(model_dir))
    loaded = model_builder.load_corpus(config)
    eval_rows = records.read_all(loaded.eval_files)
    rows_per_user = np.unique(eval_rows["user_id"], return_counts=True)[1]
    assert rows_per_user.min() == 1 and rows_per_user.max() >= 3
    for k in KS:
        top = np.argsort(-np.asarray(loaded.item_counts), kind="stable")[:k]
        per_user, per_row = _by_hand(top, eval_rows)
        assert metrics["most_popular"][f"recall_at_{k}"] == pytest.approx(per_user, abs=1e-6)
        assert metrics["most_popular"][f"top_k_accuracy_at_{k}"] == pytest.approx(per_row, abs=1e-6)
        assert per_user != pytest.approx(per_row, abs=1e-3), "the split must tell the two protocols apart"
    assert metrics["model"]["recall_at_10"] != pytest.approx(metrics["model"]["top_k_accuracy_at_10"], abs=1e-4)

    evaluated = run_module("trainers.evaluate", f"--model_dir={model_dir}", "--eval_top_k=10,50")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    step = json.loads((model_dir / "run_summary.json").read_text())["final_step"]
    report = json.loads((model_dir / "evaluation" / f"step-{step}.json").read_text())
    for k in KS:
        for name in (f"recall_at_{k}", f"top_k_accuracy_at_{k}"):
            assert report["metrics"][name] == pytest.approx(metrics["model"][name], abs=1e-5), name
    assert "per user" in evaluated.stdout and "per held-out row" in evaluated.stdout
