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


def _report(model_dir, step):
    return json.loads((model_dir / "evaluation" / f"step-{step}.json").read_text())


@pytest.mark.slow
def test_evaluate_reproduces_the_trainers_metrics_and_writes_them_at_the_checkpoint_step(trained):
    result = run_module("trainers.evaluate", f"--model_dir={trained}")
    assert result.returncode == 0, result.stderr[-3000:]
    step = json.loads((trained / "run_summary.json").read_text())["final_step"]
    report = _report(trained, step)
    assert report["num_users"] == 600 and report["checkpoint"].endswith(f"ckpt-{step}")
    printed = report["metrics"]
    trainer_metrics = json.loads((trained / "metrics.json").read_text())["model"]
    assert printed.keys() == trainer_metrics.keys()
    for name, value in trainer_metrics.items():  # the same checkpoint, the same exact top-K
        assert printed[name] == pytest.approx(value, abs=1e-4), name
    assert printed["recall_at_100"] > 0.05
    assert report["split"] == "test"
    # The eval run's curves are the validation split's (the built-in corpus has one): test figures go to their own.
    scalars = read_scalars(str(trained / "tensorboard" / "test"))
    last_step, last_value = scalars["recall_at_100"][-1]
    assert last_step == step and float(last_value) == pytest.approx(printed["recall_at_100"], abs=1e-4)

    excluded = run_module("trainers.evaluate", f"--model_dir={trained}", "--exclude_seen", "--eval_top_k=10,100")
    assert excluded.returncode == 0, excluded.stderr[-3000:]
    excluded_report = _report(trained, step)
    assert excluded_report["exclude_seen"] is True
    assert excluded_report["metrics"]["recall_at_100"] != pytest.approx(printed["recall_at_100"], abs=1e-6)


def test_held_out_with_exclude_seen_lists_each_users_training_items(trained):
    from trainers import held_out as held_out_lib
    from trainers import model_builder, run_dir
    from trainers.run_data import RunData

    config, _ = run_dir.load_config(str(trained))
    corpus = model_builder.load_corpus(config)
    held_out = held_out_lib.load_held_out(RunData.of(corpus), max_users=50, exclude_seen=True)
    from data import records

    train = records.read_all(corpus.train_files + corpus.validation_files)  # the test split's users saw both
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
