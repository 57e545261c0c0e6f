"""trainers.evaluate on a real run: the newest checkpoint's exact metrics, printed and written to TensorBoard."""

import json

import numpy as np
import pytest

from tests.conftest import run_module
from trainers.event_reader import read_scalars

TINY = ["--num_items=1500", "--num_users=600", "--num_interactions=20000", "--batch_size=256", "--num_sampled=100",
        "--epochs=1", "--embedding_dim=16", "--projector_items=0", "--seed=11"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    model_dir = root / "model"
    result = run_module("trainers.train", f"--model_dir={model_dir}", f"--cache_dir={root / 'cache'}", "--noexport", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def _printed(stdout):
    return {line.split()[0]: float(line.split()[1]) for line in stdout.strip().splitlines()[1:]}


@pytest.mark.slow
def test_evaluate_reproduces_the_trainers_metrics_and_writes_them_at_the_checkpoint_step(trained):
    result = run_module("trainers.evaluate", f"--model_dir={trained}")
    assert result.returncode == 0, result.stderr[-3000:]
    header = result.stdout.strip().splitlines()[0]
    step = int(header.split("(step ")[1].split(")")[0])
    assert header.endswith("600 held-out users:")
    printed = _printed(result.stdout)
    trainer_metrics = json.loads((trained / "metrics.json").read_text())["model"]
    assert printed.keys() == trainer_metrics.keys()
    for name, value in trainer_metrics.items():  # the same checkpoint, the same exact top-K
        assert printed[name] == pytest.approx(value, abs=1e-4), name
    assert printed["recall_at_100"] > 0.05
    scalars = read_scalars(str(trained / "tensorboard" / "eval"))
    last_step, last_value = scalars["recall_at_100"][-1]
    assert last_step == step and float(last_value) == pytest.approx(printed["recall_at_100"], abs=1e-4)

    excluded = run_module("trainers.evaluate", f"--model_dir={trained}", "--exclude_seen", "--eval_top_k=10,100")
    assert excluded.returncode == 0, excluded.stderr[-3000:]
    assert "training items excluded" in excluded.stdout
    assert _printed(excluded.stdout)["recall_at_100"] != pytest.approx(printed["recall_at_100"], abs=1e-6)


def test_held_out_with_exclude_seen_lists_each_users_training_items(trained):
    from trainers import evaluation, model_builder

    config = json.loads((trained / "config.json").read_text())
    corpus = model_builder.corpus_from_config(config)
    held_out = evaluation.load_held_out(corpus, max_users=50, exclude_seen=True)
    from data import records

    train = records.read_all(corpus.train_files)
    for row, user in enumerate(held_out.user_ids):
        expected = np.unique(train["item_id"][train["user_id"] == user])
        got = held_out.seen_ids[row][held_out.seen_ids[row] >= 0]
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model_dir=/nonexistent/run"], "no config.json"),
        (["--model_dir=/nonexistent/run", "--eval_top_k=0"], "--eval_top_k=0: expected comma-separated positive"),
    ],
)
def test_evaluate_errors_are_one_line(args, expected):
    result = run_module("trainers.evaluate", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]
